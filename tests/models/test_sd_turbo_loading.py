"""Loading SD-Turbo-shaped diffusers folders into diffusers' / transformers' Flax models (convert.sd_turbo).

(a) Parity with the PyTorch diffusers / transformers models on tiny random models saved here with
    `save_pretrained`, as .safetensors and as .bin (read without torch by our unpickler).
(b) The tiny SD-Turbo fixture (../shared/conformance/fixtures/gefu_tiny): tokenizer ids and text embeddings
    the authors' code computed. Its VAE (LoRA + skip convs) and UNet (cross-attention adapters) outputs are
    not those of the plain folder weights, so only loading (every key used, param counts) is checked there.
(c) Bad inputs: one-line errors naming the path / key.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

# diffusers / transformers / torch are imported here, at collection, before lowlight_jax imports them through
# sd_compat: their PyTorch classes stay available in this process (see sd_compat's module doc).
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from lowlight_jax import errors
from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import sd_turbo
from lowlight_jax.models import sd_compat

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
diffusers.utils.logging.set_verbosity_error()  # the PyTorch classes import the Flax ones, which warn
PROMPT_B = ("natural light, bright lighting, soft illumination, high light, evenly lit, clear visibility, daylight, "
            "bright atmosphere, well-lit photo.")

UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=[2, 4], cross_attention_dim=16, use_linear_projection=True, norm_num_groups=8,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, upcast_attention=False)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
    sample_size=16)
CLIP_CONFIG = dict(
    vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=16)


def _jitter(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Random values everywhere (norm scales/biases too, so a swapped or dropped entry shows up)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """Tiny random PyTorch models, saved as two diffusers-layout folders: safetensors and .bin."""
  torch.manual_seed(0)
  models = {
      "unet": _jitter(diffusers.UNet2DConditionModel(**UNET_CONFIG), 1),
      "vae": _jitter(diffusers.AutoencoderKL(**VAE_CONFIG), 2),
      "text_encoder": _jitter(transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_CONFIG)), 3),
  }
  roots = {}
  for fmt in ("safetensors", "bin"):
    root = tmp_path_factory.mktemp(f"sd_tiny_{fmt}")
    for name, model in models.items():
      model.save_pretrained(root / name, safe_serialization=fmt == "safetensors")
    roots[fmt] = root
  assert (roots["bin"] / "unet" / "diffusion_pytorch_model.bin").is_file()
  assert (roots["bin"] / "text_encoder" / "pytorch_model.bin").is_file()
  return models, roots


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("name,loader", [("unet", sd_turbo.load_unet), ("vae", sd_turbo.load_vae),
                                         ("text_encoder", sd_turbo.load_text_encoder)])
def test_safetensors_and_bin_load_the_same_params(tiny, name, loader):
  models, roots = tiny
  a = loader(roots["safetensors"])
  b = loader(roots["bin"])
  assert a.path == roots["safetensors"] / name
  flat_a = jax.tree_util.tree_leaves_with_path(a.params)
  flat_b = jax.tree_util.tree_leaves_with_path(b.params)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (_, x), (_, y) in zip(flat_a, flat_b):
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(x, y)
  n_torch = sum(p.numel() for p in models[name].parameters())
  assert sum(x.size for _, x in flat_a) == n_torch


@pytest.mark.parity
def test_unet_parity(tiny):
  models, roots = tiny
  unet = sd_turbo.load_unet(roots["safetensors"])
  assert isinstance(unet.module, sd_compat.diffusers_flax().UNet2DConditionModel)
  assert unet.module.norm_num_groups == 8
  rng = np.random.default_rng(0)
  apply = jax.jit(lambda p, x, c: unet.module.apply({"params": p}, x, jnp.array([999]), c).sample)
  # 8x8, and 6x9 (a 48x72 image): not a multiple of the up factor 2, so PyTorch passes `upsample_size`.
  for shape in [(2, 4, 8, 8), (1, 4, 6, 9)]:
    sample = rng.standard_normal(shape).astype(np.float32)
    context = rng.standard_normal((shape[0], 7, 16)).astype(np.float32)
    with torch.no_grad():
      want = models["unet"](torch.from_numpy(sample), torch.tensor([999]), torch.from_numpy(context)).sample.numpy()
    got = apply(unet.params, sample, context)
    diff = _max_diff(got, want)
    print(f"UNet eps at t=999, {shape[2]}x{shape[3]}: max |diff| {diff:.2e} (|eps| max {np.abs(want).max():.2f})")
    assert diff < 1e-4


@pytest.mark.parity
def test_vae_parity(tiny):
  models, roots = tiny
  vae = sd_turbo.load_vae(roots["safetensors"])
  x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
  module = vae.module
  mean, logvar, decoded = jax.jit(lambda p, x: (
      lambda d: (d.mean, d.logvar, module.apply({"params": p}, d.mean, method=module.decode).sample))(
          module.apply({"params": p}, x, method=module.encode).latent_dist))(vae.params, x)
  with torch.no_grad():
    dist = models["vae"].encode(torch.from_numpy(x)).latent_dist
    want_decoded = models["vae"].decode(dist.mean).sample.numpy()
  diffs = (_max_diff(np.transpose(mean, (0, 3, 1, 2)), dist.mean.numpy()),
           _max_diff(np.transpose(logvar, (0, 3, 1, 2)), dist.logvar.numpy()),
           _max_diff(decoded, want_decoded))
  print("VAE max |diff| posterior mean {:.2e}, logvar {:.2e}, decode {:.2e}".format(*diffs))
  assert max(diffs) < 1e-5


@pytest.mark.parity
def test_text_encoder_parity(tiny):
  models, roots = tiny
  te = sd_turbo.load_text_encoder(roots["safetensors"])
  ids = np.random.default_rng(2).integers(0, CLIP_CONFIG["vocab_size"], (2, 77))
  got = jax.jit(lambda p, i: te.module.apply({"params": p}, i).last_hidden_state)(te.params, ids)
  with torch.no_grad():
    want = models["text_encoder"](torch.from_numpy(ids))[0].numpy()
  diff = _max_diff(got, want)
  print(f"CLIP text last_hidden_state max |diff| {diff:.2e}")
  assert diff < 1e-5


# ------------------------------------------------------------------------------------- fixture (b)


@pytest.fixture(scope="module")
def gefu_tiny(conformance_dir):
  return conformance_dir / "fixtures" / "gefu_tiny"


@pytest.fixture(scope="module")
def sd_turbo_tiny(gefu_tiny):
  return gefu_tiny / "sd_turbo_tiny"


def test_fixture_tokenizer_and_text_encoder(gefu_tiny, sd_turbo_tiny):
  with np.load(gefu_tiny / "gefu_tiny_io.npz") as data:
    gefu_io = {k: data[k] for k in ("a_input_ids", "b_input_ids", "a_text_emb")}
  np.testing.assert_array_equal(gefu_io["a_input_ids"], gefu_io["b_input_ids"])  # one prompt for both cases
  tokenizer = sd_turbo.load_tokenizer(sd_turbo_tiny)
  ids = tokenizer(PROMPT_B, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                  return_tensors="np").input_ids
  assert tokenizer.model_max_length == 77
  np.testing.assert_array_equal(ids, gefu_io["a_input_ids"])
  te = sd_turbo.load_text_encoder(sd_turbo_tiny)
  emb = jax.jit(lambda p, i: te.module.apply({"params": p}, i).last_hidden_state)(te.params, gefu_io["a_input_ids"])
  diff = _max_diff(emb, gefu_io["a_text_emb"])
  print(f"fixture text_emb max |diff| {diff:.2e}")
  assert diff < 1e-5
  # dtype: params stored and computed in bfloat16 (host numpy arrays, ml_dtypes' bfloat16).
  te16 = sd_turbo.load_text_encoder(sd_turbo_tiny, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(te16.params)} == {np.dtype(jnp.bfloat16)}
  emb16 = jax.jit(lambda p, i: te16.module.apply({"params": p}, i).last_hidden_state)(te16.params,
                                                                                      gefu_io["a_input_ids"])
  assert emb16.dtype == jnp.bfloat16 and _max_diff(emb16.astype(jnp.float32), gefu_io["a_text_emb"]) < 0.1


def test_fixture_loads_every_component(sd_turbo_tiny):
  model = sd_turbo.load_sd_turbo(sd_turbo_tiny)
  counts = {name: sum(x.size for x in jax.tree.leaves(getattr(model, name).params))
            for name in ("unet", "vae", "text_encoder")}
  # gefu_tiny README: the param counts of the authors' models.
  assert counts == {"unet": 1_466_500, "vae": 391_687, "text_encoder": 40_000}
  assert model.unet.module.norm_num_groups == 8 and model.unet.module.attention_head_dim == (2, 4, 4)
  assert model.vae.module.scaling_factor == pytest.approx(0.18215)
  assert model.scheduler_config["timestep_spacing"] == "trailing"
  assert model.scheduler_config["num_train_timesteps"] == 1000


def test_library_imports_neither_torch_nor_tensorflow(sd_turbo_tiny):
  code = textwrap.dedent(f"""
      import sys
      from lowlight_jax.convert import sd_turbo
      sd_turbo.load_tokenizer({os.fspath(sd_turbo_tiny)!r})
      sd_turbo.load_text_encoder({os.fspath(sd_turbo_tiny)!r})
      sd_turbo.load_unet({os.fspath(sd_turbo_tiny)!r})
      import os
      assert os.environ["HF_HUB_OFFLINE"] == "1"
      print(sorted(m for m in ("torch", "tensorflow") if m in sys.modules))
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("HF_HUB_OFFLINE", None)
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.strip().splitlines()[-1] == "[]"
  assert "deprecated" not in run.stderr  # diffusers' Flax deprecation lines are silenced


