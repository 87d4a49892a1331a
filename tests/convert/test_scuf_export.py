"""SCUF/GEFU trained tree <-> the authors' checkpoint file (convert.scuf_export), on fixtures/gefu_tiny.

(a) authors' file -> trainable_from_checkpoint -> export_checkpoint -> load_scuf gives the merged params of
    load_scuf(authors' file); (b) the exported file is a torch.load-able dict with the authors' keys, and its
    VAE state dicts list the authors' keys (order and shapes included); (c) a random trained tree merges as
    merge_lora_tree(base, lora, alpha / r) once exported and read back, and trainable_from_checkpoint inverts
    export_checkpoint; (d) mismatched trees and files raise one-line WeightsErrors naming the key.
"""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

from lowlight_jax import errors
from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import scuf as convert_scuf
from lowlight_jax.convert import scuf_export
from lowlight_jax.convert import sd_turbo
from lowlight_jax.convert import torch_save
from lowlight_jax.models import scuf

MERGED = ("vae_a2b", "vae_b2a", "skip_convs_a2b", "skip_convs_b2a", "proj", "ca_adapter")


@pytest.fixture(scope="module")
def gefu_tiny(conformance_dir):
  return conformance_dir / "fixtures" / "gefu_tiny"


@pytest.fixture(scope="module")
def folder(gefu_tiny):
  return gefu_tiny / "sd_turbo_tiny"


@pytest.fixture(scope="module")
def authors_path(gefu_tiny):
  return gefu_tiny / "scuf_tiny_model.pkl"


@pytest.fixture(scope="module")
def authors(authors_path):
  return convert_io.load_checkpoint(authors_path)


@pytest.fixture(scope="module")
def components(folder):
  return sd_turbo.load_unet(folder), sd_turbo.load_vae(folder)


@pytest.fixture(scope="module")
def context(components):
  unet, vae = components
  return dict(vae_params=vae.params, unet_config=unet.config, unet_params=unet.params)


@pytest.fixture(scope="module")
def trained(authors_path, context):
  return scuf_export.trainable_from_checkpoint(authors_path, **context)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained, folder):
  path = tmp_path_factory.mktemp("export") / "test_model.pkl"
  assert scuf_export.export_checkpoint(path, trained, sd_turbo_folder=folder) == path
  return path


@pytest.fixture(scope="module")
def authors_merged(authors_path, folder):
  return convert_scuf.load_scuf(authors_path, folder)[1]


def _max_diff(a, b):
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert set(flat_a) == set(flat_b)
  return max(float(np.max(np.abs(np.asarray(flat_a[k], np.float64) - np.asarray(flat_b[k], np.float64)),
                          initial=0.0)) for k in flat_a)


def _tolerance(tree, atol=1e-6):
  """atol, relative to the tree's largest magnitude when that exceeds 1 (float32 rounding of the file's B)."""
  return atol * max(1.0, max(float(np.max(np.abs(v), initial=0.0)) for v in jax.tree.leaves(tree)))


def _one_line_error(fn, *args, **kwargs) -> str:
  with pytest.raises(errors.WeightsError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


# ------------------------------------------------------------------------------------------- layers


def test_vae_lora_layers(components, authors):
  _, vae = components
  layers = scuf_export.vae_lora_layers(vae.params)
  suffix = ".lora_A.vae_skip.weight"
  lora_modules = [k[len("vae."):-len(suffix)] for k in authors["sd_vae_dec"]
                  if k.startswith("vae.") and k.endswith(suffix)]
  # Every LoRA'd module of the authors' file but the four skip convs, in the file's (PyTorch) order; the reader
  # accepts exactly these as the targets' LoRA'd modules.
  assert list(layers.values()) == [m for m in lora_modules if "skip_conv" not in m]
  assert len(layers) == len(lora_modules) - 4 == 70
  assert layers[("encoder", "mid_block", "attentions_0", "proj_attn")] == "encoder.mid_block.attentions.0.to_out.0"
  assert layers[("decoder", "up_blocks_0", "upsamplers_0", "conv")] == "decoder.up_blocks.0.upsamplers.0.conv"
  assert ("quant_conv",) not in layers and ("post_quant_conv",) not in layers
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), vae.params)
  assert scuf_export.vae_lora_layers(shapes) == layers
  with pytest.raises(errors.ConfigError, match="no kernel"):
    scuf_export.vae_lora_layers(vae.params, ["norm1"])
  legacy = [k.replace("to_out.0", "proj_attn").replace("to_q", "query") for k in authors["sd_vae_dec"]]
  legacy = [k[len("vae."):].replace(".base_layer", "") for k in legacy if k.startswith("vae.") and "lora_" not in k]
  assert scuf_export.vae_lora_layers(vae.params, vae_state_dict_keys=legacy) == layers
  message = _one_line_error(scuf_export.vae_lora_layers, vae.params,
                            vae_state_dict_keys=[k for k in legacy if not k.startswith("decoder.conv_out.")])
  assert "'decoder.conv_out.weight'" in message


