"""DRBN-SKF: key layout, whole-network parity with the authors' code, baseline switch, bf16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.convert import skf
from lowlight_jax.models import drbn
from lowlight_jax.models import skf_se

HIGHEST = jax.lax.Precision.HIGHEST


def _nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def fixture(conformance_dir):
  base = conformance_dir / "fixtures"
  keys = json.loads((base / "skf_drbn_net_keys.json").read_text())
  weights = dict(np.load(base / "skf_drbn_net_weights.npz"))
  io = dict(np.load(base / "skf_drbn_net_io.npz"))
  return keys, weights, io


def _semantics(io):
  """The stored HRNet-W48 outputs on res_g3_s1: (seg_orin, seg_fea[0..3]), NHWC."""
  n = sum(1 for k in io if k.startswith("seg_fea"))
  return _nhwc(io["seg_orin"]), tuple(_nhwc(io[f"seg_fea{i}"]) for i in range(n))


def _shapes(model, x):
  segment = skf_se.zero_semantics if model.skf else None
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, segment=segment))


@pytest.fixture(scope="module")
def reference_run(fixture):
  """One jitted float32 run through the converter: outputs, recurrence 3, SE blocks, HRNet input."""
  _, weights, io = fixture
  model = drbn.DRBN(precision=HIGHEST)
  x = _nhwc(io["x"])
  variables = skf.convert_drbn(weights, _shapes(model, x))
  seg_orin, seg_fea = _semantics(io)

  @jax.jit
  def run(v, x, seg_orin, seg_fea):
    seen = {}

    def segment(image):
      seen["image"] = image
      return seg_orin, seg_fea

    out, state = model.apply(
        v, x, segment=segment,
        capture_intermediates=lambda mdl, _: mdl.name in ("recur3", "fuseblk_1", "fuseblk_2",
                                                          "fuseblk_3"))
    return out, state["intermediates"], seen["image"]

  out, inter, seen = run(variables, x, seg_orin, seg_fea)
  return variables, out, inter, seen


def test_every_key_and_shape_maps_one_to_one(fixture):
  keys, _, io = fixture
  shapes = _shapes(drbn.DRBN(), _nhwc(io["x"]))
  ours = layout.flax_to_torch(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  assert {k: list(v.shape) for k, v in ours.items()} == {e["key"]: e["shape"] for e in keys["keys"]}
  assert sum(v.size for v in ours.values()) == keys["num_parameters"]
  assert sorted(shapes) == ["params"]  # no BatchNorm, no other collections


@pytest.mark.parity
def test_whole_network_matches_authors_code(fixture, reference_run):
  _, _, io = fixture
  _, out, inter, seen = reference_run

  def check(got, ref_nchw):
    ref = np.asarray(ref_nchw).transpose(0, 2, 3, 1)
    got = np.asarray(got)
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 1.0
    assert np.abs(got - ref).max() <= 1e-5 * scale, np.abs(got - ref).max() / scale

  r3 = inter["recur3"]["__call__"][0]
  for field, key in (("res_s1", "res_g3_s1"), ("res_s2", "res_g3_s2"), ("res_s4", "res_g3_s4"),
                     ("feat_s1", "feat_g3_s1"), ("feat_s2", "feat_g3_s2"),
                     ("feat_s4", "feat_g3_s4")):
    check(getattr(r3, field), io[key])
  # The segmentation network is handed recurrence 3's full-resolution output.
  check(seen, io["res_g3_s1"])
  for i in (1, 2, 3):
    check(inter["recur4"][f"fuseblk_{i}"]["__call__"][0], io[f"se_fuseblk_{i}_out"])
  for got, key in zip(out, ("phr1", "phr2", "phr4")):
    check(got, io[key])


@pytest.mark.parity
def test_forward_1_and_forward_2_are_the_authors_split(fixture, reference_run):
  _, _, io = fixture
  variables, out, _, _ = reference_run
  model = drbn.DRBN(precision=HIGHEST)
  x = _nhwc(io["x"])
  seg_orin, seg_fea = _semantics(io)

  @jax.jit
  def split(v, x, seg_orin, seg_fea):
    r3 = model.apply(v, x, method=drbn.DRBN.forward_1)
    return model.apply(v, x, r3, seg_orin, seg_fea, method=drbn.DRBN.forward_2)

  for a, b in zip(split(variables, x, seg_orin, seg_fea), out):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The semantic input matters: other features give another output.
  other = split(variables, x, seg_orin * 0.5, tuple(f * 0.5 for f in seg_fea))[0]
  assert float(jnp.abs(other - out[0]).max()) > 1e-2 * float(jnp.abs(out[0]).max())


def test_baseline_switch_builds_drbn_without_se_blocks(fixture):
  keys, weights, io = fixture
  x = _nhwc(io["x"])
  base = drbn.DRBN(skf=False)
  shapes = _shapes(base, x)
  assert "fuseblk_1" not in shapes["params"]["recur4"]
  se = {e["key"]: e["shape"] for e in keys["keys"] if ".fuseblk_" in e["key"]}
  assert se  # the SKF network has them
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert count == keys["num_parameters"] - sum(int(np.prod(s)) for s in se.values())
  # The baseline's weights are the SKF checkpoint minus the SE blocks; it runs without semantics.
  plain = {k: v for k, v in weights.items() if ".fuseblk_" not in k}
  variables = skf.convert_drbn(plain, shapes)
  phr1, phr2, phr4 = jax.jit(base.apply)(variables, x)
  assert phr1.shape == x.shape
  assert phr2.shape[1] * 2 == x.shape[1] and phr4.shape[2] * 4 == x.shape[2]
  assert np.isfinite(np.asarray(phr1)).all()
  # SKF weights do not load into the baseline, nor the reverse; the baseline refuses semantics.
  with pytest.raises(errors.WeightsError, match=r"unexpected keys recur4\.fuseblk_1"):
    skf.convert_drbn(weights, shapes)
  with pytest.raises(errors.WeightsError, match=r"missing keys recur4\.fuseblk_1"):
    skf.convert_drbn(plain, _shapes(drbn.DRBN(), x))
  with pytest.raises(ValueError, match="no semantic input"):
    base.apply(variables, x, segment=skf_se.zero_semantics)


def test_bfloat16_compute_runs(fixture, reference_run):
  _, _, io = fixture
  variables, out, _, _ = reference_run
  model = drbn.DRBN(dtype=jnp.bfloat16)
  seg_orin, seg_fea = _semantics(io)
  phr1 = jax.jit(lambda v, x: model.apply(v, x, segment=lambda _: (seg_orin, seg_fea))[0])(
      variables, _nhwc(io["x"]))
  assert phr1.dtype == jnp.bfloat16
  phr1 = np.asarray(phr1.astype(jnp.float32))
  ref = np.asarray(out[0])
  assert np.isfinite(phr1).all()
  # bf16 carries ~3 significant digits through four recurrences of a random-weight network whose
  # features reach ~50: close (a few percent), not equal.
  assert np.abs(phr1 - ref).mean() < 0.05 * np.abs(ref).mean()
  assert np.corrcoef(phr1.ravel(), ref.ravel())[0, 1] > 0.99
  assert np.abs(phr1 - ref).max() > 0  # it did compute in bfloat16


def test_inputs_are_checked(fixture):
  _, _, io = fixture
  model = drbn.DRBN()
  with pytest.raises(ValueError, match="divisible by 4"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 30, 32, 3)),
                                      segment=skf_se.zero_semantics))
  with pytest.raises(ValueError, match="needs `segment`"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), _nhwc(io["x"])))
