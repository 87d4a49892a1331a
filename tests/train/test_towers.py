"""Frozen towers and user weights at scale: loaded straight onto FSDP shardings (only what no file provides is
random-initialised), bf16 storage, the checksum-keyed conversion cache, the automatic FSDP rule and its log of
tensors left replicated, a resume refusing a changed config, and inference restoring only what it needs."""

import logging
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from configs import sgz as sgz_config
from data_pipelines import pipeline
from lowlight_jax import errors
from lowlight_jax.methods import base
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import towers
from lowlight_jax.train import trainer

CONVERSIONS = [0]


class Tower(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.Dense(512, name="proj")(x)
    return nn.Dense(8, name="head")(h)


class TowerMethod(base.BaseMethod):
  """A trained Dense on top of a frozen two-layer tower whose `proj` comes from a user's .npz file."""
  groups = ("enhancer",)

  def __init__(self, config):
    super().__init__(config)
    self.tower, self.net = Tower(), nn.Dense(3)

  def example_batch(self):
    return {"low": jnp.zeros((1, 4, 4, 3))}

  def init(self, rng, batch):
    a, b = jax.random.split(rng)
    x = batch["low"].reshape(1, -1)[:, :48]
    return base.Variables(params={"enhancer": self.net.init(a, jnp.zeros((1, 8)))["params"]}, model_state={},
                          frozen={"tower": self.tower.init(b, x)})

  def loss(self, group, params, model_state, frozen, batch, rng):
    feats = self.tower.apply(frozen["tower"], batch["low"].reshape(batch["low"].shape[0], -1)[:, :48])
    return jnp.mean(self.net.apply({"params": params["enhancer"]}, feats) ** 2), ({}, model_state)

  def enhance(self, params, model_state, frozen, images):
    return {"enhanced": images}

  def weight_sources(self):
    path = self.config.tower_weights

    def convert(abstract):
      CONVERSIONS[0] += 1
      data = np.load(path)
      return {"params": {"proj": {"kernel": data["proj.weight"].T, "bias": data["proj.bias"]}}}

    return [base.WeightSource(target=("frozen", "tower"), files=(path,), convert=convert, converter="toy-v1")]


def _config(tmp_path, **mesh):
  c = common.trainer_fields()
  c.method = __name__ + "_method"
  c.mesh = ml_collections.ConfigDict(mesh or {"data": 2, "fsdp": 4})
  c.sharding.fsdp_min_size = 4096
  c.weights_cache = str(tmp_path / "cache")
  c.tower_weights = str(tmp_path / "tower.npz")
  c.optim = ml_collections.ConfigDict(dict(enhancer=dict(optimizer="adam", lr=1e-3)))
  c.data = pipeline.default_data_config()
  return c


@pytest.fixture
def tower_method(tmp_path, monkeypatch):
  import sys
  import types
  module = types.ModuleType(__name__ + "_method")
  module.Method = TowerMethod
  monkeypatch.setitem(sys.modules, module.__name__, module)
  rng = np.random.default_rng(0)
  weights = {"proj.weight": rng.normal(size=(512, 48)).astype(np.float32),
             "proj.bias": rng.normal(size=(512,)).astype(np.float32)}
  np.savez(tmp_path / "tower.npz", **weights)
  CONVERSIONS[0] = 0
  return weights


def test_tower_weights_land_on_fsdp_shardings_and_only_the_rest_is_initialised(tmp_path, tower_method):
  setup = trainer.build(_config(tmp_path))
  proj = setup.frozen["tower"]["params"]["proj"]["kernel"]
  # (48, 512): the largest dimension is split over fsdp=4; no device holds the whole tensor.
  assert proj.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert {s.data.shape for s in proj.addressable_shards} == {(48, 128)}
  np.testing.assert_array_equal(np.asarray(proj), tower_method["proj.weight"].T)
  np.testing.assert_array_equal(np.asarray(setup.frozen["tower"]["params"]["proj"]["bias"]),
                                tower_method["proj.bias"])
  # kernel + bias loaded; head kernel/bias and the trained Dense initialised.
  assert setup.load_report["loaded"] == 2
  assert setup.load_report["initialised"] == 4
  assert setup.load_report["from_cache"] == [False]
  head = np.asarray(setup.frozen["tower"]["params"]["head"]["kernel"])
  assert head.shape == (512, 8) and np.std(head) > 0
  # The step runs on the mesh with the sharded tower.
  step = trainer.make_train_step(setup)
  batch = jax.device_put({"low": np.ones((8, 4, 4, 3), np.float32)}, sharding_lib.batch_sharding(setup.mesh))
  _, metrics, finite = step(setup.state, setup.frozen, batch)
  assert bool(finite) and np.isfinite(float(metrics["enhancer/loss"].compute()))


def test_conversion_cache_is_reused_and_bf16_storage(tmp_path, tower_method):
  trainer.build(_config(tmp_path))
  assert CONVERSIONS[0] == 1
  cached = list((tmp_path / "cache").glob("*.safetensors"))
  assert len(cached) == 1
  config = _config(tmp_path)
  config.frozen_dtype = "bfloat16"
  setup = trainer.build(config)  # A resume: same file, read from the cache, not converted again.
  assert CONVERSIONS[0] == 1 and setup.load_report["from_cache"] == [True]
  proj = setup.frozen["tower"]["params"]["proj"]["kernel"]
  assert proj.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(proj), tower_method["proj.weight"].T.astype(jnp.bfloat16))
  assert setup.state.params["enhancer"]["kernel"].dtype == jnp.float32  # Trained params stay float32.
  # A changed source file is a new cache entry (converted again).
  os.utime(tmp_path / "tower.npz", ns=(1, 1))
  trainer.build(_config(tmp_path))
  assert CONVERSIONS[0] == 2