# ------------------------------------------------------------------------------------ bad inputs (c)


@pytest.fixture
def copy_component(sd_turbo_tiny, tmp_path):
  def copy(name):
    shutil.copytree(sd_turbo_tiny / name, tmp_path / name)
    return tmp_path / name
  return copy


def test_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="SD-Turbo folder not found: .*nowhere"):
    sd_turbo.load_sd_turbo(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="no vae/ subfolder"):
    sd_turbo.load_vae(tmp_path)


def test_missing_config_and_weights(tmp_path, copy_component):
  unet = copy_component("unet")
  (unet / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"unet/config\.json not found"):
    sd_turbo.load_unet(tmp_path)
  te = copy_component("text_encoder")
  (te / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match=r"text_encoder: no weights file .*model\.safetensors"):
    sd_turbo.load_text_encoder(tmp_path)
  tok = copy_component("tokenizer")
  (tok / "merges.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"tokenizer/merges\.txt not found"):
    sd_turbo.load_tokenizer(tmp_path)


def test_weights_with_a_missing_or_extra_key(tmp_path, copy_component):
  te = copy_component("text_encoder")
  weights = te / "model.safetensors"
  state = convert_io.load_safetensors(weights)[0]
  save_file({k: v for k, v in state.items() if k != "text_model.final_layer_norm.bias"}, weights)
  with pytest.raises(errors.WeightsError, match=r"model\.safetensors: missing key for "
                     r"text_model\.final_layer_norm\.bias \(1 of"):
    sd_turbo.load_text_encoder(tmp_path)
  save_file({**state, "text_projection.weight": np.zeros((32, 32), np.float32)}, weights)
  with pytest.raises(errors.WeightsError, match="unexpected checkpoint key 'text_projection.weight'"):
    sd_turbo.load_text_encoder(tmp_path)
  bad = dict(state)
  bad["text_model.encoder.layers.0.mlp.fc1.weight"] = np.zeros((65, 32), np.float32)
  save_file(bad, weights)
  with pytest.raises(errors.WeightsError, match=r"'text_model.encoder.layers.0.mlp.fc1.weight' has shape \(65, 32\)"):
    sd_turbo.load_text_encoder(tmp_path)


def test_unsupported_config_value(tmp_path, copy_component):
  unet = copy_component("unet")
  config = json.loads((unet / "config.json").read_text())
  (unet / "config.json").write_text(json.dumps({**config, "class_embed_type": "timestep"}))
  with pytest.raises(errors.ConfigError, match=r"config\.json: class_embed_type='timestep' is not implemented"):
    sd_turbo.load_unet(tmp_path)
  (unet / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
  with pytest.raises(errors.ConfigError, match="_class_name is 'UNet2DModel'"):
    sd_turbo.load_unet(tmp_path)


def test_sharded_and_variant_checkpoints(tmp_path, copy_component, sd_turbo_tiny):
  plain = sd_turbo.load_text_encoder(sd_turbo_tiny)
  te = copy_component("text_encoder")
  state = convert_io.load_safetensors(te / "model.safetensors")[0]
  (te / "model.safetensors").unlink()
  keys = list(state)
  shards = {"model-00001-of-00002.safetensors": keys[:5], "model-00002-of-00002.safetensors": keys[5:]}
  for name, shard_keys in shards.items():
    save_file({k: state[k] for k in shard_keys}, te / name)
  index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
  (te / "model.safetensors.index.json").write_text(json.dumps(index))
  sharded = sd_turbo.load_text_encoder(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, sharded.params, plain.params)
  for name in shards:
    (te / name).unlink()
  (te / "model.safetensors.index.json").unlink()
  save_file(state, te / "model.fp16.safetensors")
  with pytest.raises(FileNotFoundError, match="no weights file"):
    sd_turbo.load_text_encoder(tmp_path)
  variant = sd_turbo.load_text_encoder(tmp_path, variant="fp16")
  jax.tree.map(np.testing.assert_array_equal, variant.params, plain.params)
