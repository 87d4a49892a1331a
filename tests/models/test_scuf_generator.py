"""SCUF generator (models.scuf + convert.scuf) against the authors' PyTorch run (../shared/conformance).

(a) End to end on fixtures/gefu_tiny, cases a (64x64) and b (48x72, latent 6x9): the SD-Turbo-shaped folder
    through convert.sd_turbo, the released-format `scuf_tiny_model.pkl` through convert.scuf, the stored
    x_t / text_emb / clip_embed / noises in, every stored intermediate compared (one jit per case).
(b) The cycle-attention processor alone on fixtures/gefu_ca_attn_* (gathered query rows repeat / skip), the
    torch linspace gather indices and the scheduler's alphas_cumprod (bit-exact).
(c) The LoRA merge against the unmerged base(x) + 2 * B(A(x)) on random convs and a dense layer.
(d) Bad inputs: another method's checkpoint, missing keys -> one-line WeightsError naming the file / key.
"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax import errors
from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import scuf as convert_scuf
from lowlight_jax.convert import sd_turbo
from lowlight_jax.models import scuf
from lowlight_jax.models import sd_compat

# generate() key -> fixture key (the rest are named alike), and the absolute tolerances (fixture README).
RENAMED = {"posterior_mean": "vae_posterior_mean", "posterior_std": "vae_posterior_std",
           "posterior_logvar": "vae_posterior_logvar_clamped"}
TOLERANCE = {"pred_original_sample": 1e-3, "prev_sample": 1e-3}
DEFAULT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def gefu_tiny(conformance_dir):
  return conformance_dir / "fixtures" / "gefu_tiny"


@pytest.fixture(scope="module")
def fixture_config(gefu_tiny):
  return json.loads((gefu_tiny / "gefu_tiny_config.json").read_text())


@pytest.fixture(scope="module")
def gefu_io(gefu_tiny):
  with np.load(gefu_tiny / "gefu_tiny_io.npz") as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def loaded(gefu_tiny):
  return convert_scuf.load_scuf(gefu_tiny / "scuf_tiny_model.pkl", gefu_tiny / "sd_turbo_tiny")


@pytest.fixture(scope="module")
def components(gefu_tiny):
  folder = gefu_tiny / "sd_turbo_tiny"
  return dict(unet=sd_turbo.load_unet(folder), vae=sd_turbo.load_vae(folder))


@pytest.fixture(scope="module")
def checkpoint(gefu_tiny):
  return convert_scuf.read_checkpoint(gefu_tiny / "scuf_tiny_model.pkl")


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("case", ["a", "b"])
def test_generator_matches_authors_run(loaded, gefu_io, fixture_config, case):
  generator, params = loaded
  io = {k[2:]: v for k, v in gefu_io.items() if k.startswith(f"{case}_")}
  assert fixture_config["direction"] == "a2b"
  assert generator.timestep == int(gefu_io["timestep"][0]) == int(gefu_io["sched_timesteps"][0])
  run = jax.jit(functools.partial(generator.generate, direction=fixture_config["direction"]))
  out = jax.device_get(run(params, io["x_t"], io["text_emb"], io["clip_embed"], vae_noise=io["vae_sample_noise"],
                           sched_noise=io["sched_variance_noise"]))

  num_skips = len(fixture_config["vae_config"]["block_out_channels"])
  assert sorted(k for k in out if k.startswith("enc_skip_")) == [f"enc_skip_{i}" for i in range(num_skips)]
  diffs = {}
  for key, value in out.items():
    ref = io[RENAMED.get(key, key)]
    assert value.shape == ref.shape, key
    diffs[key] = _max_diff(value, ref)
  print(f"case {case} max |diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(diffs.items())))
  bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE.get(k, DEFAULT_TOLERANCE)}
  assert not bad, bad
  np.testing.assert_array_equal(out["decoded"], np.clip(out["decoded_preclamp"], -1, 1))

  image = np.asarray(scuf.to_uint8(out["decoded"]))[0]
  ref_image = io["out_uint8_model_res"]
  assert image.shape == ref_image.shape and image.dtype == np.uint8
  assert np.abs(image.astype(int) - ref_image.astype(int)).max() <= 1


def test_params_layout(loaded, checkpoint, fixture_config, components):
  """The a2b / b2a trees come from the checkpoint's `vae.` / `vae_b2a.` keys, LoRA merged with scale alpha/r."""
  generator, params = loaded
  assert set(params) == {"unet", "vae_a2b", "vae_b2a", "skip_convs_a2b", "skip_convs_b2a", "proj", "ca_adapter"}
  scale = fixture_config["vae_lora"]["scaling"]
  assert scale == convert_scuf.PEFT_DEFAULT_LORA_ALPHA / checkpoint["rank_vae"]
  sd = checkpoint["sd_vae_dec"]
  for direction, prefix in convert_scuf.DIRECTION_PREFIXES.items():
    w = sd[f"{prefix}encoder.conv_in.base_layer.weight"].astype(np.float64)
    a = sd[f"{prefix}encoder.conv_in.lora_A.vae_skip.weight"].astype(np.float64)
    b = sd[f"{prefix}encoder.conv_in.lora_B.vae_skip.weight"][:, :, 0, 0].astype(np.float64)
    merged = w + scale * np.einsum("or,rihw->oihw", b, a)
    got = params[f"vae_{direction}"]["encoder"]["conv_in"]["kernel"]
    np.testing.assert_allclose(got, np.transpose(merged, (2, 3, 1, 0)), rtol=0, atol=1e-6)
    skips = params[f"skip_convs_{direction}"]
    assert sorted(skips) == sorted(fixture_config["skip_convs_in_out"])
    for name, (c_in, c_out) in fixture_config["skip_convs_in_out"].items():
      assert skips[name]["kernel"].shape == (1, 1, c_in, c_out)
  assert not np.array_equal(params["vae_a2b"]["encoder"]["conv_in"]["kernel"],
                            params["vae_b2a"]["encoder"]["conv_in"]["kernel"])
  assert generator.num_tokens == fixture_config["ca_processor"]["num_tokens"]
  # One adapter per attn2, mid block included; the UNet tree is the folder's, untouched.
  layout = convert_scuf.attn2_processor_layout(fixture_config["unet_config"])
  assert [i for i, _, _ in layout] == list(range(1, 2 * len(layout), 2))
  assert layout[-1][1].startswith("mid_block.")
  ckpt_indices = sorted({int(k.split(".")[0]) for k in checkpoint["ca_adapter"]})
  assert ckpt_indices == [i for i, _, _ in layout]
  for index, _, path in layout:
    node = params["ca_adapter"]
    for name in path:
      node = node[name]
    np.testing.assert_array_equal(node["to_k_ca"], checkpoint["ca_adapter"][f"{index}.to_k_ca.weight"].T)
  jax.tree.map(np.testing.assert_array_equal, params["unet"], components["unet"].params)


