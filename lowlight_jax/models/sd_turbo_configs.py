"""The `stabilityai/sd-turbo` component configs as constants, and the Flax modules built from any such config.

`UNET_CONFIG`, `VAE_CONFIG` and `TEXT_ENCODER_CONFIG` are the real sd-turbo `unet/config.json`,
`vae/config.json` and `text_encoder/config.json` (an SD-2.1-base UNet, the SD VAE, the OpenCLIP ViT-H/14 text
tower), in the form `convert.sd_turbo`'s loaders read. With them the modules and the shapes of their params
exist without any weight file: `abstract_modules()` gives each module with its params as `jax.ShapeDtypeStruct`s
(`jax.eval_shape`, nothing is allocated), for memory benchmarks and sharding plans. The parameter counts
(`PARAM_COUNTS`) are those of the PyTorch checkpoints.

`build_module(kind, config)` is the module construction of `convert.sd_turbo.load_unet` / `load_vae` /
`load_text_encoder` (`sd_turbo.config_spec`: the same config validation, module class, keyword arguments and
abstract init), without reading weights; `convert.sd_family` uses it for its tiny random family.
tests/convert/test_sd_family.py checks that it builds what the loaders build.

Fields that only PyTorch uses are kept as sd-turbo has them (the loaders check them against what Flax
implements). Two of them are not certain from the published files this was written from and change nothing in
Flax: `upcast_attention` (False; the SD-2.1-768 UNet has True, Flax attention never upcasts) and the VAE's
`sample_size` (512, the resolution sd-turbo was distilled at; the 768 of SD 2.1's VAE config is the other
candidate). Neither changes a parameter shape.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.convert import sd_turbo

KINDS = ("unet", "vae", "text_encoder")

UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.24.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": [5, 10, 20, 20],  # SD-2 naming: the number of heads per block (64 channels each)
    "attention_type": "default",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 1024,
    "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dropout": 0.0,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None,
    "sample_size": 64,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}

VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.24.0.dev0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}

CONFIGS: dict[str, dict[str, Any]] = {"unet": UNET_CONFIG, "vae": VAE_CONFIG, "text_encoder": TEXT_ENCODER_CONFIG}

# Parameters of the PyTorch UNet2DConditionModel / AutoencoderKL / CLIPTextModel (buffers not counted).
PARAM_COUNTS = {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}


def configs() -> dict[str, dict[str, Any]]:
  """Deep copies of the three sd-turbo configs, keyed by component (`KINDS`)."""
  return copy.deepcopy(CONFIGS)


def build_module(kind: str, config: Mapping[str, Any], *, dtype=jnp.float32):
  """(Flax module, abstract float32 param tree) for `config`, built as convert.sd_turbo's loader for `kind` builds it.

  `kind` is 'unet', 'vae' or 'text_encoder'. This is `convert.sd_turbo.config_spec`, the loaders' own module
  construction (the config is validated by the same helpers: unknown keys and PyTorch-only values Flax does not
  implement raise ConfigError) on a deep copy of `config` (transformers' `CLIPTextConfig.from_dict` adds keys to
  the dict it is given). The abstract tree is `jax.eval_shape` of the loader's init: the exact target its
  conversion fills (float32, as `init` makes it; the loaders cast values to `dtype` afterwards).
  """
  if kind not in KINDS:
    raise ValueError(f"unknown component kind {kind!r} (expected one of {', '.join(KINDS)})")
  spec = sd_turbo.config_spec(kind, copy.deepcopy(dict(config)), dtype=dtype)
  return spec.module, spec.target


def _as_dtype(tree, dtype):
  """Floating leaves of an abstract tree in `dtype` (what the loaders' params are); others unchanged."""
  def cast(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      return jax.ShapeDtypeStruct(leaf.shape, jnp.dtype(dtype))
    return leaf
  return jax.tree.map(cast, tree)


def abstract_modules(dtype=jnp.float32, *, kinds: tuple[str, ...] = KINDS) -> dict[str, tuple[Any, Any]]:
  """{kind: (Flax module, abstract params)} of the real sd-turbo components; nothing is allocated.

  The modules compute in `dtype` and the abstract params are `jax.ShapeDtypeStruct`s in `dtype`, as
  `convert.sd_turbo.load_*(folder, dtype=dtype)` returns them. Tracing the UNet's init takes a few seconds.
  """
  out = {}
  for kind in kinds:
    module, abstract = build_module(kind, CONFIGS[kind], dtype=dtype)
    out[kind] = (module, _as_dtype(abstract, dtype))
  return out


def param_count(tree) -> int:
  """Number of scalar parameters in a (concrete or abstract) param tree."""
  return int(sum(int(np.prod(leaf.shape, dtype=np.int64)) for leaf in jax.tree.leaves(tree)))


def param_bytes(tree) -> int:
  """Bytes a (concrete or abstract) param tree takes."""
  return int(sum(int(np.prod(leaf.shape, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
                 for leaf in jax.tree.leaves(tree)))
