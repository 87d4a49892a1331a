"""GEFU's CLIP image prompt: OpenAI ViT tower, illumination prompt, ProjModel, converters.

Parity with the authors' run (conformance/fixtures/gefu_tiny) and with a PyTorch reference of the
OpenAI visual tower written here (random weights, GEFU's `pos_embedding` switch both ways).
"""

import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowlight_jax import errors
from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import openai_clip as convert
from lowlight_jax.models import openai_clip

_DIR = "fixtures/gefu_tiny/"


@pytest.fixture(scope="module")
def gefu(conformance_dir):
  d = conformance_dir / _DIR
  return {"clip_path": d / "clip_vit_tiny_openai_layout.npz",
          "clip_sd": convert_io.load_npz(d / "clip_vit_tiny_openai_layout.npz"),
          "clip_keys": json.loads((d / "clip_vit_tiny_keys.json").read_text()),
          "config": json.loads((d / "gefu_tiny_config.json").read_text()),
          "io": dict(np.load(d / "gefu_tiny_io.npz")),
          "ckpt": convert_io.load_checkpoint(d / "scuf_tiny_model.pkl")}


@pytest.fixture(scope="module")
def encoder(gefu):
  return convert.load_clip_image_encoder(gefu["clip_path"])


def _nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def _apply(model, variables, x, pos_embedding=False):
  return jax.jit(model.apply, static_argnames="pos_embedding")(variables, x,
                                                               pos_embedding=pos_embedding)


_image_embedding = jax.jit(openai_clip.image_embedding, static_argnames="dtype")


def _max_diff(ours, ref):
  return float(np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64)).max())


def test_config_inferred_as_build_model(gefu, encoder):
  want = gefu["clip_keys"]["build_model_infers"]
  cfg = convert.infer_clip_config(gefu["clip_sd"])
  assert cfg == dict(width=want["vision_width"], layers=want["vision_layers"],
                     patch_size=want["vision_patch_size"], output_dim=want["embed_dim"],
                     input_resolution=want["image_resolution"], heads=want["vision_heads"])
  assert want["embed_dim"] == gefu["config"]["proj_model"]["clip_embeddings_dim"]
  model, variables = encoder
  assert model.num_heads == want["vision_heads"]
  assert openai_clip.config_from_params(variables) == {k: v for k, v in cfg.items() if k != "heads"}
  leaves = jax.tree.leaves(variables)
  assert sum(x.size for x in leaves) == gefu["clip_keys"]["visual_param_count"]
  assert all(x.dtype == np.float32 for x in leaves)


@pytest.mark.parametrize("case", ["a", "b"])  # b: 48 x 72 -> a 6 x 9 grid, no positional table
def test_embedding_matches_gefu(gefu, encoder, case):
  io, (model, variables) = gefu["io"], encoder
  x = _nhwc(io[f"{case}_v_prompt"])
  raw = _apply(model, variables, x)
  assert raw.shape == (1, gefu["clip_keys"]["build_model_infers"]["embed_dim"])
  assert _max_diff(raw, io[f"{case}_clip_embed_raw"]) < 1e-5
  emb = _image_embedding(variables, x)
  assert _max_diff(emb, io[f"{case}_clip_embed"]) < 1e-5
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("case", ["a", "b"])
def test_fp16_path_matches_gefu_fp16_weights_run(gefu, encoder, case):
  # GEFU on CUDA keeps the CLIP weights in fp16; the fixture's values are fp16-exact, so float32
  # params computed in float16 are that run. Its embedding is rounded to fp16 before the cast.
  io, (_, variables) = gefu["io"], encoder
  emb16 = np.asarray(_image_embedding(variables, _nhwc(io[f"{case}_v_prompt"]),
                                       dtype=jnp.float16))
  np.testing.assert_array_equal(emb16, emb16.astype(np.float16).astype(np.float32))
  assert _max_diff(emb16, io[f"{case}_clip_embed_fp16weights"]) < 2e-4