# ------------------------------------------------------------------------------- processor / numerics


@pytest.mark.parametrize("chunked", [False, True], ids=["dense", "chunked"])
@pytest.mark.parametrize("name", ["gefu_ca_attn_b1_io.npz", "gefu_ca_attn_b2_io.npz"])
def test_cycle_attention_processor(conformance_dir, name, chunked, monkeypatch):
  fixtures = conformance_dir / "fixtures"
  with np.load(fixtures / "gefu_ca_attn_weights.npz") as data:
    w = {k: data[k] for k in data.files}
  with np.load(fixtures / name) as data:
    io = {k: data[k] for k in data.files}
  _, heads, hw, head_dim = io["sdpa_text"].shape
  np.testing.assert_array_equal(scuf.ca_gather_indices(io["encoder_hidden_states"].shape[-1], hw),
                                io["gather_indices"])
  hidden = w["to_q.weight"].shape[0]
  # chunked: the memory-efficient path (`use_memory_efficient_attention`), queries 4 rows (b2: 20 tokens) or 48 rows
  # (b1: 192) at a time; the authors' values either way.
  monkeypatch.setattr(scuf, "CA_QUERY_CHUNK", hw // 5 if hw % 5 == 0 else hw // 4)
  attn = sd_compat.diffusers_flax().Attention(query_dim=hidden, heads=heads, dim_head=head_dim,
                                              use_memory_efficient_attention=chunked)
  attn_params = {"to_q": {"kernel": w["to_q.weight"].T}, "to_k": {"kernel": w["to_k.weight"].T},
                 "to_v": {"kernel": w["to_v.weight"].T},
                 "to_out_0": {"kernel": w["to_out.0.weight"].T, "bias": w["to_out.0.bias"]}}
  adapter = {p: w[f"processor.{p}.weight"].T for p in convert_scuf.CA_PARAMS}
  num_tokens = adapter["to_q_ca"].shape[0]

  def run(hs, ctx):
    return nn.apply(lambda m: scuf.cycle_attention(m, adapter, hs, ctx, num_tokens), attn)({"params": attn_params})

  out = jax.jit(run)(io["hidden_states"], io["encoder_hidden_states"])
  assert _max_diff(out, io["out"]) < 1e-5
  jaxpr = str(jax.make_jaxpr(run)(io["hidden_states"], io["encoder_hidden_states"]))
  assert ("scan[" in jaxpr) == chunked  # the chunks are one `lax.map` (a scan); the dense path has none
  if chunked:  # and the gradient through the chunks is the dense one's
    dense = sd_compat.diffusers_flax().Attention(query_dim=hidden, heads=heads, dim_head=head_dim)
    grad = lambda m: jax.grad(lambda hs: jnp.sum(jnp.sin(nn.apply(
        lambda mm: scuf.cycle_attention(mm, adapter, hs, io["encoder_hidden_states"], num_tokens), m)(
            {"params": attn_params}))))(io["hidden_states"])
    np.testing.assert_allclose(grad(attn), grad(dense), atol=1e-5)


def test_linspace_indices_at_real_width(conformance_dir):
  with np.load(conformance_dir / "fixtures" / "gefu_linspace_indices_1024.npz") as data:
    for key in data.files:
      np.testing.assert_array_equal(scuf.ca_gather_indices(1024, len(data[key])), data[key], err_msg=key)


def test_alphas_cumprod_and_step(gefu_tiny, gefu_io):
  config = sd_turbo.load_scheduler_config(gefu_tiny / "sd_turbo_tiny")
  np.testing.assert_array_equal(scuf.alphas_cumprod(config), gefu_io["alphas_cumprod"])
  # clip_sample honoured; missing means diffusers' default True (x0 clipped to [-1, 1]).
  eps, z = jnp.asarray(gefu_io["a_unet_out"]), jnp.asarray(gefu_io["a_latent"])
  _, x0 = scuf.ddpm_step(config, eps, 999, z)
  assert float(jnp.abs(x0).max()) > 1
  no_clip_key = {k: v for k, v in config.items() if k != "clip_sample"}
  prev, x0 = scuf.ddpm_step(no_clip_key, eps, 999, z)
  assert float(jnp.abs(x0).max()) <= 1 and _max_diff(prev, x0) < 1e-6
  with pytest.raises(errors.ConfigError, match="thresholding"):
    scuf.ddpm_step({**config, "thresholding": True}, eps, 999, z)


# ----------------------------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("kernel_size,stride,padding", [(3, 1, ((1, 1), (1, 1))), (3, 2, "VALID"), (1, 1, "VALID")])
def test_lora_merge_equals_unmerged_conv(kernel_size, stride, padding):
  rng = np.random.default_rng(0)
  c_in, c_out, rank, scale = 6, 5, 4, 2.0
  x = rng.standard_normal((2, 9, 11, c_in)).astype(np.float32)
  w = rng.standard_normal((kernel_size, kernel_size, c_in, c_out)).astype(np.float32)
  a = rng.standard_normal((kernel_size, kernel_size, c_in, rank)).astype(np.float32)
  b = rng.standard_normal((rank, c_out)).astype(np.float32)

  def conv(x, k, s=stride, p=padding):
    return jax.lax.conv_general_dilated(x, k, (s, s), p, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest")

  unmerged = conv(x, w) + scale * conv(conv(x, a), b[None, None], 1, "VALID")
  merged = conv(x, scuf.merge_lora(w, a, b, scale))
  assert _max_diff(merged, unmerged) < 1e-4
  merged_jax = conv(x, scuf.merge_lora(jnp.asarray(w), jnp.asarray(a), jnp.asarray(b), scale))
  assert _max_diff(merged_jax, unmerged) < 1e-4


def test_lora_merge_dense_and_tree():
  rng = np.random.default_rng(1)
  w, a, b = (rng.standard_normal(s).astype(np.float32) for s in ((7, 3), (7, 4), (4, 3)))
  x = rng.standard_normal((5, 7)).astype(np.float32)
  tree = scuf.merge_lora_tree({"layer": {"kernel": w, "bias": np.zeros(3, np.float32)}},
                              {"layer": {"lora_a": a, "lora_b": b}}, 2.0)
  np.testing.assert_allclose(x @ tree["layer"]["kernel"], x @ w + 2.0 * (x @ a) @ b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="do not fit"):
    scuf.merge_lora(w, a[:, :3], b, 2.0)


# ---------------------------------------------------------------------------------------- bad inputs


def test_other_methods_checkpoint_is_rejected(conformance_dir):
  path = conformance_dir / "fixtures" / "skf_drbn_net_weights.npz"
  with pytest.raises(errors.WeightsError) as info:
    convert_scuf.read_checkpoint(path)
  message = str(info.value)
  assert str(path) in message and "'sd_vae_enc'" in message and "\n" not in message
  state_dict = convert_io.load_state_dict(path)
  with pytest.raises(errors.WeightsError, match="not a SCUF/GEFU checkpoint"):
    convert_scuf.check_checkpoint(state_dict, "drbn.pth")


def test_incomplete_checkpoints_name_the_key(checkpoint, fixture_config, components):
  def convert(ckpt):
    with pytest.raises(errors.WeightsError) as info:
      convert_scuf.convert_checkpoint(ckpt, source="model.pkl", **components)
    assert "\n" not in str(info.value) and str(info.value).startswith("model.pkl")
    return str(info.value)

  assert "'ca_adapter'" in convert({k: v for k, v in checkpoint.items() if k != "ca_adapter"})
  last = convert_scuf.attn2_processor_layout(fixture_config["unet_config"])[-1]
  key = f"{last[0]}.to_v_ca.weight"
  adapter = {k: v for k, v in checkpoint["ca_adapter"].items() if k != key}
  assert repr(key) in convert({**checkpoint, "ca_adapter": adapter})
  extra = {**checkpoint["ca_adapter"], f"{last[0] + 1}.to_q_ca.weight": checkpoint["ca_adapter"]["1.to_q_ca.weight"]}
  assert "unexpected key" in convert({**checkpoint, "ca_adapter": extra})

  lora_b = "vae_b2a.decoder.conv_out.lora_B.vae_skip.weight"
  dec = {k: v for k, v in checkpoint["sd_vae_dec"].items() if k != lora_b}
  enc = {k: v for k, v in checkpoint["sd_vae_enc"].items() if k != lora_b}
  assert "decoder.conv_out has no lora_B" in convert({**checkpoint, "sd_vae_dec": dec, "sd_vae_enc": enc})
  skip = "vae.decoder.skip_conv_2.base_layer.weight"
  dec = {k: v for k, v in checkpoint["sd_vae_dec"].items() if not k.startswith("vae.decoder.skip_conv_2.")}
  enc = {k: v for k, v in checkpoint["sd_vae_enc"].items() if not k.startswith("vae.decoder.skip_conv_2.")}
  assert "skip_conv_2" in convert({**checkpoint, "sd_vae_dec": dec, "sd_vae_enc": enc}), skip
  targets = [t for t in checkpoint["vae_lora_target_modules"] if t != "conv_shortcut"]
  assert "conv_shortcut has a LoRA but is not" in convert({**checkpoint, "vae_lora_target_modules": targets})
