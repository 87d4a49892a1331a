"""SNR-SKF: key layout, two-pass parity with the authors' code, mask, baseline switch, bf16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lowlight_jax import errors
from lowlight_jax.convert import layout
from lowlight_jax.convert import skf
from lowlight_jax.models import snr
from lowlight_jax.ops import resize

HIGHEST = jax.lax.Precision.HIGHEST
PASSES = ("pass1", "pass2")


def _nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def fixture(conformance_dir):
  base = conformance_dir / "fixtures"
  keys = json.loads((base / "skf_snr_net_keys.json").read_text())
  weights = dict(np.load(base / "skf_snr_net_weights.npz"))
  io = dict(np.load(base / "skf_snr_net_io.npz"))
  return keys, weights, io


def _seg_fea(io, p):
  n = sum(1 for k in io if k.startswith(f"{p}_seg_fea"))
  return tuple(_nhwc(io[f"{p}_seg_fea{i}"]) for i in range(n))


def _model(keys, **kw):
  args = keys["constructor_args"]
  return snr.SNRNet(n_layers=keys["transformer_n_layers"], nf=args["nf"],
                    front_rbs=args["front_RBs"], back_rbs=args["back_RBs"], **kw)


def _shapes(model, io):
  seg = _seg_fea(io, "pass1") if model.skf else None
  return jax.eval_shape(model.init, jax.random.key(0), _nhwc(io["LQ"]), _nhwc(io["mask"]), seg)


@pytest.fixture(scope="module")
def reference_run(fixture):
  keys, weights, io = fixture
  assert skf.snr_transformer_depth(weights) == keys["transformer_n_layers"]
  model = _model(keys, precision=HIGHEST)
  variables = skf.convert_snr(weights, _shapes(model, io))
  names = ("transformer", "att_block_1", "att_block_2", "att_block_3")
  run = jax.jit(lambda v, x, m, s: model.apply(
      v, x, m, s, capture_intermediates=lambda mdl, _: mdl.name in names))
  results = {p: run(variables, _nhwc(io["LQ"]), _nhwc(io["mask"]), _seg_fea(io, p))
             for p in PASSES}
  return variables, results


def test_every_key_and_shape_maps_one_to_one(fixture):
  keys, _, io = fixture
  shapes = _shapes(_model(keys), io)
  ours = layout.flax_to_torch(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  theirs = {e["key"]: e["shape"] for e in keys["keys"]}
  assert {k: list(v.shape) for k, v in ours.items()} == theirs
  assert sum(v.size for v in ours.values()) == keys["num_parameters"]
  # The released depth (6): every extra layer repeats layer 0's tensors.
  per_layer = sum(int(np.prod(s)) for k, s in theirs.items()
                  if k.startswith("transformer.layer_stack.0."))
  deep = jax.eval_shape(_model(keys).clone(n_layers=snr.RELEASED_N_LAYERS).init,
                        jax.random.key(0), _nhwc(io["LQ"]), _nhwc(io["mask"]),
                        _seg_fea(io, "pass1"))
  extra = snr.RELEASED_N_LAYERS - keys["transformer_n_layers"]
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(deep)) == (
      keys["num_parameters"] + extra * per_layer)


@pytest.mark.parity
def test_two_pass_network_matches_authors_code(fixture, reference_run):
  _, _, io = fixture
  _, results = reference_run

  def check(got, ref):
    got = np.asarray(got)
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0.1
    assert np.abs(got - ref).max() <= 1e-5 * scale, np.abs(got - ref).max() / scale

  for p in PASSES:
    out, state = results[p]
    inter = state["intermediates"]
    check(out, io[f"{p}_out"].transpose(0, 2, 3, 1))
    # Tokens before Fold: no semantic input yet, so both passes share them.
    check(inter["transformer"]["__call__"][0], io["pass1_transformer_out"])
    for i in (1, 2, 3):
      ref = io[f"{p}_att_block_{i}_out"].transpose(0, 2, 3, 1)
      check(inter[f"att_block_{i}"]["__call__"][0], ref)
  # The second pass (semantics of the first output) changes the result: it is the reported one.
  assert float(jnp.abs(results["pass1"][0] - results["pass2"][0]).max()) > 1e-3


def test_snr_mask_blur_and_kept_tokens(fixture):
  _, _, io = fixture
  lq = _nhwc(io["LQ"])
  mask = np.asarray(snr.snr_mask(lq, _nhwc(io["nf"])))
  ref = io["mask"].transpose(0, 2, 3, 1)
  assert np.abs(mask - ref).max() <= 1e-6 and ref.min() < 0.5 < ref.max()
  # cv2.blur (5x5 box, BORDER_REFLECT_101) of LQ, which the dataset computes in float64.
  nf = np.asarray(snr.box_blur(lq))
  assert np.abs(nf - io["nf"].transpose(0, 2, 3, 1)).max() <= 1e-6
  # Mask at 1/4 (legacy nearest), averaged per 4x4 patch: the keys the transformer keeps.
  hq, wq = lq.shape[1] // 4, lq.shape[2] // 4
  token_mean = np.asarray(jnp.mean(snr.unfold_patches(resize.resize_nearest_torch(
      jnp.asarray(ref), (hq, wq))), axis=-1))
  np.testing.assert_allclose(token_mean, io["token_keep_mean"], atol=1e-6)
  kept = int((token_mean > 0.5).sum())
  assert 0 < kept < token_mean.size


def test_unfold_fold_and_pixel_shuffle_follow_torch():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 18, 26)).astype(np.float32)  # NCHW, 26 not a multiple of 4
  tokens = np.asarray(snr.unfold_patches(_nhwc(x)))
  ref = torch.nn.functional.unfold(torch.from_numpy(x), kernel_size=4, stride=4).permute(0, 2, 1)
  np.testing.assert_array_equal(tokens, ref.numpy())
  folded = np.asarray(snr.fold_patches(jnp.asarray(tokens), (18, 26)))
  ref_fold = torch.nn.Fold((18, 26), kernel_size=4, stride=4)(ref.permute(0, 2, 1))
  np.testing.assert_array_equal(folded, ref_fold.numpy().transpose(0, 2, 3, 1))
  assert not folded[:, 16:].any() and not folded[:, :, 24:].any()  # uncovered positions are zero
  y = rng.standard_normal((2, 12, 3, 5)).astype(np.float32)
  ref_ps = torch.nn.PixelShuffle(2)(torch.from_numpy(y)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(np.asarray(snr.pixel_shuffle(_nhwc(y))), ref_ps)


def test_all_keys_masked_gives_uniform_attention():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 32)).astype(np.float32))
  mha = snr.MultiHeadAttention(n_head=2, d_k=8, d_v=8, precision=HIGHEST)
  params = mha.init(jax.random.key(0), x, None)["params"]
  none_kept = jnp.zeros((2, 6), bool)
  out = mha.apply({"params": params}, x, none_kept)
  # Uniform attention is what a zero query gives without a mask (all scores equal).
  zero_q = dict(params, w_qs={"kernel": jnp.zeros_like(params["w_qs"]["kernel"])})
  np.testing.assert_allclose(out, mha.apply({"params": zero_q}, x, None), rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(out - mha.apply({"params": params}, x, None)).max()) > 1e-3
  # Masking a key removes it: with only key 0 kept, every query reads value 0.
  only_first = jnp.zeros((2, 6), bool).at[:, 0].set(True)
  single = mha.apply({"params": params}, x, only_first)
  same_rows = single - x  # residual removed: fc(v_0) for every query
  np.testing.assert_allclose(same_rows, jnp.broadcast_to(same_rows[:, :1], same_rows.shape),
                             rtol=1e-5, atol=1e-5)


def test_baseline_switch_builds_snr_without_se_blocks(fixture):
  keys, weights, io = fixture
  base = _model(keys, skf=False)
  shapes = _shapes(base, io)
  assert not any(k.startswith("att_block") for k in shapes["params"])
  se = sum(int(np.prod(e["shape"])) for e in keys["keys"] if e["key"].startswith("att_block_"))
  assert se > 0
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == keys["num_parameters"] - se
  plain = {k: v for k, v in weights.items() if not k.startswith("att_block_")}
  variables = skf.convert_snr(plain, shapes)
  out = jax.jit(base.apply)(variables, _nhwc(io["LQ"]), _nhwc(io["mask"]))
  assert out.shape == _nhwc(io["LQ"]).shape and np.isfinite(np.asarray(out)).all()
  with pytest.raises(errors.WeightsError, match="unexpected keys att_block_1"):
    skf.convert_snr(weights, shapes)
  with pytest.raises(ValueError, match="no semantic input"):
    base.apply(variables, _nhwc(io["LQ"]), _nhwc(io["mask"]), _seg_fea(io, "pass1"))


def test_bfloat16_compute_runs(fixture, reference_run):
  keys, _, io = fixture
  variables, results = reference_run
  model = _model(keys, dtype=jnp.bfloat16)
  out = jax.jit(model.apply)(variables, _nhwc(io["LQ"]), _nhwc(io["mask"]), _seg_fea(io, "pass2"))
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out.astype(jnp.float32))
  ref = np.asarray(results["pass2"][0])
  assert np.isfinite(out).all()
  assert np.abs(out - ref).mean() < 0.05 * np.abs(ref).mean()
  assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99


def test_size_is_checked(fixture):
  keys, _, io = fixture
  model = _model(keys)
  x = jnp.zeros((1, 30, 32, 3))
  with pytest.raises(ValueError, match="multiples of 4"):
    jax.eval_shape(model.init, jax.random.key(0), x, x[..., :1], _seg_fea(io, "pass1"))
