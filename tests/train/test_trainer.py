"""Trainer: sharded step parity, exact resume, NaN stop, and the run directory contents."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import sgz as sgz_config
from lowlight_jax.train import checkpoint as ckpt_lib
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import trainer


def _smoke(semantic=False, **overrides):
  """The smoke config; the USS (the slow part to compile) only where a test is about it."""
  config = sgz_config.get_config("smoke")
  config.eval.every = 0
  if not semantic:
    config.loss_weights.semantic = 0.0
  for k, v in overrides.items():
    node = config
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return config


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  s = config.data.crop
  return {"low": rng.uniform(0.0, 0.4, size=(config.batch_size, s, s, 3)).astype(np.float32)}


def _one_step(config, devices):
  mesh = sharding_lib.make_mesh({"data": len(devices)}, devices)
  setup = trainer.build(config, mesh=mesh)
  step = trainer.make_train_step(setup)
  batch = jax.device_put(_batch(config), sharding_lib.batch_sharding(mesh))
  state, metrics, finite = step(setup.state, setup.frozen, batch)
  state, metrics2, _ = step(state, setup.frozen, batch)
  return (float(metrics["enhancer/loss"].compute()), float(metrics2["enhancer/loss"].compute()),
          jax.device_get(state.params), bool(finite))


def test_sharded_step_matches_single_device():
  assert jax.device_count() == 8
  config = _smoke(semantic=True)
  loss8, loss8b, params8, finite = _one_step(config, jax.devices())
  loss1, loss1b, params1, _ = _one_step(config, jax.devices()[:1])
  assert finite
  assert abs(loss8 - loss1) <= 1e-5 * max(1.0, abs(loss1))
  assert abs(loss8b - loss1b) <= 1e-5 * max(1.0, abs(loss1b))
  for a, b in zip(jax.tree.leaves(params8), jax.tree.leaves(params1)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_training_changes_only_trained_params():
  config = _smoke(semantic=True)
  setup = trainer.build(config)
  frozen_before = jax.device_get(setup.frozen)
  params_before = jax.device_get(setup.state.params)
  step = trainer.make_train_step(setup)
  batch = jax.device_put(_batch(config), sharding_lib.batch_sharding(setup.mesh))
  state, _, _ = step(setup.state, setup.frozen, batch)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), params_before,
                                         jax.device_get(state.params)))
  assert any(changed)
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(jax.device_get(setup.frozen))):
    np.testing.assert_array_equal(a, b)
  assert int(state.step) == 1
  # The optimizer state covers exactly the trained group.
  assert set(state.opt_state) == {"enhancer"}


def _final_params(config, workdir):
  """The newest checkpoint's full train state (params AND optimizer state)."""
  state = trainer.restore_train_state(config, workdir)
  assert jax.tree.leaves(state.opt_state)
  return int(state.step), jax.device_get(state.params), jax.device_get(state.opt_state)


def test_resume_equals_uninterrupted(tmp_path):
  full = _smoke(total_steps=4, checkpoint_every=2)
  trainer.train_and_evaluate(full, str(tmp_path / "full"))
  first = _smoke(total_steps=2, checkpoint_every=2)
  trainer.train_and_evaluate(first, str(tmp_path / "split"))
  trainer.train_and_evaluate(full, str(tmp_path / "split"))  # Resumes from step 2.
  step_a, params_a, opt_a = _final_params(full, str(tmp_path / "full"))
  step_b, params_b, opt_b = _final_params(full, str(tmp_path / "split"))
  assert step_a == step_b == 4
  for a, b in zip(jax.tree.leaves((params_a, opt_a)), jax.tree.leaves((params_b, opt_b))):
    np.testing.assert_array_equal(a, b)
  # The run directory holds Orbax checkpoints and TensorBoard event files.
  assert ckpt_lib.Checkpointer(str(tmp_path / "full")).all_steps() == [2, 4]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "full"))


