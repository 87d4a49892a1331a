"""CycleGAN / CUT networks for DMGNIE stage 2: ResNet generator, PatchGAN discriminator, patch MLP.

Paper: "Daytime-Memory Guided Nighttime Image Enhancement" (DMGNIE; seed 000_f6de8f8b0015d52c),
"Preliminaries" and "Foreground Localization-guided Contrastive Learning": the enhancer is a
CycleGAN (Zhu et al., ICCV 2017) with G(night (+) Y_BG) -> day and F(day) -> night, and the
contrastive loss is PatchNCE-style (Park et al., "Contrastive Learning for Unpaired Image-to-Image
Translation", ECCV 2020). No public DMGNIE code exists; the layouts follow the reference
implementations junyanz/pytorch-CycleGAN-and-pix2pix and taesungp/contrastive-unpaired-translation
(CUT), `models/networks.py` (`ResnetGenerator`, `ResnetBlock`, `NLayerDiscriminator`,
`PatchSampleF`, `Normalize`).

Layouts (NHWC; submodules are named by their index in the torch `nn.Sequential` so that a
CycleGAN/CUT `netG`/`netD` state dict converts by the repo's naming rule, `convert.layout`):

- `ResnetGenerator` ("resnet_9blocks", the CycleGAN layout, i.e. CUT with `--no_antialias
  --no_antialias_up`): model.0 ReflectionPad(3), model.1 Conv7x7(ngf), 2 IN, 3 ReLU;
  model.4 Conv3x3/s2(2ngf), 5 IN, 6 ReLU; model.7 Conv3x3/s2(4ngf), 8 IN, 9 ReLU;
  model.10 .. model.{9+n_blocks} ResnetBlock(4ngf) (conv_block.0 ReflectionPad(1), .1 Conv3x3,
  .2 IN, .3 ReLU, .4 ReflectionPad(1), .5 Conv3x3, .6 IN; out = x + conv_block(x));
  u = 10 + n_blocks: model.u ConvTranspose3x3/s2(2ngf, padding 1, output_padding 1), u+1 IN,
  u+2 ReLU, model.{u+3} ConvTranspose(ngf), u+4 IN, u+5 ReLU, u+6 ReflectionPad(3),
  model.{u+7} Conv7x7(out), u+8 Tanh. All convs have biases (CycleGAN: use_bias when the norm is
  InstanceNorm). H and W must be multiples of 4.
- `NLayerDiscriminator` (PatchGAN, 70x70 receptive field for n_layers=3): model.0 Conv4x4/s2(ndf),
  1 LeakyReLU(0.2); for n in 1..n_layers-1: Conv4x4/s2(ndf*min(2^n, 8)), IN, LeakyReLU; then
  Conv4x4/s1(ndf*min(2^n_layers, 8)), IN, LeakyReLU; Conv4x4/s1(1). Zero padding 1 everywhere.
  For n_layers=3 the convs are model.0, .2, .5, .8, .11. Returns raw patch logits (B, h, w, 1).
- `PatchProjector` (CUT `PatchSampleF` with use_mlp): one MLP per layer, mlp_i.0 Linear(C_i, 256),
  ReLU, mlp_i.2 Linear(256, 256), then x / (||x||_2 + 1e-7).

Documented choices (the paper says "CycleGAN" and nothing more):
- Upsampling: transposed convolutions (`UPSAMPLE = 'transpose'`), the CycleGAN generator; CUT's
  default anti-aliased upsample/downsample (`Upsample` + conv, `Downsample` blur) is not used
  because DMGNIE is built "based on CycleGAN".
- Normalisation: InstanceNorm2d(affine=False, track_running_stats=False), eps 1e-5, biased
  variance: CycleGAN's and CUT's default `--norm instance`. No running statistics, so train and
  eval modes agree.
- Dropout: none (CycleGAN `--no_dropout` is the default for resnet generators).
- Init: conv / linear kernels ~ N(0, 0.02^2), biases 0 (`init_type='normal', init_gain=0.02`, the
  CycleGAN and CUT default).
- Value range: the API takes and returns images in [0, 1]; `scale_io=True` maps inputs to [-1, 1]
  (CycleGAN's `Normalize((0.5,) * 3, (0.5,) * 3)`, applied to BOTH the night image and Y_BG) and
  the tanh output back to [0, 1]. A torch `netG` therefore sees `2x - 1` where ours sees `x`.
- Encoder taps for the contrastive loss: `encode(x, layers)` returns the output of the torch
  Sequential entries with those indices (CUT's `forward(input, layers, encode_only=True)`).
  `NCE_LAYERS = (0, 4, 8, 12, 16)` is CUT's default `--nce_layers`. In OUR (non-anti-aliased)
  layout these are: 0 the input (H, in_channels), 4 the first stride-2 conv output before its
  norm (H/2, 2ngf), 8 the second downsample's instance-norm output (H/4, 4ngf), 12 and 16 the
  outputs of resnet blocks 3 and 7 (H/4, 4ngf). (In CUT's anti-aliased default the same indices
  are padded input, H; stride-1 conv, H; stride-1 conv, H/2; block 1, H/4; block 5, H/4.) The
  paper's best setting "S5: (256, 128, 64, 32, 32)" has four distinct resolutions, which a
  two-downsample ResNet generator cannot produce at any input size; we keep CUT's five indices.
  Port note: index 0 returns the UN-padded input (CUT returns the reflection-padded input,
  6 px larger), so that every tap stays aligned with the foreground map; likewise any
  ReflectionPad index returns its input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.convert import layout

NGF = 64  # CycleGAN/CUT --ngf
NDF = 64  # --ndf
N_BLOCKS = 9  # resnet_9blocks, the CycleGAN/CUT default netG
N_LAYERS_D = 3  # "basic" PatchGAN: 70x70 receptive field
LEAKY_SLOPE = 0.2  # NLayerDiscriminator LeakyReLU
IN_EPS = 1e-5  # torch InstanceNorm2d default
INIT_STD = 0.02  # init_type='normal', init_gain=0.02
NCE_LAYERS = (0, 4, 8, 12, 16)  # CUT --nce_layers
PROJ_FEATURES = 256  # CUT PatchSampleF nc (--netF_nc)
L2_EPS = 1e-7  # CUT Normalize: x / (norm + 1e-7)
UPSAMPLE = "transpose"

_KERNEL_INIT = nn.initializers.normal(INIT_STD)


def instance_norm(x: jax.Array, eps: float = IN_EPS) -> jax.Array:
  """torch `InstanceNorm2d(affine=False)`: per image and channel over H, W; biased variance."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=(-3, -2), keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=(-3, -2), keepdims=True)
  return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = L2_EPS) -> jax.Array:
  """CUT `Normalize(2)`: x / (||x||_2 + eps) along `axis`."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True))
  return (x / (norm + eps)).astype(x.dtype)


def _reflect_pad(x: jax.Array, p: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


def _conv(features: int, k: int, stride: int, pad: int, name: str, dtype: Any, precision: Any
          ) -> nn.Conv:
  return nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=True, kernel_init=_KERNEL_INIT, bias_init=nn.initializers.zeros,
                 dtype=dtype, precision=precision, name=name)


def _conv_transpose(features: int, name: str, dtype: Any, precision: Any) -> nn.ConvTranspose:
  """torch `ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)`: output 2H.

  transpose_kernel=True takes the torch weight (in, out, kh, kw) as (kh, kw, out, in) (the naming
  rule's conv permutation) and flips it; torch's padding p / output_padding op become
  (k - 1 - p, k - 1 - p + op) = (1, 2) on the stride-dilated input.
  """
  return nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                          transpose_kernel=True, kernel_init=_KERNEL_INIT,
                          bias_init=nn.initializers.zeros, dtype=dtype, precision=precision,
                          name=name)


def generator_plan(n_blocks: int, ngf: int, out_channels: int) -> list[tuple[int, str, Any]]:
  """[(torch Sequential index, kind, width or pad)] of `ResnetGenerator`'s `model`."""
  plan: list[tuple[int, str, Any]] = [(0, "pad", 3), (1, "conv7", ngf), (2, "norm", None),
                                      (3, "relu", None)]
  for i in range(2):
    plan += [(len(plan), "down", ngf * 2 ** (i + 1)), (len(plan) + 1, "norm", None),
             (len(plan) + 2, "relu", None)]
  for _ in range(n_blocks):
    plan.append((len(plan), "block", ngf * 4))
  for i in range(2):
    plan += [(len(plan), "up", ngf * 2 ** (1 - i)), (len(plan) + 1, "norm", None),
             (len(plan) + 2, "relu", None)]
  plan += [(len(plan), "pad", 3), (len(plan) + 1, "conv7", out_channels),
           (len(plan) + 2, "tanh", None)]
  return plan


def discriminator_plan(n_layers: int, ndf: int) -> list[tuple[int, str, Any]]:
  """[(torch Sequential index, kind, (width, stride) or None)] of the discriminator's `model`."""
  plan: list[tuple[int, str, Any]] = [(0, "conv", (ndf, 2)), (1, "lrelu", None)]
  mult = 1
  for n in range(1, n_layers + 1):
    mult = min(2 ** n, 8)
    stride = 2 if n < n_layers else 1
    plan += [(len(plan), "conv", (ndf * mult, stride)), (len(plan) + 1, "norm", None),
             (len(plan) + 2, "lrelu", None)]
  plan.append((len(plan), "conv", (1, 1)))
  return plan


class _ResnetConvBlock(nn.Module):
  """`ResnetBlock.conv_block` (reflect pad, conv, IN, ReLU, reflect pad, conv, IN)."""
  features: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _conv(self.features, 3, 1, 0, "1", self.dtype, self.precision)(_reflect_pad(x, 1))
    h = nn.relu(instance_norm(h))
    h = _conv(self.features, 3, 1, 0, "5", self.dtype, self.precision)(_reflect_pad(h, 1))
    return instance_norm(h)


class _ResnetBlock(nn.Module):
  features: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x + _ResnetConvBlock(self.features, self.dtype, self.precision, name="conv_block")(x)


class _GeneratorModel(nn.Module):
  """The torch `model` Sequential; returns (output, {index: feature})."""
  n_blocks: int
  ngf: int
  out_channels: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array, layers: Sequence[int], encode_only: bool
               ) -> tuple[jax.Array | None, dict[int, jax.Array]]:
    wanted = set(int(i) for i in layers)
    last = max(wanted) if wanted else -1
    feats: dict[int, jax.Array] = {}
    kw = dict(dtype=self.dtype, precision=self.precision)
    for idx, kind, arg in generator_plan(self.n_blocks, self.ngf, self.out_channels):
      name = str(idx)
      if kind == "pad":
        if idx in wanted:
          feats[idx] = x  # Port note: the un-padded input (see the module docstring).
        x = _reflect_pad(x, arg)
        if encode_only and idx == last:
          return None, feats
        continue
      if kind == "conv7":
        x = _conv(arg, 7, 1, 0, name, **kw)(x)
      elif kind == "down":
        x = _conv(arg, 3, 2, 1, name, **kw)(x)
      elif kind == "block":
        x = _ResnetBlock(arg, name=name, **kw)(x)
      elif kind == "up":
        x = _conv_transpose(arg, name, **kw)(x)
      elif kind == "norm":
        x = instance_norm(x)
      elif kind == "relu":
        x = nn.relu(x)
      elif kind == "tanh":
        x = jnp.tanh(x)
      if idx in wanted:
        feats[idx] = x
      if encode_only and idx == last:
        return None, feats
    return x, feats


