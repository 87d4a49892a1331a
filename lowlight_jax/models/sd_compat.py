"""The one place that imports diffusers' / transformers' Flax models, with every version shim they need.

diffusers 0.39.0 and transformers 4.57.6 are the last releases with Flax Stable-Diffusion models
(`FlaxUNet2DConditionModel`, `FlaxAutoencoderKL`) and Flax CLIP (`FlaxCLIPTextModule`); they predate
jax 0.10. Everything else in lowlight_jax reaches them through `diffusers_flax()` / `transformers_flax()`
here, so the shims live in one file. Nothing is imported until one of those is called.

Shims (each applied once, on first use):
  * No torch, no TensorFlow. `import diffusers` runs `try: import torch` (utils/distributed_utils.py) and
    `import transformers` imports torch and TensorFlow whenever they are installed (utils/generic.py); our
    library must not. While this module imports them, `sys.modules['torch'|'tensorflow']` is set to None
    (the documented way to make an installed package unimportable; `importlib.util.find_spec` then says
    "not installed"), unless that package is already imported, and `USE_TF=0`. If diffusers or
    transformers were imported before this module first needs them, their cached availability answers are
    kept and only triton is hidden (`_import_hf`): hiding a package they believe present breaks their lazy
    imports. Side effect: in a process that imports diffusers/transformers through here FIRST, their PyTorch
    classes stay unavailable for the rest of the process. Parity tests therefore import diffusers,
    transformers and torch at module level (then both the PyTorch and the Flax classes work), and the test
    conftest sets `USE_TF=0` before anything imports them.
  * No hub access: `HF_HUB_OFFLINE=1` is set before huggingface_hub is imported (and its constant patched if
    it already was); loaders pass local paths and `local_files_only=True`.
  * Quiet: diffusers logs a deprecation warning from every Flax module's `setup`; diffusers' and
    transformers' loggers are set to errors only.
  * `jax.tree_map` (removed from jax) is aliased to `jax.tree.map` if missing: diffusers'
    `FlaxModelMixin.to_bf16/to_fp16/to_fp32` call it.
  * `UNet2DConditionModel`: a subclass of diffusers' Flax UNet that computes as PyTorch's UNet2DConditionModel.
    While it runs it intercepts (`flax.linen.intercept_methods`) two kinds of layers below it; parameter names
    and shapes are unchanged, so PyTorch checkpoints load as into the plain Flax UNet:
      - GroupNorm. The Flax UNet hard-codes `GroupNorm(32, eps=1e-5)` and has no `norm_num_groups` /
        `norm_eps` fields. PyTorch uses `norm_num_groups` groups with `norm_eps` in the resnets and
        `conv_norm_out`, and eps 1e-6 in each Transformer2DModel's input norm. The subclass adds both fields.
        Without this a UNet with `norm_num_groups != 32` (the tiny SD-Turbo fixture uses 8) is simply wrong.
      - GEGLU. PyTorch gates with the exact (erf) GELU, diffusers' Flax GEGLU with flax's tanh approximation
        (1.7e-4 apart at the output of a 2-level tiny UNet).
      - Upsampling. PyTorch upsamples each up block to the size of the skip it joins (`upsample_size`, legacy
        nearest: src = floor(dst * in / out)) when the latent is not a multiple of 2**(number of upsamplers),
        e.g. the 6x9 latent of a 48x72 image; the Flax block always doubles and then fails to concatenate.
    Left as is: the sinusoidal timestep embedding. Flax and PyTorch round its frequencies differently
    (exp differs by an ulp); at t=999 with 320 channels the embeddings are ~6e-5 apart (1e-7 at 32
    channels). No float32 formula matches PyTorch's exp bit for bit, so this is a floor of any port.
  * `CLIPTextEncoder`: transformers' `FlaxCLIPTextModule` with `attention_mask` / `position_ids` optional
    (all ones / `arange`), as the PyTorch `CLIPTextModel` defaults them; SD pipelines pass neither.

Rematerialisation (`remat_blocks(policy)`): diffusers' Flax UNet and VAE have no gradient checkpointing. While the
context is active, the UNet's down / mid / up block classes and the VAE's encoder / decoder / mid block classes,
looked up by name when the models' `setup` runs, are `flax.linen.remat` versions of themselves (same parameter
names; `jax.checkpoint` per block with the given policy), so a backward pass keeps only block inputs and
recomputes each block's internals when it reaches it. With `vae_layers=True` the VAE's resnet, attention and
resampling layers are rematerialised one by one instead (`policy.ordered_remat`: also each layer's parameter
cotangents before its input cotangent). Use it around `apply` of a model being differentiated through (setup
runs inside apply); nesting is fine.

Not shimmed (not on the loading path; whoever needs it adds the shim here): `FlaxDDPMScheduler.step`
(`jnp.clip(a_min=)`, rejected by current jax).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import types
from collections.abc import Iterator

_HIDDEN_WHILE_IMPORTING = ("torch", "tensorflow", "triton")


# What `_hidden()` hides: decided once by `_import_hf()`, from the state diffusers / transformers were first
# imported in, so that the libraries' cached "is torch / TensorFlow available" answers stay true afterwards.
_hide: tuple[str, ...] = _HIDDEN_WHILE_IMPORTING


@contextlib.contextmanager
def _hidden() -> Iterator[None]:
  """Makes the not-yet-imported packages among the hidden names unimportable for the duration of the block."""
  hidden = [name for name in _hide if name not in sys.modules]
  for name in hidden:
    sys.modules[name] = None  # type: ignore[assignment]  # `import name` -> ModuleNotFoundError
  try:
    yield
  finally:
    for name in hidden:
      if name in sys.modules and sys.modules[name] is None:
        del sys.modules[name]


def _offline() -> None:
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
  hub_constants = sys.modules.get("huggingface_hub.constants")
  if hub_constants is not None:
    hub_constants.HF_HUB_OFFLINE = True
  transformers_hub = sys.modules.get("transformers.utils.hub")
  if transformers_hub is not None and hasattr(transformers_hub, "_is_offline_mode"):
    transformers_hub._is_offline_mode = True


@functools.cache
def _import_hf() -> None:
  """Imports diffusers' and transformers' availability checks once, together, in one consistent state.

  Both libraries decide at import whether torch / TensorFlow exist and cache the answer; a later import of one of
  their modules that disagrees with it fails (diffusers' torch modules importing transformers classes it thinks
  have no backend; transformers importing TensorFlow while it is hidden). So:
    * neither library imported yet (the library's own use): import both with torch, TensorFlow and triton
      hidden and `USE_TF=0`, and keep hiding them on every later import here;
    * already imported by the caller (e.g. a parity test that imported their PyTorch classes first): keep
      their answers and hide only triton (never needed here; with TensorFlow loaded, importing it crashes the
      process: tensorflow-cpu 2.21 with the CUDA build of torch 2.14).
  """
  global _hide
  if "diffusers" in sys.modules or "transformers" in sys.modules:
    _hide = ("triton",)
  else:
    os.environ["USE_TF"] = "0"  # transformers' and diffusers' own switch; their TF models are never used here
    _hide = _HIDDEN_WHILE_IMPORTING
  with _hidden():
    import diffusers.utils.import_utils  # noqa: F401  pylint: disable=unused-import
    import transformers.utils.import_utils  # noqa: F401  pylint: disable=unused-import


def _jax_aliases() -> None:
  import jax
  if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map  # type: ignore[attr-defined]


def _group_norm(x, scale, bias, num_groups: int, epsilon: float, dtype):
  """PyTorch `GroupNorm` on channels-last `x`: statistics over (spatial..., channels in the group), float32."""
  import jax
  import jax.numpy as jnp
  channels = x.shape[-1]
  if channels % num_groups:
    raise ValueError(f"GroupNorm: {channels} channels are not divisible into {num_groups} groups")
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  grouped = x32.reshape(x.shape[:-1] + (num_groups, channels // num_groups))
  axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
  mean = grouped.mean(axis=axes, keepdims=True)
  var = jnp.square(grouped - mean).mean(axis=axes, keepdims=True)
  y = ((grouped - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape)
  y = y * scale + bias
  return y.astype(dtype)


def _nearest_indices(size_in: int, size_out: int):
  """PyTorch's legacy `interpolate(mode="nearest", size=...)` source indices: floor(dst * in / out) in float32."""
  import numpy as np
  scale = np.float32(size_in) / np.float32(size_out)
  return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64), size_in - 1)