# ---------------------------------------------------------------------------------------- (a), (b)


def test_round_trip_of_the_authors_file_loads_the_same(exported, folder, authors_merged):
  _, merged = convert_scuf.load_scuf(exported, folder)
  for key in MERGED:
    assert _max_diff(merged[key], authors_merged[key]) <= 1e-6, key


def test_exported_file_has_the_authors_layout(exported, authors, gefu_tiny):
  import torch  # pylint: disable=g-import-not-at-top  # after diffusers (see sd_compat's module doc)

  loaded = torch.load(exported, weights_only=True)
  keys = json.loads((gefu_tiny / "scuf_tiny_model_keys.json").read_text())
  assert list(loaded) == list(authors) == keys["top_level_keys"]
  assert loaded["rank_vae"] == 4 and loaded["vae_lora_target_modules"] == list(scuf_export.AUTHORS_VAE_TARGETS)
  for name in ("sd_vae_enc", "sd_vae_dec", "sd_vae_ref", "image_proj", "ca_adapter"):
    # Same keys in the same order with the same shapes (the fixture's key listing and the file itself).
    assert [(k, list(v.shape)) for k, v in loaded[name].items()] == [(k, list(s)) for k, s in keys[name]], name
    assert all(v.dtype == torch.float32 for v in loaded[name].values()), name
  assert set(loaded["sd_vae_dec"]) == set(authors["sd_vae_dec"])
  # The values round-trip exactly, but for the reflectance encoder's LoRA, which is written as zeros.
  for name in ("sd_vae_enc", "sd_vae_dec", "image_proj", "ca_adapter"):
    for key, value in authors[name].items():
      np.testing.assert_array_equal(loaded[name][key].numpy(), value, err_msg=f"{name}[{key}]")
  for key, value in authors["sd_vae_ref"].items():
    got = loaded["sd_vae_ref"][key].numpy()
    if key.startswith("vae_ref.encoder.") and ".lora_" in key:
      assert not got.any(), key
    else:
      np.testing.assert_array_equal(got, value, err_msg=key)
  # sd_vae_enc and sd_vae_dec share their tensors; the three VAEs share the base weights.
  key = "encoder.conv_in.base_layer.weight"
  assert loaded["sd_vae_enc"]["vae." + key].data_ptr() == loaded["sd_vae_dec"]["vae." + key].data_ptr()
  assert loaded["sd_vae_ref"]["vae_ref." + key].data_ptr() == loaded["sd_vae_dec"]["vae_b2a." + key].data_ptr()


def test_folder_with_legacy_attention_names(tmp_path, folder, trained, exported):
  """A VAE saved with the pre-0.14 attention names (query/key/value/proj_attn, here a `.bin`) exports the same
  file: the authors' model (diffusers' PyTorch AutoencoderKL) renames them to to_q/to_k/to_v/to_out.0."""
  legacy = tmp_path / "sd_turbo_legacy"
  (legacy / "vae").mkdir(parents=True)
  (legacy / "unet").symlink_to(folder / "unet", target_is_directory=True)
  shutil.copy(folder / "vae" / "config.json", legacy / "vae" / "config.json")
  renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
  state_dict = {}
  for key, value in sd_turbo.read_state_dict(folder / "vae" / "diffusion_pytorch_model.safetensors").items():
    for new, old in renames.items():
      key = key.replace(new, old)
    state_dict[key] = value
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in state_dict
  torch_save.save(state_dict, legacy / "vae" / "diffusion_pytorch_model.bin")
  path = tmp_path / "test_model.pkl"
  scuf_export.export_checkpoint(path, trained, sd_turbo_folder=legacy)
  got, want = convert_io.load_checkpoint(path), convert_io.load_checkpoint(exported)
  for name in scuf_export.CHECKPOINT_KEYS[2:]:
    assert list(got[name]) == list(want[name]), name
    for key, value in want[name].items():
      np.testing.assert_array_equal(got[name][key], value, err_msg=f"{name}[{key}]")