@pytest.mark.parametrize("case", ["a", "b"])
def test_illumination_prompt_is_one_minus_hsv_value(gefu, case):
  io = gefu["io"]
  rgb = io[f"{case}_resized_uint8"]
  np.testing.assert_array_equal(io[f"{case}_hsv_uint8"][..., 2], rgb.max(-1))  # PIL V == max
  prompt = openai_clip.illumination_prompt(rgb[None])
  assert prompt.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(prompt), np.asarray(_nhwc(io[f"{case}_v_prompt"])))
  v = np.asarray(openai_clip.illumination_prompt(rgb, direction="b2a"))
  np.testing.assert_array_equal(v[..., 0], rgb.max(-1).astype(np.float32) / np.float32(255))
  as_float = openai_clip.illumination_prompt(rgb.astype(np.float32) / 255)
  assert _max_diff(as_float, prompt[0]) < 1e-6
  with pytest.raises(ValueError, match="direction"):
    openai_clip.illumination_prompt(rgb, direction="lighten")


@pytest.mark.parametrize("case", ["a", "b"])
def test_proj_model_matches_gefu(gefu, case):
  want = gefu["config"]["proj_model"]
  model, variables = convert.convert_proj_model(gefu["ckpt"]["image_proj"])
  assert (model.cross_attention_dim, model.clip_extra_context_tokens) == (
      want["cross_attention_dim"], want["clip_extra_context_tokens"])
  io = gefu["io"]
  tokens = model.apply(variables, jnp.asarray(io[f"{case}_clip_embed"]))
  assert tokens.shape == io[f"{case}_ca_tokens"].shape
  assert _max_diff(tokens, io[f"{case}_ca_tokens"]) < 1e-5
  # The whole checkpoint is accepted too (its `image_proj` entry is taken).
  _, again = convert.convert_proj_model(gefu["ckpt"])
  jax.tree.map(np.testing.assert_array_equal, again, variables)


# ---------------------------------------------------------------------------------------------
# PyTorch reference of the OpenAI / GEFU visual tower (src/CLIP/model.py semantics).


class _LayerNorm(nn.LayerNorm):

  def forward(self, x):
    return super().forward(x.float()).to(x.dtype)


class _QuickGELU(nn.Module):

  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):

  def __init__(self, d, heads):
    super().__init__()
    self.attn = nn.MultiheadAttention(d, heads)
    self.ln_1 = _LayerNorm(d)
    self.mlp = nn.Sequential(collections.OrderedDict(
        [("c_fc", nn.Linear(d, 4 * d)), ("gelu", _QuickGELU()), ("c_proj", nn.Linear(4 * d, d))]))
    self.ln_2 = _LayerNorm(d)

  def forward(self, x):  # (L, N, D)
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):

  def __init__(self, d, layers, heads):
    super().__init__()
    self.resblocks = nn.Sequential(*[_Block(d, heads) for _ in range(layers)])

  def forward(self, x):
    return self.resblocks(x)


class _Visual(nn.Module):

  def __init__(self, resolution, patch, width, layers, heads, out_dim):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
    self.class_embedding = nn.Parameter(torch.randn(width))
    self.positional_embedding = nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width))
    self.ln_pre = _LayerNorm(width)
    self.transformer = _Transformer(width, layers, heads)
    self.ln_post = _LayerNorm(width)
    self.proj = nn.Parameter(torch.randn(width, out_dim) * width ** -0.5)

  def forward(self, x, pos_embedding):  # x NCHW
    x = self.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1)
    if pos_embedding:  # GEFU: 1-D bicubic resample of the table along the token axis
      pos = F.interpolate(self.positional_embedding[None, None], size=(x.size(1), x.size(2)),
                          mode="bicubic")[0, 0]
      x = x + pos
    x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
    return self.ln_post(x[:, 0, :]) @ self.proj