def _torch_unet_semantics(classes, num_groups, norm_eps, skip_sizes, next_fun, args, kwargs, context):
  """`flax.linen.intercept_methods` interceptor: computes Flax UNet layers as the PyTorch UNet does.

  `classes` = (flax GroupNorm, FlaxTransformer2DModel, FlaxGEGLU, FlaxDownsample2D, FlaxUpsample2D); anything
  else runs unchanged. `skip_sizes` is a fresh list per UNet call: the downsamplers push their input sizes,
  the upsamplers pop them as PyTorch's `upsample_size`.
  """
  import jax
  import jax.numpy as jnp
  group_norm_cls, transformer_cls, geglu_cls, downsample_cls, upsample_cls = classes
  module = context.module
  if context.method_name != "__call__" or not isinstance(
      module, (group_norm_cls, geglu_cls, downsample_cls, upsample_cls)):
    return next_fun(*args, **kwargs)
  if isinstance(module, group_norm_cls):
    (x,) = args
    # Transformer2DModel's input norm has eps 1e-6 in PyTorch; the resnets and conv_norm_out use norm_eps.
    epsilon = 1e-6 if isinstance(module.parent, transformer_cls) else norm_eps
    channels = x.shape[-1]
    scale = module.param("scale", module.scale_init, (channels,), module.param_dtype)
    bias = module.param("bias", module.bias_init, (channels,), module.param_dtype)
    dtype = module.dtype or jnp.result_type(x, scale, bias)
    return _group_norm(x, scale, bias, num_groups, epsilon, dtype)
  if isinstance(module, geglu_cls):
    # PyTorch's GEGLU gates with the exact (erf) GELU; diffusers' Flax one uses flax's default tanh approximation.
    hidden_states = args[0] if args else kwargs.pop("hidden_states")
    deterministic = args[1] if len(args) > 1 else kwargs.get("deterministic", True)
    hidden_linear, hidden_gelu = jnp.split(module.proj(hidden_states), 2, axis=-1)
    return module.dropout_layer(hidden_linear * jax.nn.gelu(hidden_gelu, approximate=False),
                                deterministic=deterministic)
  hidden_states = args[0] if args else kwargs["hidden_states"]
  height, width = hidden_states.shape[1:3]
  if isinstance(module, downsample_cls):
    skip_sizes.append((height, width))
    return next_fun(*args, **kwargs)
  # Upsample: PyTorch upsamples to the size of the skip it is concatenated with (`upsample_size`) when the
  # latent is not a multiple of 2**(number of upsamplers); the Flax block always doubles.
  target = skip_sizes.pop() if skip_sizes else (2 * height, 2 * width)
  if target == (2 * height, 2 * width):
    return next_fun(*args, **kwargs)
  hidden_states = jnp.take(hidden_states, _nearest_indices(height, target[0]), axis=1)
  hidden_states = jnp.take(hidden_states, _nearest_indices(width, target[1]), axis=2)
  return module.conv(hidden_states)