def test_trainable_tree_layout(trained, authors, components):
  _, vae = components
  assert list(trained) == list(scuf_export.TRAINED_KEYS)
  layers = scuf_export.vae_lora_layers(vae.params)
  for direction, prefix in (("a2b", "vae."), ("b2a", "vae_b2a.")):
    flat = traverse_util.flatten_dict(trained[f"lora_{direction}"])
    assert set(flat) == {layer + (leaf,) for layer in layers for leaf in ("lora_a", "lora_b")}
    a = authors["sd_vae_dec"][prefix + "encoder.conv_in.lora_A.vae_skip.weight"]
    np.testing.assert_array_equal(flat[("encoder", "conv_in", "lora_a")], np.transpose(a, (2, 3, 1, 0)))
    skip = trained[f"skip_{direction}"]["skip_conv_2"]
    assert set(skip) == {"kernel", "lora_a", "lora_b"} and skip["lora_b"].shape == (4, 32)
  ref = traverse_util.flatten_dict(trained["lora_ref"])
  assert {path[0] for path in ref} == {"decoder"}
  assert len(ref) == 2 * sum(layer[0] == "decoder" for layer in layers)


# ---------------------------------------------------------------------------------------------- (c)


def _random_tree(rng, vae_params, like, *, rank=4, skip_kernels=True):
  layers = scuf_export.vae_lora_layers(vae_params)
  flat = traverse_util.flatten_dict(vae_params)

  def lora(only_decoder):
    tree = {}
    for layer in layers:
      if only_decoder and layer[0] != "decoder":
        continue
      kernel = flat[layer + ("kernel",)]
      tree[layer + ("lora_a",)] = rng.standard_normal(kernel.shape[:-1] + (rank,)).astype(np.float32)
      tree[layer + ("lora_b",)] = rng.standard_normal((rank, kernel.shape[-1])).astype(np.float32) * 0.1
    return traverse_util.unflatten_dict(tree)

  def skips(with_kernel):
    out = {}
    for name, (_, _, c_in, c_out) in convert_scuf.skip_conv_shapes(vae_params).items():
      out[name] = {"lora_a": rng.standard_normal((1, 1, c_in, rank)).astype(np.float32),
                   "lora_b": rng.standard_normal((rank, c_out)).astype(np.float32) * 0.1}
      if with_kernel:
        out[name]["kernel"] = rng.standard_normal((1, 1, c_in, c_out)).astype(np.float32)
    return out

  return {"lora_a2b": lora(False), "lora_b2a": lora(False), "lora_ref": lora(True), "skip_a2b": skips(True),
          "skip_b2a": skips(True), "skip_ref": skips(skip_kernels), "proj": like["proj"],
          "ca_adapter": like["ca_adapter"]}


@pytest.mark.parametrize("lora_alpha", [8, 12])
def test_random_tree_merges_as_merge_lora_tree(tmp_path, components, context, trained, folder, lora_alpha):
  _, vae = components
  rng = np.random.default_rng(lora_alpha)
  tree = _random_tree(rng, vae.params, trained, skip_kernels=False)
  ref_kernels = {name: np.full((1, 1, c_in, c_out), 1e-5, np.float32)
                 for name, (_, _, c_in, c_out) in convert_scuf.skip_conv_shapes(vae.params).items()}
  path = tmp_path / "random.pkl"
  scuf_export.export_checkpoint(path, tree, sd_turbo_folder=folder, lora_alpha=lora_alpha,
                                skip_ref_kernels=ref_kernels)
  scale = lora_alpha / 4
  # The authors' loader (and ours, with its default alpha 8) computes the run's alpha / r scale.
  _, merged = convert_scuf.load_scuf(path, folder)
  for direction in ("a2b", "b2a"):
    want = scuf.merge_lora_tree(vae.params, tree[f"lora_{direction}"], scale)
    assert _max_diff(merged[f"vae_{direction}"], want) <= _tolerance(want), direction
    for name, entry in tree[f"skip_{direction}"].items():
      want = {"k": scuf.merge_lora(entry["kernel"], entry["lora_a"], entry["lora_b"], scale)}
      assert _max_diff({"k": merged[f"skip_convs_{direction}"][name]["kernel"]}, want) <= _tolerance(want), name
  # ... and the export is inverted by trainable_from_checkpoint with the same alpha.
  back = scuf_export.trainable_from_checkpoint(path, lora_alpha=lora_alpha, **context)
  skip_ref = {name: {**entry, "kernel": ref_kernels[name]} for name, entry in tree["skip_ref"].items()}
  want = {**tree, "skip_ref": skip_ref}
  for key in scuf_export.TRAINED_KEYS:
    assert _max_diff(back[key], want[key]) <= _tolerance(want[key]), key
  if lora_alpha == 8:  # no rescale: bit-exact
    assert _max_diff(back["lora_a2b"], tree["lora_a2b"]) == 0


# ---------------------------------------------------------------------------------------------- (d)


