"""`init_from=RUN_DIR`: another run's params of one group, restored non-strictly onto this model's shardings."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax import errors
from lowlight_jax.methods import base
from lowlight_jax.train import checkpoint as ckpt_lib
from lowlight_jax.train import towers


def _save_run(workdir, enhancer):
  state = {"step": jnp.asarray(7, jnp.int32), "params": {"enhancer": enhancer, "other": {"w": jnp.ones((2,))}},
           "rng": jax.random.key_data(jax.random.PRNGKey(0))}
  checkpointer = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  checkpointer.save(7, state, force=True)
  checkpointer.close()


def _abstract(tree):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def test_shared_keys_restored_and_the_rest_initialised(tmp_path, caplog):
  saved = {"conv": {"kernel": jnp.arange(6.0).reshape(2, 3)}, "head": {"bias": jnp.full((3,), 2.0)}}
  _save_run(tmp_path / "base", saved)
  before = sorted(os.listdir(tmp_path / "base" / "checkpoints"))
  target = {"conv": {"kernel": jnp.zeros((2, 3))}, "head": {"bias": jnp.zeros((3,))},
            "se": {"scale": jnp.zeros((4,))}}  # `se`: only this model has it (e.g. SKF's SE blocks)
  params, missing = ckpt_lib.restore_params_group(str(tmp_path / "base"), "enhancer", _abstract(target))
  np.testing.assert_array_equal(params["conv"]["kernel"], np.arange(6.0).reshape(2, 3))
  np.testing.assert_array_equal(params["head"]["bias"], np.full((3,), 2.0))
  assert "se" not in params and missing == ["se/scale"]
  assert sorted(os.listdir(tmp_path / "base" / "checkpoints")) == before  # nothing written into the source run

  # Through materialize: restored leaves land, the missing one is initialised, nothing is cached.
  source = base.run_weight_source(str(tmp_path / "base"), "enhancer")
  init = lambda rng: {"params": {"enhancer": jax.tree.map(lambda x: x - 1.0, target)}}
  tree, report = towers.materialize({"params": {"enhancer": _abstract(target)}}, init, jax.random.PRNGKey(0),
                                    [source], cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(tree["params"]["enhancer"]["conv"]["kernel"], np.arange(6.0).reshape(2, 3))
  np.testing.assert_array_equal(tree["params"]["enhancer"]["se"]["scale"], -np.ones(4))
  assert report["loaded"] == 2 and report["initialised"] == 1
  assert not os.path.exists(tmp_path / "cache") or not os.listdir(tmp_path / "cache")
  assert any("keep their initialisation" in r.getMessage() for r in caplog.records)


def test_another_network_or_shape_or_no_run_is_a_clear_error(tmp_path):
  _save_run(tmp_path / "base", {"conv": {"kernel": jnp.zeros((2, 3))}, "extra": {"w": jnp.zeros((1,))}})
  with pytest.raises(errors.WeightsError, match="extra/w"):
    ckpt_lib.restore_params_group(str(tmp_path / "base"), "enhancer",
                                  _abstract({"conv": {"kernel": jnp.zeros((2, 3))}}))
  with pytest.raises(errors.WeightsError, match=r"conv/kernel: run \(2, 3\) vs model \(3, 3\)"):
    ckpt_lib.restore_params_group(str(tmp_path / "base"), "enhancer",
                                  _abstract({"conv": {"kernel": jnp.zeros((3, 3))},
                                             "extra": {"w": jnp.zeros((1,))}}))
  with pytest.raises(errors.CheckpointError, match="no params of group 'discriminator'"):
    ckpt_lib.restore_params_group(str(tmp_path / "base"), "discriminator", _abstract({"w": jnp.zeros(1)}))
  with pytest.raises(errors.CheckpointError, match="not a run directory"):
    ckpt_lib.restore_params_group(str(tmp_path), "enhancer", _abstract({"w": jnp.zeros(1)}))
  assert not os.path.exists(tmp_path / "checkpoints")  # the refused directory was not turned into a run