# Block classes `remat_blocks` wraps, by module: the names the UNet's / VAE's `setup` look up.
_REMAT_BLOCKS = {
    "diffusers.models.unets.unet_2d_condition_flax": (
        "FlaxCrossAttnDownBlock2D", "FlaxDownBlock2D", "FlaxUNetMidBlock2DCrossAttn", "FlaxCrossAttnUpBlock2D",
        "FlaxUpBlock2D"),
    "diffusers.models.vae_flax": ("FlaxDownEncoderBlock2D", "FlaxUpDecoderBlock2D", "FlaxUNetMidBlock2D"),
}


# With `vae_layers`: the VAE's layers, each rematerialised on its own with its backward pass ordered
# (`policy.ordered_remat`), instead of its blocks.
_VAE_MODULE = "diffusers.models.vae_flax"
_VAE_LAYERS = ("FlaxResnetBlock2D", "FlaxAttentionBlock", "FlaxUpsample2D", "FlaxDownsample2D")


@functools.cache
def _remat_classes(policy, vae_layers: bool = False) -> dict[tuple[str, str], type]:
  import flax.linen as nn
  from lowlight_jax.models import policy as policy_lib  # pylint: disable=g-import-not-at-top
  out = {}
  for module_name, names in _REMAT_BLOCKS.items():
    if vae_layers and module_name == _VAE_MODULE:
      names, wrap = _VAE_LAYERS, policy_lib.ordered_remat
    else:
      wrap = lambda cls, policy: nn.remat(policy_lib.params_after_input(cls), policy=policy)
    module = sys.modules[module_name]
    for name in names:
      cls = getattr(module, name)
      out[(module_name, name)] = (cls, wrap(cls, policy))
  return out


