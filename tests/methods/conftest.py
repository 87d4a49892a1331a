"""The SKF methods through launch.train's loop (`trainer.train_and_evaluate`) on their smoke configs, 8 fake
devices: every loss term logged to TensorBoard at every logged step, checkpoints, and a resume from the step-2
checkpoint that ends bitwise equal to the uninterrupted run. The `skf_resume_check` fixture gives each method's test
file the check (one file per method, so the test runner's workers share them out); `run_checks` gives every method's
smoke-run test the resume and TensorBoard checks."""

import importlib
import shutil
import types

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


def resume_from_checkpoint(make_config, full, tmp_path, at=2, last=4):
  """The finished run `full` (checkpoints at `at` and `last`, default 2 and 4), interrupted after its step-`at`
  checkpoint (a copy without checkpoints/`last`, in tmp_path/resumed) and resumed with `make_config()`: asserts the
  resumed run ends bitwise equal (params, optimizer and model state) and returns (the uninterrupted run's final
  state, its step-`at` state)."""
  checkpointer = ckpt_lib.Checkpointer(str(full))
  assert checkpointer.all_steps() == [at, last]
  checkpointer.close()
  resumed = tmp_path / "resumed"
  shutil.copytree(full, resumed)
  shutil.rmtree(resumed / "checkpoints" / str(last))
  trainer.train_and_evaluate(make_config(), str(resumed))
  a, b = (jax.device_get(trainer.restore_train_state(make_config(), str(d))) for d in (full, resumed))
  mid = jax.device_get(trainer.restore_train_state(make_config(), str(full), at))
  assert int(a.step) == int(b.step) == last
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state, a.model_state)),
                  jax.tree.leaves((b.params, b.opt_state, b.model_state))):
    np.testing.assert_array_equal(x, y)
  return a, mid


def logged_terms(workdir, terms, count=2):
  """{term: values} of `train/<term>` in the run's TensorBoard events, each logged `count` times and finite."""
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  out = {}
  for term in terms:
    values = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(f"train/{term}")]
    assert len(values) == count and all(np.isfinite(values)), (term, values)
    out[term] = values
  return out


@pytest.fixture
def run_checks():
  """`resume_from_checkpoint` and `logged_terms`, for the methods' smoke-run tests."""
  return types.SimpleNamespace(resume_from_checkpoint=resume_from_checkpoint, logged_terms=logged_terms)


def check_smoke_run_logs_every_term_checkpoints_and_resumes_bitwise(method, tmp_path):
  full = tmp_path / "full"
  trainer.train_and_evaluate(_config(method), str(full))
  a, mid = resume_from_checkpoint(lambda: _config(method), full, tmp_path)
  # Every group trained between the checkpoints (DRBN: the generator/discriminator step of one shared forward).
  assert set(a.params) == set(GROUPS[method])
  for group in GROUPS[method]:
    assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(mid.params[group]), jax.tree.leaves(a.params[group])))
  assert int(a.opt_state["enhancer"][0].count) == 4
  if method == "skf_drbn":  # D was re-created before the 4th update: its Adam state has seen one update.
    assert int(a.opt_state["discriminator"][0].count) == 1
  logged_terms(full, TERMS[method])  # Logged at steps 2 and 4.
  # Random-init sanity (the He-normal HRNet, see skf_common.init_hrnet): no exploding first updates.
  grad_norms = logged_terms(full, ["enhancer/grad_norm"])["enhancer/grad_norm"]
  if method == "skf_drbn":
    assert max(grad_norms) < 1e4


@pytest.fixture
def skf_resume_check():
  return check_smoke_run_logs_every_term_checkpoints_and_resumes_bitwise