def test_weights_that_do_not_fit_name_the_key(tmp_path, tower_method):
  np.savez(tmp_path / "tower.npz", **{"proj.weight": np.zeros((500, 48), np.float32),
                                      "proj.bias": np.zeros((512,), np.float32)})
  with pytest.raises(errors.WeightsError, match=r"params/proj/kernel: file \(48, 500\) vs model \(48, 512\)"):
    trainer.build(_config(tmp_path))


def test_auto_fsdp_rule_logs_every_large_tensor_it_cannot_shard(caplog):
  mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 4})
  tree = {"big": jax.ShapeDtypeStruct((1024, 4096), jnp.float32),
          "odd": jax.ShapeDtypeStruct((4099, 1031), jnp.float32),  # Both dimensions prime: cannot split by 4.
          "small": jax.ShapeDtypeStruct((7,), jnp.float32),
          "ruled": jax.ShapeDtypeStruct((6, 2048), jnp.float32)}
  with caplog.at_level(logging.WARNING, logger="lowlight_jax.train.sharding"):
    sh = sharding_lib.param_shardings(tree, mesh, [("ruled", ("fsdp", None))], fsdp_min_size=2**12)
  assert sh["big"].spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert sh["small"].spec == jax.sharding.PartitionSpec()
  assert sh["odd"].spec == jax.sharding.PartitionSpec()
  assert sh["ruled"].spec == jax.sharding.PartitionSpec(None, None)  # The rule's axis does not divide 6.
  logged = caplog.text
  assert "odd (4099, 1031) stays replicated" in logged and "ruled (6, 2048) stays replicated" in logged
  assert "big" not in logged and "small" not in logged
  # Without an fsdp axis nothing is split (pure data parallelism) and nothing is reported.
  plan = sharding_lib.plan_shardings(tree, sharding_lib.make_mesh({"data": 8}), fsdp_min_size=2**12)
  assert plan.replicated_large == [] and plan.shardings["big"].spec == jax.sharding.PartitionSpec()


def _smoke():
  config = sgz_config.get_config("smoke")
  config.eval.every = 0
  config.progress_bar = False
  return config


def test_resume_with_changed_shapes_is_refused_and_the_run_untouched(tmp_path):
  workdir = tmp_path / "run"
  config = _smoke()
  config.loss_weights.semantic = 0.0
  config.total_steps = 2
  trainer.train_and_evaluate(config, str(workdir))
  snapshot = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  changed = _smoke()
  changed.loss_weights.semantic = 0.0
  changed.model.channels = 16
  changed.total_steps = 4
  with pytest.raises(errors.CheckpointError,
                     match=r"params/enhancer/.*saved \(.*32\) float32, config \(.*16\) float32"):
    trainer.train_and_evaluate(changed, str(workdir))
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == snapshot  # config.json, checkpoints, logs: byte for byte.
  # Same shapes, other settings (more steps): resumes.
  config.total_steps = 3
  trainer.train_and_evaluate(config, str(workdir))
  assert '"total_steps": 3' in (workdir / "config.json").read_text()


def test_inference_restores_params_only_and_no_unused_tower(tmp_path):
  workdir = str(tmp_path / "run")
  config = _smoke()  # With the semantic loss: the frozen USS exists in training.
  config.total_steps = 2
  trainer.train_and_evaluate(config, workdir)
  assert "uss" in trainer.build(config).frozen
  setup = trainer.restore_for_inference(config, workdir)
  assert setup.frozen == {} and setup.state.opt_state == {} and setup.optimizers == {}
  assert int(setup.state.step) == 2
  trained = trainer.build(config, load_pretrained=False)
  assert jax.tree.structure(setup.state.params) == jax.tree.structure(trained.state.params)
  out = trainer.make_enhance_fn(setup)(setup.state, setup.frozen)(jnp.full((1, 20, 24, 3), 0.2))
  assert out["enhanced"].shape == (1, 20, 24, 3)
  # The run's 8-device mesh on a 1-device machine: restored onto one device, the same params and output.
  one = trainer.restore_for_inference(config, workdir, devices=jax.devices()[:1])
  assert dict(one.mesh.shape) == {"data": 1}
  for a, b in zip(jax.tree.leaves(setup.state.params), jax.tree.leaves(one.state.params)):
    np.testing.assert_array_equal(a, b)
  out_one = trainer.make_enhance_fn(one)(one.state, one.frozen)(jnp.full((1, 20, 24, 3), 0.2))
  np.testing.assert_allclose(out_one["enhanced"], out["enhanced"], atol=1e-6)