@contextlib.contextmanager
def remat_blocks(policy, *, vae_layers: bool = False) -> Iterator[None]:
  """While active, diffusers' Flax UNet / VAE blocks are built rematerialised with `policy` (a
  `jax.checkpoint_policies` member; None: no-op). See the module doc. vae_layers: the VAE's resnet / attention /
  resampling layers instead of its blocks, each with its backward pass ordered (`policy.ordered_remat`): at
  512x512 the SD VAE's 4.7 GB plan per image (encode + decode, gradients to its conv kernels; XLA CPU) becomes
  2.7 GB."""
  if policy is None:
    yield
    return
  diffusers_flax()
  classes = _remat_classes(policy, vae_layers)
  saved = []
  try:
    for (module_name, name), (cls, remat_cls) in classes.items():
      module = sys.modules[module_name]
      saved.append((module, name, getattr(module, name)))
      setattr(module, name, remat_cls)
    yield
  finally:
    for module, name, value in reversed(saved):
      setattr(module, name, value)


@functools.cache
def diffusers_flax() -> types.SimpleNamespace:
  """diffusers' Flax pieces, shimmed: `UNet2DConditionModel` (subclass, see the module doc),
  `AutoencoderKL` (= `FlaxAutoencoderKL`), `FlaxUNet2DConditionModel` (unpatched), `Transformer2DModel`,
  `BasicTransformerBlock` and `Attention` (its attn1 / attn2; for interceptors such as models.scuf's cycle
  attention), and the PyTorch->Flax helpers `rename_key`, `rename_key_and_reshape_tensor`,
  `convert_pytorch_state_dict_to_flax` (the last one random-initialises; use the first two)."""
  _offline()
  _jax_aliases()
  _import_hf()
  with _hidden():
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()  # before the Flax modules: some warn at import
    from diffusers.models import modeling_flax_pytorch_utils as pt_utils
    from diffusers.models.attention_flax import (FlaxAttention, FlaxBasicTransformerBlock, FlaxGEGLU,
                                                 FlaxTransformer2DModel)
    from diffusers.models.resnet_flax import FlaxDownsample2D, FlaxUpsample2D
    from diffusers.models.unets.unet_2d_condition_flax import FlaxUNet2DConditionModel
    from diffusers.models.vae_flax import FlaxAutoencoderKL, FlaxDiagonalGaussianDistribution
    from diffusers.configuration_utils import flax_register_to_config

  import flax.linen as nn

  @flax_register_to_config
  class UNet2DConditionModel(FlaxUNet2DConditionModel):
    """`FlaxUNet2DConditionModel` computing as PyTorch's UNet2DConditionModel (see the module doc)."""

    norm_num_groups: int = 32
    norm_eps: float = 1e-5

    def __call__(self, *args, **kwargs):
      # A plain function, not a method: flax wraps module methods, and a wrapped interceptor intercepts itself.
      interceptor = functools.partial(
          _torch_unet_semantics, (nn.GroupNorm, FlaxTransformer2DModel, FlaxGEGLU, FlaxDownsample2D, FlaxUpsample2D),
          self.norm_num_groups, self.norm_eps, [])
      with nn.intercept_methods(interceptor):
        return super().__call__(*args, **kwargs)

  UNet2DConditionModel.__module__ = __name__
  UNet2DConditionModel.__qualname__ = "UNet2DConditionModel"
  return types.SimpleNamespace(
      UNet2DConditionModel=UNet2DConditionModel,
      FlaxUNet2DConditionModel=FlaxUNet2DConditionModel,
      AutoencoderKL=FlaxAutoencoderKL,
      DiagonalGaussianDistribution=FlaxDiagonalGaussianDistribution,
      Transformer2DModel=FlaxTransformer2DModel,
      BasicTransformerBlock=FlaxBasicTransformerBlock,
      Attention=FlaxAttention,
      rename_key=pt_utils.rename_key,
      rename_key_and_reshape_tensor=pt_utils.rename_key_and_reshape_tensor,
      convert_pytorch_state_dict_to_flax=pt_utils.convert_pytorch_state_dict_to_flax,
  )


