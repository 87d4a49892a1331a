"""SKF checkpoint converters: the authors' file layouts, ConvTranspose layout, one-line errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lowlight_jax import errors
from lowlight_jax.convert import skf
from lowlight_jax.models import drbn
from lowlight_jax.models import skf_se
from lowlight_jax.models import snr

_FIX = "fixtures/skf_"


@pytest.fixture(scope="module")
def drbn_fixture(conformance_dir):
  weights = dict(np.load(conformance_dir / f"{_FIX}drbn_net_weights.npz"))
  io = np.load(conformance_dir / f"{_FIX}drbn_net_io.npz")
  x = jnp.asarray(io["x"].transpose(0, 2, 3, 1))
  shapes = jax.eval_shape(lambda: drbn.DRBN().init(jax.random.key(0), x,
                                                   segment=skf_se.zero_semantics))
  return weights, shapes


@pytest.fixture(scope="module")
def snr_fixture(conformance_dir):
  weights = dict(np.load(conformance_dir / f"{_FIX}snr_net_weights.npz"))
  keys = json.loads((conformance_dir / f"{_FIX}snr_net_keys.json").read_text())
  io = np.load(conformance_dir / f"{_FIX}snr_net_io.npz")
  x = jnp.asarray(io["LQ"].transpose(0, 2, 3, 1))
  seg = [jnp.asarray(io[f"pass1_seg_fea{i}"].transpose(0, 2, 3, 1)) for i in range(3)]
  model = snr.SNRNet(n_layers=keys["transformer_n_layers"])
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, x[..., :1], seg)
  return weights, shapes, model, (x, seg)


def _same(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(la, lb):
    np.testing.assert_array_equal(u, v)


def test_drbn_release_layout_loads_from_a_torch_file(tmp_path, drbn_fixture):
  weights, shapes = drbn_fixture
  direct = skf.convert_drbn(weights, shapes)
  # model_lol.pt is a bare DRBN.state_dict(); a DataParallel save adds `module.`.
  bare, parallel = tmp_path / "model_lol.pt", tmp_path / "parallel.pt"
  torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, bare)
  torch.save({f"module.{k}": torch.from_numpy(v) for k, v in weights.items()}, parallel)
  _same(skf.load_drbn(str(bare), shapes), direct)
  _same(skf.load_drbn(str(parallel), shapes), direct)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(direct))
  assert not skf.has_se_blocks({k: v for k, v in weights.items() if ".fuseblk_" not in k})
  assert skf.has_se_blocks(weights)


def test_snr_release_layout_loads_from_a_torch_file(tmp_path, snr_fixture):
  weights, shapes, _, _ = snr_fixture
  direct = skf.convert_snr(weights, shapes)
  # SNR_SKF_LOL.pth is a bare netG.state_dict(); load_network strips `module.` key by key, and
  # wrapped training checkpoints are unwrapped too.
  mixed = {(f"module.{k}" if i % 2 else k): torch.from_numpy(v)
           for i, (k, v) in enumerate(weights.items())}
  path = tmp_path / "SNR_SKF_LOL.pth"
  torch.save({"state_dict": mixed, "iter": 5000}, path)
  _same(skf.load_snr(str(path), shapes), direct)
  assert skf.snr_transformer_depth(mixed) == skf.snr_transformer_depth(weights) >= 1
  assert skf.has_se_blocks(mixed)


def test_conv_transpose_weights_need_no_special_case(drbn_fixture):
  weights, shapes = drbn_fixture
  params = skf.convert_drbn(weights, shapes)["params"]
  w = weights["recur2.Up2.weight"]  # torch (in, out, kh, kw)
  kernel = params["recur2"]["Up2"]["kernel"]
  np.testing.assert_array_equal(kernel, w.transpose(2, 3, 1, 0))
  # The Flax layer with that kernel computes torch's ConvTranspose2d(k4, s2, p1).
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, w.shape[0], 5, 7)).astype(np.float32)
  b = weights["recur2.Up2.bias"]
  ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w),
                                             torch.from_numpy(b), stride=2, padding=1).numpy()
  layer = drbn._conv_transpose(  # pylint: disable=protected-access
      w.shape[1], "Up2", jnp.float32, jax.lax.Precision.HIGHEST)
  got = layer.apply({"params": {"kernel": kernel, "bias": b}},
                    jnp.asarray(x.transpose(0, 2, 3, 1)))
  got = np.asarray(got).transpose(0, 3, 1, 2)
  assert got.shape == ref.shape == (1, w.shape[1], 10, 14)
  np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())


def test_wrong_network_is_one_line_naming_first_keys(drbn_fixture, snr_fixture):
  drbn_weights, drbn_shapes = drbn_fixture
  snr_weights, snr_shapes, _, _ = snr_fixture
  with pytest.raises(errors.WeightsError) as e:
    skf.convert_drbn(snr_weights, drbn_shapes)
  message = str(e.value)
  assert "\n" not in message
  first_snr_key = next(iter(snr_weights))
  assert "looks like SNR-SKF" in message and first_snr_key in message
  assert "missing keys recur1." in message and f"({len(drbn_weights)} in all)" in message
  with pytest.raises(errors.WeightsError) as e:
    skf.convert_snr(drbn_weights, snr_shapes)
  message = str(e.value)
  assert "\n" not in message and "looks like DRBN-SKF" in message
  assert f"unexpected keys {next(iter(drbn_weights))}" in message
  # Without a target the top-level modules still tell the networks apart.
  with pytest.raises(errors.WeightsError, match="unexpected keys recur1"):
    skf.convert_snr(drbn_weights)
  with pytest.raises(errors.WeightsError, match=f"unexpected keys {first_snr_key}"):
    skf.convert_drbn(snr_weights)
  with pytest.raises(errors.WeightsError, match="no tensors|no state dict"):
    skf.convert_drbn({"epoch": 3})


def test_depth_and_shape_mismatches_are_named(drbn_fixture, snr_fixture):
  drbn_weights, drbn_shapes = drbn_fixture
  snr_weights, _, model, (x, seg) = snr_fixture
  depth = skf.snr_transformer_depth(snr_weights)
  deeper = jax.eval_shape(model.clone(n_layers=depth + 1).init, jax.random.key(0), x,
                          x[..., :1], seg)
  with pytest.raises(errors.WeightsError,
                     match=rf"missing keys transformer\.layer_stack\.{depth}\."):
    skf.convert_snr(snr_weights, deeper)
  broken = dict(drbn_weights)
  broken["recur3.Down2.weight"] = broken["recur3.Down2.weight"][:16]
  with pytest.raises(errors.WeightsError, match=r"shape mismatch .*recur3\.Down2\.weight"):
    skf.convert_drbn(broken, drbn_shapes)