def test_inference_mesh_fits_the_devices_there_are():
  from lowlight_jax.train import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  shape = lambda cfg, n: dict(sharding_lib.inference_mesh(cfg, jax.devices()[:n]).shape)
  assert shape({"data": 2, "fsdp": 4}, 8) == {"data": 2, "fsdp": 4}  # fits: the run's own mesh
  assert shape({"data": 2, "fsdp": 4}, 1) == {"data": 1, "fsdp": 1}
  assert shape({"data": 2, "fsdp": 4}, 2) == {"data": 1, "fsdp": 2}
  assert shape({"data": 16}, 8) == {"data": 8}


def test_constrain_batch_splits_under_the_traced_mesh_only():
  """`sharding.constrain_batch`: the batch axes' split of the given dimension inside a step traced under the mesh
  (as `trainer.make_train_step` traces); unchanged without a mesh, or when the dimension does not divide."""
  mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 4})
  x = jax.device_put(jnp.arange(2 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 3), sharding_lib.replicated(mesh))

  def pinned(t, axis):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return sharding_lib.constrain_batch(t * 2.0, axis)

  out = jax.jit(pinned, static_argnums=1)(x, 1)
  assert out.sharding.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"))
  np.testing.assert_array_equal(out, x * 2.0)
  # Two rows cannot be split eight ways: left to the partitioner.
  assert jax.jit(pinned, static_argnums=1)(x, 0).sharding.is_fully_replicated
  # Outside a mesh (a method called by hand, a notebook): no constraint.
  assert jax.jit(lambda t: sharding_lib.constrain_batch(t * 2.0, 1))(x).sharding.is_fully_replicated


def _entry_and_loop_all_gathers(hlo: str) -> tuple[int, int]:
  """(all-gathers in the ENTRY computation, all-gathers elsewhere: loop bodies) of a compiled module's text."""
  start = hlo.index("\nENTRY ")
  entry = hlo[start:hlo.index("\n}\n", start)]
  return entry.count(" all-gather("), hlo.count(" all-gather(") - entry.count(" all-gather(")


def test_gathered_per_iteration_keeps_a_loop_bodys_fsdp_gathers_in_the_loop():
  """`sharding.gathered_per_iteration`: a scan body's FSDP-sharded weight, gathered whole where the body uses it,
  is gathered in the body (once per iteration) instead of being hoisted out of the loop and held for the whole
  step; same values; unchanged without an fsdp axis."""
  mesh = sharding_lib.make_mesh({"data": 1, "fsdp": 8})
  cfg = ml_collections.ConfigDict(dict(rules=[], fsdp_axis="fsdp", fsdp_min_size=1))  # FSDP down to this tensor
  w = jax.device_put(jnp.linspace(-1.0, 1.0, 64 * 16).reshape(64, 16),
                     jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp")))

  def step(w, per_iteration):
    def body(c, i):
      ww = sharding_lib.gathered_per_iteration(w, i, cfg) if per_iteration else w
      whole = jax.lax.with_sharding_constraint(ww, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
      return c + jnp.cumsum(whole, axis=0)[-1] * (i + 1.0), None  # a use of the whole weight
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return jax.lax.scan(body, jnp.zeros(16), jnp.arange(3.0))[0]

  hoisted = jax.jit(lambda w: step(w, False))
  in_loop = jax.jit(lambda w: step(w, True))
  assert _entry_and_loop_all_gathers(hoisted.lower(w).compile().as_text()) == (1, 0)
  assert _entry_and_loop_all_gathers(in_loop.lower(w).compile().as_text()) == (0, 1)
  np.testing.assert_array_equal(in_loop(w), hoisted(w))
  tree = {"w": w}
  assert sharding_lib.gathered_per_iteration(tree, 0, cfg) is tree  # no mesh traced
  one = sharding_lib.make_mesh({"data": 8})
  with jax.sharding.use_abstract_mesh(one.abstract_mesh):
    assert sharding_lib.gathered_per_iteration(tree, 0, cfg) is tree  # no fsdp axis


def test_run_configs_written_before_the_trainer_fields_existed_still_load(tmp_path):
  """A run directory from before `frozen_dtype`, `remat`, `sharding.fsdp_*`... gets their defaults."""
  import json
  from lowlight_jax.train import run_config
  old = sgz_config.get_config("smoke").to_dict()
  for key in ("frozen_dtype", "remat", "weights_cache", "progress_bar"):
    del old[key]
  old["sharding"] = {"rules": []}
  old["batch_size"] = 4
  (tmp_path / "config.json").write_text(json.dumps(old))
  config = run_config.load_run_config(str(tmp_path))
  assert config.remat == "none" and config.frozen_dtype == "float32" and config.progress_bar
  assert config.sharding.fsdp_axis == "fsdp" and config.sharding.rules == ()
  assert config.batch_size == 4  # The run's own values are kept.
  assert base.load_method(config).policy.remat == "none"