@functools.cache
def transformers_flax() -> types.SimpleNamespace:
  """transformers' pieces, shimmed: `CLIPTextConfig`, `CLIPTextEncoder` (see the module doc),
  `FlaxCLIPTextModule` (unpatched), `CLIPTokenizer` (slow, pure Python), `ACT2FN` (the activations Flax
  CLIP implements) and the PyTorch->Flax helper `rename_key_and_reshape_tensor`."""
  _offline()
  _jax_aliases()
  _import_hf()
  with _hidden():
    from transformers.utils import logging as transformers_logging
    transformers_logging.set_verbosity_error()
    from transformers import CLIPTextConfig, CLIPTokenizer
    from transformers import modeling_flax_pytorch_utils as pt_utils
    from transformers.modeling_flax_utils import ACT2FN
    from transformers.models.clip.modeling_flax_clip import FlaxCLIPTextModule
  _offline()  # transformers.utils.hub copied the offline flag at import

  import jax.numpy as jnp

  class CLIPTextEncoder(FlaxCLIPTextModule):
    """`FlaxCLIPTextModule` whose `attention_mask` / `position_ids` default as in PyTorch's CLIPTextModel."""

    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False, return_dict: bool = True):
      input_ids = jnp.asarray(input_ids)
      if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
      if position_ids is None:
        position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
      return super().__call__(input_ids, attention_mask, position_ids, deterministic=deterministic,
                              output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                              return_dict=return_dict)

  CLIPTextEncoder.__module__ = __name__
  CLIPTextEncoder.__qualname__ = "CLIPTextEncoder"
  return types.SimpleNamespace(
      CLIPTextConfig=CLIPTextConfig,
      CLIPTextEncoder=CLIPTextEncoder,
      FlaxCLIPTextModule=FlaxCLIPTextModule,
      CLIPTokenizer=CLIPTokenizer,
      ACT2FN=dict(ACT2FN),
      rename_key_and_reshape_tensor=pt_utils.rename_key_and_reshape_tensor,
  )