def test_mismatched_trees_name_the_key(tmp_path, trained, folder):
  path = tmp_path / "bad.pkl"

  def export(tree, **kwargs):
    message = _one_line_error(scuf_export.export_checkpoint, path, tree, sd_turbo_folder=folder, **kwargs)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    return message

  missing = {**trained, "lora_b2a": jax.tree.map(lambda x: x, trained["lora_b2a"])}
  del missing["lora_b2a"]["decoder"]["up_blocks_1"]["resnets_0"]["conv2"]
  message = export(missing)
  assert "trained['lora_b2a']" in message and "decoder/up_blocks_1/resnets_0/conv2/lora_a" in message
  assert "decoder.up_blocks.1.resnets.0.conv2" in message

  wrong = jax.tree.map(lambda x: x, trained)
  wrong["lora_a2b"]["encoder"]["conv_in"]["lora_b"] = np.zeros((4, 17), np.float32)
  message = export(wrong)
  assert "trained['lora_a2b']: encoder/conv_in/lora_b has shape (4, 17), expected (4, 16)" in message

  extra = jax.tree.map(lambda x: x, trained)
  extra["lora_ref"]["encoder"] = {"conv_in": extra["lora_a2b"]["encoder"]["conv_in"]}
  assert "unexpected entry encoder/conv_in/lora_a" in export(extra)

  assert "rank 8" in export(trained, rank=8)
  assert "missing 'proj'" in export({k: v for k, v in trained.items() if k != "proj"})
  no_kernel = {**trained, "skip_ref": {k: {"lora_a": v["lora_a"], "lora_b": v["lora_b"]}
                                       for k, v in trained["skip_ref"].items()}}
  assert "skip_conv_1/kernel" in export(no_kernel)
  assert "both" in export(trained, skip_ref_kernels={"skip_conv_1": trained["skip_ref"]["skip_conv_1"]["kernel"]})
  ca = jax.tree.map(lambda x: x, trained["ca_adapter"])
  del ca["mid_block"]
  assert "missing mid_block/attentions_0/transformer_blocks_0/attn2/to_q_ca" in export({**trained, "ca_adapter": ca})
  proj = jax.tree.map(lambda x: x, trained["proj"])
  proj["norm"]["bias"] = np.zeros(7, np.float32)
  assert "trained['proj']" in export({**trained, "proj": proj})


def test_mismatched_files_name_the_key(authors, context):
  def read(ckpt, **kwargs):
    return _one_line_error(scuf_export.trainable_from_checkpoint, ckpt, **{**context, **kwargs})

  def without(name, key):
    return {**authors, name: {k: v for k, v in authors[name].items() if k != key}}

  key = "vae_ref.decoder.conv_out.lora_B.vae_skip.weight"
  assert "decoder.conv_out has no lora_B" in read(without("sd_vae_ref", key))
  key = "vae_b2a.decoder.mid_block.resnets.0.conv1.lora_A.vae_skip.weight"
  message = read({**without("sd_vae_dec", key), "sd_vae_enc": without("sd_vae_enc", key)["sd_vae_enc"]})
  assert "decoder.mid_block.resnets.0.conv1 has no lora_A" in message
  no_ref = {k: v for k, v in authors.items() if k != "sd_vae_ref"}
  assert "'sd_vae_ref'" in read(no_ref)
  partial = scuf_export.trainable_from_checkpoint(no_ref, allow_missing_ref=True, **context)
  assert list(partial) == [k for k in scuf_export.TRAINED_KEYS if k not in ("lora_ref", "skip_ref")]
  targets = [t for t in scuf_export.AUTHORS_VAE_TARGETS if t != "conv_shortcut"]
  assert "conv_shortcut has a LoRA but is not a LoRA target" in read(authors, targets=targets)
  # The trained tree does not carry the base weights: they must be the given VAE's.
  dec = dict(authors["sd_vae_dec"])
  dec["vae.decoder.conv_norm_out.weight"] = dec["vae.decoder.conv_norm_out.weight"] + 0.5
  enc = {**authors["sd_vae_enc"], "vae.decoder.conv_norm_out.weight": dec["vae.decoder.conv_norm_out.weight"]}
  message = read({**authors, "sd_vae_dec": dec, "sd_vae_enc": enc})
  assert "decoder/conv_norm_out/scale differs" in message
  scuf_export.trainable_from_checkpoint({**authors, "sd_vae_dec": dec, "sd_vae_enc": enc}, check_base=False,
                                        **context)
  bad = dict(authors["sd_vae_dec"])
  bad["vae.encoder.conv_in.lora_A.vae_skip.weight"] = np.zeros((4, 3, 3, 2), np.float32)
  message = read({**authors, "sd_vae_dec": bad, "sd_vae_enc": bad})
  assert "encoder.conv_in has LoRA shapes A (4, 3, 3, 2)" in message
  assert "not a SCUF/GEFU checkpoint" in read({"rank_vae": 4})
