"""The SKF methods through launch.train's loop (`trainer.train_and_evaluate`) on their smoke configs, 8 fake
devices: every loss term logged to TensorBoard at every logged step, checkpoints, and a resume from the step-2
checkpoint that ends bitwise equal to the uninterrupted run. The `skf_resume_check` fixture gives each method's test
file the check (one file per method, so the test runner's workers share them out)."""

import importlib
import shutil

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from lowlight_jax.train import checkpoint as ckpt_lib
from lowlight_jax.train import trainer

TERMS = {
    "skf_drbn": ("enhancer/loss", "enhancer/loss_ssim", "enhancer/loss_sch", "enhancer/loss_adversarial",
                 "discriminator/loss", "discriminator/global_fake", "discriminator/global_real",
                 "discriminator/region_fake", "discriminator/region_real"),
    "skf_snr": ("enhancer/loss", "enhancer/loss_charbonnier", "enhancer/loss_sch", "enhancer/sch_active"),
}

GROUPS = {"skf_drbn": ("enhancer", "discriminator"), "skf_snr": ("enhancer",)}


def _config(method):
  config = importlib.import_module(f"configs.{method}").get_config("smoke,steps=4")
  config.checkpoint_every = 2
  config.eval.every = 0  # Not what this test is about; the eval path has its own tests.
  if method == "skf_drbn":
    # The released per-epoch D re-creation, every 3 updates here: the resumed run restores D at step 2, trains
    # it once, then re-creates it.
    config.loss.released_reinit_discriminator_every = 3
  return config


def check_smoke_run_logs_every_term_checkpoints_and_resumes_bitwise(method, tmp_path):
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  trainer.train_and_evaluate(_config(method), str(full))
  checkpointer = ckpt_lib.Checkpointer(str(full))
  assert checkpointer.all_steps() == [2, 4]
  checkpointer.close()
  # The same run interrupted after its step-2 checkpoint, then resumed.
  shutil.copytree(full, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  trainer.train_and_evaluate(_config(method), str(resumed))

  a, b = (jax.device_get(trainer.restore_train_state(_config(method), str(d))) for d in (full, resumed))
  assert int(a.step) == int(b.step) == 4
  # Every group trained between the checkpoints (DRBN: the generator/discriminator step of one shared forward).
  mid = jax.device_get(trainer.restore_train_state(_config(method), str(full), 2))
  assert set(a.params) == set(GROUPS[method])
  for group in GROUPS[method]:
    assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(mid.params[group]), jax.tree.leaves(a.params[group])))
  assert int(a.opt_state["enhancer"][0].count) == 4
  if method == "skf_drbn":  # D was re-created before the 4th update: its Adam state has seen one update.
    assert int(a.opt_state["discriminator"][0].count) == 1
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state, a.model_state)),
                  jax.tree.leaves((b.params, b.opt_state, b.model_state))):
    np.testing.assert_array_equal(x, y)

  events = event_accumulator.EventAccumulator(str(full))
  events.Reload()
  for term in TERMS[method]:
    values = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(f"train/{term}")]
    assert len(values) == 2 and all(np.isfinite(values)), term  # Logged at steps 2 and 4.
  # Random-init sanity (the He-normal HRNet, see skf_common.init_hrnet): no exploding first updates.
  grad_norms = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("train/enhancer/grad_norm")]
  assert max(grad_norms) < 1e4 if method == "skf_drbn" else all(np.isfinite(grad_norms))


@pytest.fixture
def skf_resume_check():
  return check_smoke_run_logs_every_term_checkpoints_and_resumes_bitwise