def test_nan_loss_stops_with_last_checkpoint_intact(tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_smoke(total_steps=2, checkpoint_every=2), workdir)
  bad = _smoke(total_steps=4, checkpoint_every=1)
  bad.loss_weights.tv = float("nan")
  with pytest.raises(trainer.NonFiniteLossError, match="step 3"):
    trainer.train_and_evaluate(bad, workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  assert checkpointer.latest_step() == 2
  checkpointer.close()
  step, params, _ = _final_params(_smoke(), workdir)
  assert step == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_mesh_errors_name_the_problem():
  with pytest.raises(ValueError, match="data"):
    sharding_lib.make_mesh({"model": 8})
  with pytest.raises(ValueError, match="divide"):
    sharding_lib.make_mesh({"data": 3})


def test_param_sharding_rules():
  mesh = sharding_lib.make_mesh({"data": 2, "model": 4})
  tree = {"big": {"kernel": jnp.zeros((3, 3, 64, 128))}, "small": {"bias": jnp.zeros((3,))}}
  sh = sharding_lib.param_shardings(tree, mesh, [("kernel", (None, None, None, "model")), ("bias", ("model",))])
  assert sh["big"]["kernel"].spec == jax.sharding.PartitionSpec(None, None, None, "model")
  assert sh["small"]["bias"].spec == jax.sharding.PartitionSpec(None)  # 3 does not divide by 4.


def test_bfloat16_compute_stays_finite_and_close_to_float32():
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = _smoke(semantic=True, compute_dtype=dtype)
    setup = trainer.build(config)
    step = trainer.make_train_step(setup)
    batch = jax.device_put(_batch(config), sharding_lib.batch_sharding(setup.mesh))
    state, metrics, finite = step(setup.state, setup.frozen, batch)
    state, metrics, finite = step(state, setup.frozen, batch)
    assert bool(finite)
    # Params and optimizer state stay float32 whatever the compute dtype.
    assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim} == {np.dtype(np.float32)}
    losses[dtype] = float(metrics["enhancer/loss"].compute())
  assert np.isfinite(losses["bfloat16"])
  assert abs(losses["bfloat16"] - losses["float32"]) <= 0.02 * abs(losses["float32"])


def test_rule_sharded_frozen_kernels_match_replicated_step():
  """Large kernels split over a `model` axis by regex rules; the step must equal the replicated one."""
  base = _smoke(semantic=True)
  loss_repl = _one_step(base, jax.devices())[0]
  config = _smoke(semantic=True)
  config.mesh = {"data": 2, "model": 4}
  config.sharding.rules = (("fpn/.*/kernel", (None, None, None, "model")),)
  setup = trainer.build(config)
  kernel = setup.frozen["uss"]["params"]["fpn"]["toplayer"]["kernel"]  # (1, 1, 2048, 256)
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "model")
  assert kernel.addressable_shards[0].data.shape == (1, 1, 2048, 64)
  step = trainer.make_train_step(setup)
  batch = jax.device_put(_batch(config), sharding_lib.batch_sharding(setup.mesh))
  _, metrics, finite = step(setup.state, setup.frozen, batch)
  assert bool(finite)
  assert abs(float(metrics["enhancer/loss"].compute()) - loss_repl) <= 1e-5 * max(1.0, abs(loss_repl))


