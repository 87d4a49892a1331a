"""SKF SE block (three variants): key-for-key layout, parity with the authors' TransformerBlock."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.convert import layout
from lowlight_jax.models import skf_se
from lowlight_jax.ops import resize

VARIANTS = ("llflow", "drbn", "snr")
HIGHEST = jax.lax.Precision.HIGHEST


def _nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def inputs(conformance_dir):
  return dict(np.load(conformance_dir / "fixtures/skf_se_inputs_io.npz"))


def _load(conformance_dir, variant):
  base = conformance_dir / f"fixtures/skf_se_{variant}"
  keys = json.loads((base.parent / f"{base.name}_keys.json").read_text())
  weights = dict(np.load(base.parent / f"{base.name}_weights.npz"))
  io = dict(np.load(base.parent / f"{base.name}_io.npz"))
  return keys, weights, io


def _model(keys, variant, **kw):
  ctor = keys["ctor"]
  assert ctor["bias"] is False and ctor["LayerNorm_type"] == "WithBias"
  return skf_se.SEBlock(ctor["dim"], variant=variant, num_heads=ctor["num_heads"],
                        ffn_expansion_factor=ctor["ffn_expansion_factor"], **kw)


def _variables(model, weights, inputs):
  shapes = jax.eval_shape(model.init, jax.random.key(0), _nhwc(inputs["R"]), _nhwc(inputs["S_a"]))
  return shapes, layout.assign(shapes, layout.torch_to_flax(weights))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_key_and_shape_maps_one_to_one(conformance_dir, inputs, variant):
  keys, weights, _ = _load(conformance_dir, variant)
  shapes, variables = _variables(_model(keys, variant), weights, inputs)
  ours = layout.flax_to_torch(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  assert {k: list(v.shape) for k, v in ours.items()} == {e["key"]: e["shape"] for e in keys["keys"]}
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert count == keys["num_params_in_npz"]
  # The learned temperature arrives in its torch (heads, 1, 1) layout.
  temperature = variables["params"]["attn"]["temperature"]
  np.testing.assert_allclose(temperature.ravel(), keys["temperature"], rtol=1e-7)


@pytest.mark.parity
@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_match_authors_code(conformance_dir, inputs, variant):
  keys, weights, io = _load(conformance_dir, variant)
  model = _model(keys, variant, precision=HIGHEST)
  _, variables = _variables(model, weights, inputs)
  apply = jax.jit(model.apply)
  for case in ("a", "b"):
    ref = io[f"out_{case}"].transpose(0, 2, 3, 1)
    out = np.asarray(apply(variables, _nhwc(inputs["R"]), _nhwc(inputs[f"S_{case}"])))
    assert out.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 1.0  # non-trivial reference
    assert np.abs(out - ref).max() <= 1e-5 * scale, (variant, case, np.abs(out - ref).max())


@pytest.mark.parity
def test_semantic_resize_is_legacy_nearest_and_attention_matches(conformance_dir, inputs):
  keys, weights, io = _load(conformance_dir, "llflow")
  # Case b: 10x13 -> 24x32, a non-integer ratio. Legacy nearest (floor(dst*in/out)) is exact here.
  ref = io["S_resized_b"].transpose(0, 2, 3, 1)
  got = np.asarray(resize.resize_nearest_torch(_nhwc(inputs["S_b"]), ref.shape[1:3]))
  np.testing.assert_array_equal(got, ref)
  half_pixel = np.asarray(jax.image.resize(_nhwc(inputs["S_b"]), ref.shape, "nearest"))
  assert np.abs(half_pixel - ref).max() > 1.0  # the half-pixel rule would be wrong
  # The attention branch alone, attn(norm1(R), norm1(conv1(S_a up))), as captured.
  model = _model(keys, "llflow", precision=HIGHEST)
  _, variables = _variables(model, weights, inputs)
  _, state = model.apply(variables, _nhwc(inputs["R"]), _nhwc(inputs["S_a"]),
                         capture_intermediates=lambda mdl, _: mdl.name == "attn")
  attn = np.asarray(state["intermediates"]["attn"]["__call__"][0])
  ref_attn = io["attn_out_a"].transpose(0, 2, 3, 1)
  assert np.abs(attn - ref_attn).max() <= 1e-5 * np.abs(ref_attn).max()


def test_drbn_gelu_is_the_tanh_approximation(conformance_dir, inputs):
  x = jnp.linspace(-6.0, 6.0, 2001)
  np.testing.assert_allclose(skf_se.gelu_tanh(x), jax.nn.gelu(x, approximate=True), atol=2e-6)
  assert float(jnp.abs(skf_se.gelu_tanh(x) - skf_se.gelu_exact(x)).max()) > 1e-4
  # LLFlow and DRBN weights are identical; only the GELU differs, and visibly so at the output.
  _, w_llflow, io_llflow = _load(conformance_dir, "llflow")
  keys, w_drbn, io_drbn = _load(conformance_dir, "drbn")
  assert sorted(w_llflow) == sorted(w_drbn)
  for k in w_llflow:
    np.testing.assert_array_equal(w_llflow[k], w_drbn[k])
  ref_gap = np.abs(io_llflow["out_a"] - io_drbn["out_a"]).max()
  model = _model(keys, "drbn", precision=HIGHEST)
  _, variables = _variables(model, w_drbn, inputs)
  r, s = _nhwc(inputs["R"]), _nhwc(inputs["S_a"])
  gap = np.abs(np.asarray(model.clone(variant="llflow").apply(variables, r, s))
               - np.asarray(model.apply(variables, r, s))).max()
  assert ref_gap > 1e-3
  assert abs(gap - ref_gap) < 1e-4, (gap, ref_gap)


def test_one_layernorm_for_r_and_s_and_unused_snr_parameters_stay_idle(conformance_dir, inputs):
  keys, weights, _ = _load(conformance_dir, "snr")
  model = _model(keys, "snr", precision=HIGHEST)
  _, variables = _variables(model, weights, inputs)
  params = jax.tree.map(jnp.asarray, variables["params"])
  # norm1 serves R and S (no third norm); norm2 serves both FFN inputs.
  assert sorted(params) == ["attn", "conv1", "ffn", "norm1", "norm2"]
  r, s = _nhwc(inputs["R"]), _nhwc(inputs["S_a"])
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, r, s) ** 2))(params)
  ffn = grads["ffn"]
  assert float(jnp.abs(ffn["project_in"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(ffn["dwconv"]["kernel"]).max()) == 0.0
  for used in ("project_in_R", "project_in_S", "project_out"):
    assert float(jnp.abs(ffn[used]["kernel"]).max()) > 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_compute_runs_close_to_float32(conformance_dir, inputs, variant):
  keys, weights, io = _load(conformance_dir, variant)
  model = _model(keys, variant, dtype=jnp.bfloat16)
  _, variables = _variables(model, weights, inputs)
  out = model.apply(variables, _nhwc(inputs["R"]), _nhwc(inputs["S_b"]))
  assert out.dtype == jnp.bfloat16
  ref = io["out_b"].transpose(0, 2, 3, 1)
  out = np.asarray(out.astype(jnp.float32))
  assert np.isfinite(out).all()
  assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_unknown_variant_and_hrnet_shapes():
  r = jnp.zeros((1, 8, 8, 16))
  with pytest.raises(ValueError, match="unknown SE variant"):
    skf_se.SEBlock(16, variant="kind").init(jax.random.key(0), r, r)
  shapes = skf_se.hrnet_w48_shapes(1, 64, 104)
  assert shapes["seg_fea"] == ((1, 16, 26, 48), (1, 8, 13, 96), (1, 4, 7, 192), (1, 2, 4, 384))
  assert shapes["seg_orin"] == (1, 64, 104, 59)
  assert skf_se.hrnet_w48_shapes(1, 50, 70)["seg_orin"] == (1, 52, 72, 59)
