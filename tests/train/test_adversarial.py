"""The trainer's adversarial-step contract, on a toy generator/discriminator method and 8 fake devices:
both groups update, the discriminator's params and optimizer state checkpoint and resume bitwise, and the
generator forward runs once per step (the naive per-group loop runs it twice)."""

import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from data_pipelines import pipeline
from lowlight_jax.methods import base
from lowlight_jax.train import checkpoint as ckpt_lib
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import trainer


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent))
  from toy_gan import method  # pylint: disable=g-import-not-at-top
  return method


def _config(total_steps=4, checkpoint_every=2):
  c = common.trainer_fields()
  c.method = "toy_gan.method"
  c.total_steps = total_steps
  c.checkpoint_every = checkpoint_every
  c.batch_size = 8
  c.log_every = 2
  c.eval.every = 0
  c.progress_bar = False
  c.data = pipeline.default_data_config()
  c.data.source = "embedded"
  c.data.crop = 16
  c.data.resize = 0
  adam = dict(optimizer="adam", lr=1e-3, schedule="constant", weight_decay=0.0, decoupled=False, clip_norm=0.0)
  c.optim = ml_collections.ConfigDict(dict(generator=adam, discriminator=dict(adam, lr=2e-3)))
  return c


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"low": rng.uniform(0, 0.3, (8, 16, 16, 3)).astype(np.float32),
          "high": rng.uniform(0.3, 1, (8, 16, 16, 3)).astype(np.float32)}


def test_one_generator_forward_per_step_and_both_groups_update(toy):
  assert jax.device_count() == 8
  setup = trainer.build(_config())
  assert dict(setup.mesh.shape) == {"data": 8}
  before = jax.device_get(setup.state.params)
  step = trainer.make_train_step(setup)
  batch = jax.device_put(_batch(), sharding_lib.batch_sharding(setup.mesh))
  toy.GENERATOR_TRACES[0] = 0
  state, metrics, finite = step(setup.state, setup.frozen, batch)
  assert bool(finite)
  assert toy.GENERATOR_TRACES[0] == 1  # Traced once: the G and D updates share one generator forward.
  after = jax.device_get(state.params)
  for group in ("generator", "discriminator"):
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before[group], after[group])
    assert all(jax.tree.leaves(changed)), group
    assert int(jax.device_get(state.opt_state[group][0].count)) == 1
  assert {"generator/loss", "discriminator/loss", "generator/grad_norm", "discriminator/real"} <= set(metrics)

  # The naive group loop (each group's loss runs the generator) traces it twice: the counter can tell.
  class Naive(toy.Method):
    train_step = base.BaseMethod.train_step

  naive_setup = trainer.build(_config())
  naive_setup.method = Naive(naive_setup.config)
  toy.GENERATOR_TRACES[0] = 0
  trainer.make_train_step(naive_setup)(naive_setup.state, naive_setup.frozen, batch)
  assert toy.GENERATOR_TRACES[0] == 2


def test_discriminator_state_checkpoints_and_resumes_bitwise(toy, tmp_path):
  del toy
  full, split = str(tmp_path / "full"), str(tmp_path / "split")
  trainer.train_and_evaluate(_config(total_steps=4), full)
  trainer.train_and_evaluate(_config(total_steps=2), split)
  trainer.train_and_evaluate(_config(total_steps=4), split)  # Resumes at step 2.

  def final(workdir):
    checkpointer = ckpt_lib.Checkpointer(workdir)
    assert checkpointer.all_steps() == [2, 4]
    checkpointer.close()
    return jax.device_get(trainer.restore_train_state(_config(), workdir))

  a, b = final(full), final(split)
  assert int(a.step) == int(b.step) == 4
  assert int(a.opt_state["discriminator"][0].count) == 4
  d_leaves = jax.tree.leaves((a.params["discriminator"], a.opt_state["discriminator"]))
  assert d_leaves and any(np.any(x != 0) for x in d_leaves)
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state))):
    np.testing.assert_array_equal(x, y)


def test_step_memory_plan_only_gives_the_same_buffer_plan(toy):
  """`memory.step_memory` (the scuf_memory benchmark's rows) on abstract shapes, and its `plan_only` compile (LLVM
  optimisation off, for CPU benchmark rows) reads the same buffer assignment as the full compile."""
  from lowlight_jax.train import memory  # pylint: disable=g-import-not-at-top
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in _batch().items()}
  full = memory.step_memory(_config(), jax.devices(), shapes)
  plan = memory.step_memory(_config(), jax.devices(), shapes, plan_only=True)
  for key in ("per_device_gb", "arguments_gb", "outputs_gb", "temp_gb", "trained_params", "frozen_params"):
    assert plan[key] == full[key], key
  assert full["arguments_gb"] > 0 and full["trained_params"] > 0
  # 8 devices: the batch is split, so the per-device batch argument shrinks with it.
  one = memory.step_memory(_config(), jax.devices()[:1], shapes, plan_only=True)
  assert one["arguments_gb"] > full["arguments_gb"]