def test_remat_matches_and_bf16_frozen_storage_trains():
  """`remat` (trainer-level) recomputes the frozen USS in the backward pass: same update as without it;
  `frozen_dtype=bfloat16` stores the USS in bfloat16 and the step stays finite and close."""
  config = _smoke(semantic=True)
  base_loss, _, base_params, _ = _one_step(config, jax.devices())
  remat = _smoke(semantic=True, remat="full")
  for cfg, want in ((config, False), (remat, True)):
    setup = trainer.build(cfg)
    jaxpr = str(jax.make_jaxpr(lambda p, s=setup: s.method.loss(
        "enhancer", p, {}, s.frozen, {"low": jnp.zeros((2, 32, 32, 3))}, jax.random.key(0)))(setup.state.params))
    assert ("remat" in jaxpr or "checkpoint" in jaxpr) == want
  remat_loss, _, remat_params, finite = _one_step(remat, jax.devices())
  assert finite and abs(remat_loss - base_loss) <= 1e-6 * max(1.0, abs(base_loss))
  for a, b in zip(jax.tree.leaves(remat_params), jax.tree.leaves(base_params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  stored = _smoke(semantic=True, frozen_dtype="bfloat16")
  setup = trainer.build(stored)
  assert {x.dtype for x in jax.tree.leaves(setup.frozen["uss"])} == {jnp.dtype(jnp.bfloat16)}
  bf_loss, _, _, finite = _one_step(stored, jax.devices())
  assert finite and abs(bf_loss - base_loss) <= 0.05 * abs(base_loss)


class _CompileSpy:
  """A jitted function whose lowered program records, in `seen`, the compiler options of every compile."""

  def __init__(self, fn, seen):
    self.fn, self.seen = fn, seen

  def lower(self, *a):
    lowered = self.fn.lower(*a)
    compile_fn = lowered.compile

    def compile(compiler_options=None):  # pylint: disable=redefined-builtin
      self.seen.append(compiler_options)
      return compile_fn(compiler_options=compiler_options)

    lowered.compile = compile
    return lowered


def test_compile_step_passes_the_backend_optimization_level():
  """`xla_backend_optimization_level` (config) reaches XLA: level 0 compiles the same step (same buffer plan, same
  result on this small function) and is refused by no backend; -1 leaves XLA's default."""
  f = jax.jit(lambda s, fr, b: (s * 2.0 + b.sum(), {"x": s}, jnp.isfinite(s)))
  args = (jnp.float32(1.5), {}, jnp.arange(6.0).reshape(2, 3))
  seen = []
  results = []
  for level in (-1, 0):
    step, info = trainer.compile_step(_CompileSpy(f, seen), *args, level)
    results.append(step(*args))
    assert info["temp_size_in_bytes"] >= 0
  assert seen == [None, {"xla_backend_optimization_level": 0}]
  np.testing.assert_array_equal(results[0][0], results[1][0])


def test_compile_step_reuses_the_same_program_in_a_process():
  """A second run of the same program in this process (a resume in a notebook or a test) is not compiled again; a
  different program, or the same one on other devices, is."""
  compiled = []
  Spy = lambda fn: _CompileSpy(fn, compiled)  # pylint: disable=invalid-name
  fn = lambda s, fr, b: (s * 3.0 + b.sum(), {"x": s}, jnp.isfinite(s))
  args = (jnp.float32(0.25), {}, jnp.arange(6.0).reshape(2, 3))
  first, _ = trainer.compile_step(Spy(jax.jit(fn)), *args)
  again, _ = trainer.compile_step(Spy(jax.jit(fn)), *args)  # a new jitted function, the same program
  assert len(compiled) == 1
  np.testing.assert_array_equal(first(*args)[0], again(*args)[0])
  trainer.compile_step(Spy(jax.jit(lambda s, fr, b: (s * 4.0 + b.sum(), {"x": s}, jnp.isfinite(s)))), *args)
  assert len(compiled) == 2
  other = jax.tree.map(lambda a: jax.device_put(a, jax.devices()[1]), args)
  trainer.compile_step(Spy(jax.jit(fn)), *other)
  assert len(compiled) == 3


def test_compile_step_reuses_a_configurations_step_without_tracing_it(tmp_path):
  """With `config_id`, a run of the same configuration in this process (an in-process resume) gets its step back
  before the method is traced; another value of a field, a changed file the configuration names, or arguments of
  another shape trace and compile again."""
  traced = []
  prompt = tmp_path / "prompt.txt"
  prompt.write_text("low light")
  config = ml_collections.ConfigDict({"seed": 0, "prompts": {"low_file": str(prompt)}, "data": {"root": str(tmp_path)}})

  def build(scale):
    def fn(s, fr, b):
      traced.append(scale)
      return s * scale + b.sum(), {"x": s}, jnp.isfinite(s)
    return jax.jit(fn)

  args = (jnp.float32(0.5), {}, jnp.arange(6.0).reshape(2, 3))
  first, _ = trainer.compile_step(build(3.0), *args, config_id=trainer.config_identity(config))
  # The same configuration: the step comes back without a trace (this function would compute another value).
  again, _ = trainer.compile_step(build(5.0), *args, config_id=trainer.config_identity(config))
  assert traced == [3.0]
  np.testing.assert_array_equal(again(*args)[0], first(*args)[0])
  (tmp_path / "unrelated.png").write_bytes(b"x")  # a new file in a named directory: the same step
  assert trainer.config_identity(config) == trainer.config_identity(config.copy_and_resolve_references())
  trainer.compile_step(build(5.0), *args, config_id=trainer.config_identity(config))
  assert traced == [3.0]

  prompt.write_text("low light, dim lighting")  # the named file changed
  trainer.compile_step(build(6.0), *args, config_id=trainer.config_identity(config))
  config.seed = 1  # another field value
  trainer.compile_step(build(7.0), *args, config_id=trainer.config_identity(config))
  bigger = (args[0], {}, jnp.arange(8.0).reshape(2, 4))  # other argument shapes
  trainer.compile_step(build(8.0), *bigger, config_id=trainer.config_identity(config))
  assert traced == [3.0, 6.0, 7.0, 8.0]
