"""The tiny random SD-Turbo-shaped family (convert.sd_family) and the real sd-turbo configs (models.sd_turbo_configs).

(a) The written family loads with `sd_turbo.load_sd_turbo` (strict: every key used, every param filled) and gives
    back exactly the params that were written; the UNet, VAE and text encoder run and give finite outputs; the
    tokenizer pads / truncates to 77 ids inside the text encoder's vocabulary.
(b) The files are PyTorch's: diffusers' / transformers' PyTorch classes load them strictly from the folder's
    configs and compute what the Flax modules compute.
(c) Writing: same seed -> same bytes; an existing folder is left alone unless overwrite=True; a failed write
    leaves nothing at the target.
(d) The real sd-turbo configs build modules with the PyTorch parameter counts (eval_shape only).
"""

import json
import os
import pathlib

# diffusers / transformers / torch are imported here, at collection, before lowlight_jax imports them through
# sd_compat: their PyTorch classes stay available in this process (see sd_compat's module doc).
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from lowlight_jax.convert import sd_family
from lowlight_jax.convert import sd_turbo
from lowlight_jax.models import sd_turbo_configs

diffusers.utils.logging.set_verbosity_error()
PROMPT = "natural light, bright lighting, soft illumination, evenly lit, a well-lit photo of the things!"