@pytest.fixture(scope="module")
def torch_tower():
  # width >= 64 so heads = width // 64 (= 2) as build_model sets it; 16 px table, 4 x 4 grid.
  torch.manual_seed(0)
  cfg = dict(resolution=32, patch=8, width=128, layers=2, heads=2, out_dim=24)
  ref = _Visual(**cfg).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
        p.copy_(0.1 * torch.randn_like(p) + (1.0 if name.endswith("weight") else 0.0))
  sd = {f"visual.{k}": v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  # A text tower is present in real files and ignored.
  sd.update({"positional_embedding": np.zeros((77, 64), np.float32),
             "text_projection": np.zeros((64, 24), np.float32), "logit_scale": np.float32(4.6),
             "transformer.resblocks.0.attn.in_proj_weight": np.zeros((192, 64), np.float32)})
  return ref, sd


@pytest.mark.parametrize("hw,pos", [((44, 61), False), ((44, 61), True), ((24, 17), True),
                                    ((32, 32), True)])
def test_parity_with_torch_reference(torch_tower, tmp_path, hw, pos):
  # 44 x 61 -> 5 x 7 grid (36 tokens vs the 17-entry table: upsampled); 24 x 17 -> 3 x 2 (7
  # tokens: downsampled); 32 x 32 -> the table's own length (identity, plain CLIP).
  ref, sd = torch_tower
  x = np.random.default_rng(hw[0] + hw[1]).uniform(0, 1, (2, 3) + hw).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x), pos).numpy()
  path = tmp_path / "clip_state_dict.pt"
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, path)
  model, variables = convert.load_clip_image_encoder(path)
  assert (model.width, model.layers, model.patch_size, model.output_dim, model.input_resolution,
          model.num_heads) == (128, 2, 8, 24, 32, 2)
  got = _apply(model, variables, _nhwc(x), pos)
  assert _max_diff(got, want) < 2e-5 * max(1.0, np.abs(want).max())
  if pos and hw == (44, 61):  # the positional term contributes
    assert _max_diff(got, _apply(model, variables, _nhwc(x))) > 1e-2


def test_bicubic_resample_matrix_matches_torch():
  for n_in, n_out in ((17, 36), (17, 7), (50, 70), (5, 2)):
    table = np.random.default_rng(n_out).normal(size=(n_in, 3)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(table)[None, None], size=(n_out, 3),
                         mode="bicubic")[0, 0].numpy()
    assert _max_diff(openai_clip._torch_bicubic_matrix(n_in, n_out) @ table, want) < 1e-5


# ---------------------------------------------------------------------------------------------
# Bad input


def _one_line_error(call, *needles):
  with pytest.raises(errors.WeightsError) as info:
    call()
  msg = str(info.value)
  assert "\n" not in msg
  for needle in needles:
    assert str(needle) in msg
  return msg


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in new torch
def test_wrong_layout_files_name_the_file(tmp_path, gefu):
  hf = tmp_path / "hf_clip.npz"
  np.savez(hf, **{"vision_model.embeddings.patch_embedding.weight": np.zeros((8, 3, 4, 4)),
                  "vision_model.post_layernorm.weight": np.zeros((8,))})
  msg = _one_line_error(lambda: convert.load_clip_image_encoder(hf), hf, "visual.conv1.weight")
  assert "Hugging Face" in msg
  other = tmp_path / "other.pt"
  torch.save({"weight": torch.zeros(3)}, other)
  _one_line_error(lambda: convert.load_clip_image_encoder(other), other, "visual.conv1.weight")
  scripted = tmp_path / "ViT-B-32.pt"  # OpenAI's release is a TorchScript archive
  torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(scripted))
  _one_line_error(lambda: convert.load_clip_image_encoder(scripted), scripted, "TorchScript")
  truncated = {k: v for k, v in gefu["clip_sd"].items()
               if k != "visual.transformer.resblocks.1.mlp.c_fc.bias"}
  _one_line_error(lambda: convert.convert_clip_visual(truncated, source="cut.npz"), "cut.npz",
                  "missing keys (1): visual.transformer.resblocks.1.mlp.c_fc.bias")
  with pytest.raises(FileNotFoundError):
    convert.load_clip_image_encoder(tmp_path / "missing.pt")


def test_bad_proj_state_dict(gefu):
  sd = dict(gefu["ckpt"]["image_proj"])
  del sd["norm.bias"]
  _one_line_error(lambda: convert.convert_proj_model(sd), "norm.bias")
  sd = dict(gefu["ckpt"]["image_proj"], **{"norm.extra": np.zeros(3, np.float32)})
  _one_line_error(lambda: convert.convert_proj_model(sd), "norm.extra")