class ResnetGenerator(nn.Module):
  """CycleGAN/CUT `ResnetGenerator` (resnet_9blocks, instance norm, transposed-conv upsampling).

  Attributes:
    in_channels: input channels: 6 for DMGNIE's G (night (+) Y_BG, night first), 3 for F. Only
      checked (the first conv infers its input width).
    out_channels: 3.
    ngf: base width (64, CycleGAN/CUT default).
    n_blocks: residual blocks at H/4 (9, resnet_9blocks).
    scale_io: map [0, 1] inputs to [-1, 1] and the tanh output back to [0, 1] (CycleGAN trains
      on [-1, 1] images); False feeds / returns the raw [-1, 1] tensors.
    dtype: compute dtype (norms are computed in float32).
    precision: conv precision (`jax.lax.Precision.HIGHEST` for parity on accelerators).
  """
  in_channels: int = 6
  out_channels: int = 3
  ngf: int = NGF
  n_blocks: int = N_BLOCKS
  scale_io: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    self.model = _GeneratorModel(self.n_blocks, self.ngf, self.out_channels, self.dtype,
                                 self.precision)

  def _prepare(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"expected (B, H, W, {self.in_channels}) input, got {x.shape}")
    if x.shape[1] % 4 or x.shape[2] % 4:
      raise ValueError(f"H and W must be multiples of 4, got {x.shape[1:3]}")
    return 2.0 * x - 1.0 if self.scale_io else x

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, in_channels) in [0, 1] (scale_io) -> (B, H, W, out_channels) in [0, 1]."""
    y, _ = self.model(self._prepare(x), (), False)
    return (y + 1.0) * 0.5 if self.scale_io else y

  def encode(self, x: jax.Array, layers: Sequence[int] = NCE_LAYERS) -> list[jax.Array]:
    """Features at the torch Sequential indices `layers` (CUT `encode_only=True`), in that order.

    Only the layers up to max(layers) are run. Index 0 (or any pad) yields the un-padded input
    (after the [-1, 1] mapping when `scale_io`).
    """
    _, feats = self.model(self._prepare(x), tuple(layers), True)
    return [feats[int(i)] for i in layers]

  def forward_with_features(self, x: jax.Array, layers: Sequence[int] = NCE_LAYERS
                            ) -> tuple[jax.Array, list[jax.Array]]:
    """(output in [0, 1], features at `layers`) from one pass (CUT `forward(x, layers)`)."""
    y, feats = self.model(self._prepare(x), tuple(layers), False)
    y = (y + 1.0) * 0.5 if self.scale_io else y
    return y, [feats[int(i)] for i in layers]


class _DiscriminatorModel(nn.Module):
  ndf: int
  n_layers: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for idx, kind, arg in discriminator_plan(self.n_layers, self.ndf):
      if kind == "conv":
        width, stride = arg
        x = _conv(width, 4, stride, 1, str(idx), self.dtype, self.precision)(x)
      elif kind == "norm":
        x = instance_norm(x)
      else:
        x = nn.leaky_relu(x, LEAKY_SLOPE)
    return x


class NLayerDiscriminator(nn.Module):
  """CycleGAN/CUT PatchGAN `NLayerDiscriminator` (instance norm, no sigmoid).

  Attributes:
    ndf: base width (64).
    n_layers: stride-2 conv layers (3: the 70x70 PatchGAN).
    scale_input: map [0, 1] images to [-1, 1] first (as the generator's outputs / data are).
    dtype, precision: as `ResnetGenerator`.
  """
  ndf: int = NDF
  n_layers: int = N_LAYERS_D
  scale_input: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, C) -> patch logits (B, h, w, 1) (raw; the GAN loss applies the sigmoid)."""
    if self.scale_input:
      x = 2.0 * x - 1.0
    return _DiscriminatorModel(self.ndf, self.n_layers, self.dtype, self.precision,
                               name="model")(x)


class _MLP(nn.Module):
  """CUT `mlp_i`: Linear(C, nc) -> ReLU -> Linear(nc, nc) (torch indices 0 and 2)."""
  features: int
  dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(kernel_init=_KERNEL_INIT, bias_init=nn.initializers.zeros, dtype=self.dtype,
              precision=self.precision)
    x = nn.relu(nn.Dense(self.features, name="0", **kw)(x))
    return nn.Dense(self.features, name="2", **kw)(x)


class PatchProjector(nn.Module):
  """CUT `PatchSampleF(use_mlp=True)` without the sampling: one MLP per encoder layer + L2 norm.

  Each MLP acts on the last axis, so it projects dense maps (B, h, w, C) or gathered patches
  (B, S, C) alike; sampling lives in `losses.flgcl`. The input width of each MLP is inferred at
  init from that layer's features (CUT creates them lazily on the first batch).

  Attributes:
    num_layers: number of encoder taps (len(NCE_LAYERS) = 5).
    features: projection width (256, CUT --netF_nc).
    dtype, precision: as `ResnetGenerator`.
  """
  num_layers: int = len(NCE_LAYERS)
  features: int = PROJ_FEATURES
  dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    for i in range(self.num_layers):
      setattr(self, f"mlp_{i}", _MLP(self.features, self.dtype, self.precision))

  def project(self, x: jax.Array, layer: int) -> jax.Array:
    """L2-normalised projection of layer `layer`'s vectors (..., C) -> (..., features)."""
    return l2_normalize(getattr(self, f"mlp_{layer}")(x))

  def __call__(self, feats: Sequence[jax.Array]) -> list[jax.Array]:
    if len(feats) != self.num_layers:
      raise ValueError(f"expected {self.num_layers} feature maps, got {len(feats)}")
    return [self.project(f, i) for i, f in enumerate(feats)]


# ----------------------------------------------------------------------------- torch conversion


def _strip_module(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Drops a DataParallel `module.` prefix and non-parameter entries."""
  out = {}
  for k, v in state_dict.items():
    k = k[len("module."):] if k.startswith("module.") else k
    out[k] = np.asarray(v)
  return out


def _check_keys(got: Sequence[str], expected: Sequence[str], what: str) -> None:
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  if missing or unexpected:
    raise ValueError(
        f"{what} state dict does not match: missing {missing}, unexpected {unexpected}")


def generator_torch_keys(n_blocks: int) -> list[str]:
  """The parameter keys of a torch CycleGAN/CUT `ResnetGenerator` (no_antialias layout)."""
  keys = []
  for idx, kind, _ in generator_plan(n_blocks, 1, 1):
    if kind in ("conv7", "down", "up"):
      keys += [f"model.{idx}.weight", f"model.{idx}.bias"]
    elif kind == "block":
      keys += [f"model.{idx}.conv_block.{j}.{leaf}" for j in (1, 5) for leaf in ("weight", "bias")]
  return keys


def params_from_torch_state(state_dict: Mapping[str, Any], n_blocks: int = N_BLOCKS) -> dict:
  """A torch `ResnetGenerator.state_dict()` (numpy arrays) -> `ResnetGenerator` params.

  Pure naming rule (`convert.layout.torch_to_flax`): conv OIHW -> HWIO; ConvTranspose
  (in, out, kh, kw) -> (kh, kw, out, in), the layout of `nn.ConvTranspose(transpose_kernel=True)`.
  Returns the `params` collection, wrapped as the module expects ({'model': {...}}); apply with
  `ResnetGenerator(...).apply({'params': params}, x)`.

  Raises:
    ValueError: if the keys are not exactly those of an n_blocks generator.
  """
  sd = _strip_module(state_dict)
  _check_keys(list(sd), generator_torch_keys(n_blocks), "ResnetGenerator")
  return layout.torch_to_flax(sd)["params"]


def discriminator_torch_keys(n_layers: int = N_LAYERS_D) -> list[str]:
  """The parameter keys of a torch CycleGAN/CUT `NLayerDiscriminator` (no_antialias layout)."""
  return [f"model.{idx}.{leaf}" for idx, kind, _ in discriminator_plan(n_layers, 1)
          if kind == "conv" for leaf in ("weight", "bias")]


def discriminator_params_from_torch_state(state_dict: Mapping[str, Any],
                                          n_layers: int = N_LAYERS_D) -> dict:
  """A torch `NLayerDiscriminator.state_dict()` -> `NLayerDiscriminator` params (naming rule)."""
  sd = _strip_module(state_dict)
  _check_keys(list(sd), discriminator_torch_keys(n_layers), "NLayerDiscriminator")
  return layout.torch_to_flax(sd)["params"]