def _files(root: pathlib.Path) -> dict[str, bytes]:
  return {os.fspath(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tokenize(tokenizer, text):
  return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                   return_tensors="np").input_ids


@pytest.fixture(scope="module")
def family(tmp_path_factory):
  folder = sd_family.write_tiny_family(tmp_path_factory.mktemp("family") / "sd_turbo_tiny", seed=3)
  return folder, sd_turbo.load_sd_turbo(folder)


# --------------------------------------------------------------------------------------------------- (a)


def test_written_family_loads_strictly_and_round_trips_the_params(family):
  folder, loaded = family
  assert sorted(os.listdir(folder)) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
  expected = sd_family.tiny_family_params(seed=3)
  configs = sd_family.tiny_family_configs()
  for kind in ("unet", "vae", "text_encoder"):
    component = getattr(loaded, kind)
    assert json.loads((folder / kind / "config.json").read_text()) == configs[kind]
    assert component.config.items() >= configs[kind].items()  # transformers adds attn_implementation to its dict
    got = traverse_util.flatten_dict(component.params)
    want = traverse_util.flatten_dict(expected[kind])
    assert got.keys() == want.keys(), kind
    for path, value in want.items():
      assert got[path].dtype == np.float32, (kind, path)
      np.testing.assert_array_equal(got[path], value, err_msg=f"{kind}: {'/'.join(path)}")
    # build_module builds what the loader builds: the same module and the same (abstract) tree.
    module, abstract = sd_turbo_configs.build_module(kind, component.config)
    assert module == component.module, kind
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), component.params), kind
  # The file content is the torch state dict, one tensor per param and nothing else.
  for kind, name in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                     ("text_encoder", "model.safetensors")):
    state_dict = sd_turbo.read_state_dict(folder / kind / name)
    assert len(state_dict) == len(traverse_util.flatten_dict(expected[kind]))
    assert all(v.dtype == np.float32 for v in state_dict.values())
  assert loaded.scheduler_config == sd_family.SCHEDULER_CONFIG
  assert loaded.scheduler_config["timestep_spacing"] == "trailing" and loaded.scheduler_config["clip_sample"] is False
  assert json.loads((folder / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
  # Every tensor is distinct (a swapped or dropped entry would show): no two params of one shape are equal.
  for kind in ("unet", "vae", "text_encoder"):
    seen = {}
    for path, value in traverse_util.flatten_dict(expected[kind]).items():
      key = (value.shape, value.tobytes())
      assert key not in seen, (kind, path, seen.get(key))
      seen[key] = path


def test_unet_and_vae_run_and_are_finite(family):
  """The one-step path of the SCUF pipeline: encode, UNet at t=999, x0 from the scheduler formula, decode."""
  _, loaded = family
  unet, vae = loaded.unet, loaded.vae
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
  posterior = vae.module.apply({"params": vae.params}, image, method=vae.module.encode).latent_dist
  mean = np.asarray(posterior.mean).transpose(0, 3, 1, 2)  # the Flax VAE's posterior is NHWC
  assert mean.shape == (1, 4, 8, 8) and np.isfinite(mean).all() and mean.std() > 1e-3
  latents = mean * 0.18215
  context = rng.standard_normal((1, 77, 32)).astype(np.float32)
  eps = np.asarray(unet.module.apply({"params": unet.params}, latents, jnp.array([999]), context).sample)
  assert eps.shape == (1, 4, 8, 8) and np.isfinite(eps).all()
  assert 0.05 < eps.std() < 20, eps.std()
  alpha_bar = 0.004660095  # alphas_cumprod[999] of sd-turbo's scaled_linear schedule
  x0 = (latents - np.sqrt(1 - alpha_bar) * eps) / np.sqrt(alpha_bar)
  decoded = np.asarray(vae.module.apply({"params": vae.params}, x0 / 0.18215, method=vae.module.decode).sample)
  assert decoded.shape == (1, 3, 64, 64) and np.isfinite(decoded).all() and decoded.std() > 1e-3


def test_tokenizer_and_text_encoder(family):
  _, loaded = family
  tokenizer, te = loaded.tokenizer, loaded.text_encoder
  vocab = sd_family.tiny_vocab()
  assert tokenizer.model_max_length == 77 and len(tokenizer) == len(vocab) == te.config["vocab_size"]
  ids = _tokenize(tokenizer, PROMPT)
  assert ids.shape == (1, 77)
  assert 0 <= ids.min() and ids.max() < te.config["vocab_size"]
  assert ids[0, 0] == vocab["<|startoftext|>"]
  eos = int(np.flatnonzero(ids[0] == vocab["<|endoftext|>"])[0])
  assert (ids[0, eos + 1:] == vocab["!"]).all() and eos + 1 < 77  # padded with "!" (id 0), as SD-2's tokenizer
  tokens = tokenizer.convert_ids_to_tokens(ids[0, :eos + 1].tolist())
  assert "light</w>" in tokens and "the</w>" in tokens  # the merges apply
  text = tokenizer.decode(ids[0, 1:eos], skip_special_tokens=False)  # CLIP decoding spaces out punctuation
  assert text.replace(" ", "") == PROMPT.replace(" ", "")
  long_ids = _tokenize(tokenizer, " ".join(["lighting"] * 100))  # truncated to 77, still ends with EOS
  assert long_ids.shape == (1, 77) and long_ids[0, -1] == vocab["<|endoftext|>"]
  # Any ASCII text stays inside the vocabulary.
  ascii_ids = _tokenize(tokenizer, "".join(chr(c) for c in range(32, 127)))
  assert ascii_ids.max() < te.config["vocab_size"]
  hidden = np.asarray(te.module.apply({"params": te.params}, ids).last_hidden_state)
  assert hidden.shape == (1, 77, 32) and np.isfinite(hidden).all() and hidden.std() > 0.1


# --------------------------------------------------------------------------------------------------- (b)


def test_pytorch_classes_load_the_files_strictly_and_agree(family):
  folder, loaded = family
  rng = np.random.default_rng(1)
  torch_models = {
      "unet": diffusers.UNet2DConditionModel.from_config(json.loads((folder / "unet/config.json").read_text())),
      "vae": diffusers.AutoencoderKL.from_config(json.loads((folder / "vae/config.json").read_text())),
      "text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(folder / "text_encoder")),
  }
  names = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}
  for kind, model in torch_models.items():
    state_dict = {k: torch.from_numpy(np.array(v)) for k, v in
                  sd_turbo.read_state_dict(folder / kind / names[kind]).items()}
    model.load_state_dict(state_dict, strict=True)  # same keys, same shapes
    model.eval()
  latents = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
  context = rng.standard_normal((1, 77, 32)).astype(np.float32)
  with torch.no_grad():
    want = torch_models["unet"](torch.from_numpy(latents), 999, torch.from_numpy(context)).sample.numpy()
  got = np.asarray(loaded.unet.module.apply({"params": loaded.unet.params}, latents, jnp.array([999]), context).sample)
  assert np.isfinite(want).all()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  z = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
  with torch.no_grad():
    want = torch_models["vae"].decode(torch.from_numpy(z)).sample.numpy()
  got = np.asarray(loaded.vae.module.apply({"params": loaded.vae.params}, z, method=loaded.vae.module.decode).sample)
  assert np.isfinite(want).all()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  ids = _tokenize(loaded.tokenizer, PROMPT)
  with torch.no_grad():
    want = torch_models["text_encoder"](torch.from_numpy(ids)).last_hidden_state.numpy()
  got = np.asarray(loaded.text_encoder.module.apply({"params": loaded.text_encoder.params}, ids).last_hidden_state)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_flax_to_torch_state_dict_rejects_what_does_not_map_back():
  with pytest.raises(ValueError, match="target_kind"):
    sd_family.flax_to_torch_state_dict({}, "clip")
  with pytest.raises(ValueError, match="no unique PyTorch key"):  # a 3-D kernel is neither conv nor Dense
    sd_family.flax_to_torch_state_dict({"conv_in": {"kernel": np.zeros((3, 3, 4), np.float32)}}, "unet")
  out = sd_family.flax_to_torch_state_dict(
      {"down_blocks_0": {"attentions_0": {"to_out_0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}},
       "time_embedding": {"linear_1": {"kernel": np.zeros((2, 3), np.float32)}},
       "mid_block": {"attentions_0": {"query": {"kernel": np.eye(2, dtype=np.float32)},
                                      "group_norm": {"scale": np.ones(2, np.float32)}}},
       "conv_in": {"kernel": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)}}, "vae")
  assert list(out) == ["conv_in.weight", "down_blocks.0.attentions.0.to_out.0.weight",
                       "mid_block.attentions.0.group_norm.weight", "mid_block.attentions.0.to_q.weight",
                       "time_embedding.linear_1.weight"]
  np.testing.assert_array_equal(out["down_blocks.0.attentions.0.to_out.0.weight"],
                                np.arange(6, dtype=np.float32).reshape(2, 3).T)
  assert out["conv_in.weight"].shape == (4, 3, 1, 2)


# --------------------------------------------------------------------------------------------------- (c)


def test_same_seed_same_bytes_and_another_seed_other_weights(tmp_path, family):
  folder, _ = family
  again = sd_family.write_tiny_family(tmp_path / "again", seed=3)
  assert _files(again) == _files(folder)
  other = _files(sd_family.write_tiny_family(tmp_path / "other", seed=4))
  first = _files(folder)
  assert other.keys() == first.keys()
  for name in first:
    same = other[name] == first[name]
    assert same == name.endswith((".json", ".txt")), name  # the seed changes the weights, nothing else


def test_existing_folder_is_left_alone_unless_overwrite(tmp_path):
  folder = tmp_path / "fam"
  assert sd_family.write_tiny_family(folder, seed=0) == folder
  before = _files(folder)
  weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
  mtime = weights.stat().st_mtime_ns
  (folder / "marker.txt").write_text("mine")
  assert sd_family.write_tiny_family(folder, seed=1) == folder
  assert _files(folder) == {**before, "marker.txt": b"mine"} and weights.stat().st_mtime_ns == mtime
  assert sd_family.write_tiny_family(folder, seed=1, overwrite=True) == folder
  after = _files(folder)
  assert "marker.txt" not in after and after.keys() == before.keys()
  assert after["unet/diffusion_pytorch_model.safetensors"] != before["unet/diffusion_pytorch_model.safetensors"]
  assert sorted(os.listdir(tmp_path)) == ["fam"]  # no temporary or old folders left behind
  (tmp_path / "file").write_text("x")
  with pytest.raises(NotADirectoryError):
    sd_family.write_tiny_family(tmp_path / "file")


def test_a_failed_write_leaves_nothing_at_the_target(tmp_path, monkeypatch):
  def half_then_fail(root, seed):
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text("{}")
    raise RuntimeError("disk full")

  monkeypatch.setattr(sd_family, "_write_family", half_then_fail)
  with pytest.raises(RuntimeError, match="disk full"):
    sd_family.write_tiny_family(tmp_path / "fam")
  assert os.listdir(tmp_path) == []
  # Over an existing family: the old one stays as it was.
  monkeypatch.undo()
  folder = sd_family.write_tiny_family(tmp_path / "fam")
  before = _files(folder)
  monkeypatch.setattr(sd_family, "_write_family", half_then_fail)
  with pytest.raises(RuntimeError, match="disk full"):
    sd_family.write_tiny_family(folder, seed=5, overwrite=True)
  assert _files(folder) == before and os.listdir(tmp_path) == ["fam"]


# --------------------------------------------------------------------------------------------------- (d)


def test_real_sd_turbo_configs_have_the_pytorch_parameter_counts():
  modules = sd_turbo_configs.abstract_modules(jnp.bfloat16)
  counts = {kind: sd_turbo_configs.param_count(abstract) for kind, (_, abstract) in modules.items()}
  assert counts == {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}
  assert counts == sd_turbo_configs.PARAM_COUNTS
  unet, unet_params = modules["unet"]
  assert unet.dtype == jnp.bfloat16 and unet.cross_attention_dim == 1024 and unet.attention_head_dim == (5, 10, 20, 20)
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) and leaf.dtype == jnp.bfloat16
             for leaf in jax.tree.leaves(unet_params))
  assert sd_turbo_configs.param_bytes(unet_params) == 2 * 865_910_724
  te, te_params = modules["text_encoder"]
  assert te.config.hidden_size == 1024 and te.config.num_hidden_layers == 23
  assert te_params["text_model"]["embeddings"]["token_embedding"]["embedding"].shape == (49408, 1024)
  assert modules["vae"][0].block_out_channels == (128, 256, 512, 512)
  assert "attn_implementation" not in sd_turbo_configs.TEXT_ENCODER_CONFIG  # building does not touch the constants
  assert sd_turbo_configs.configs() == sd_turbo_configs.CONFIGS
