"""HRNetV2 semantic segmentation network: SKF's frozen semantic knowledge bank.

Papers: Wu et al., "Learning Semantic-Aware Knowledge Guidance for Low-Light Image Enhancement"
(SKF), CVPR 2023, which uses the segmentation network of Wang et al., "Deep High-Resolution
Representation Learning for Visual Recognition" (HRNetV2), TPAMI 2020.
Reference code: langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement
`DRBN_SKF/src/hrseg/hrseg_lib/models/seg_hrnet.py` (`HighResolutionNet`, `HighResolutionModule`,
`BasicBlock`, `Bottleneck`), built by `hrseg_model.py::create_hrnet` from
`hrseg_lib/pascal_ctx/seg_hrnet_w48_cls59_480x480_sgd_lr4e-3_wd1e-4_bs_16_epoch200.yaml` with the
defaults of `hrseg_lib/config/default.py` (the same files ship in LLFlow_SKF and SNR_SKF).

As configured for SKF (HRNet-W48, PASCAL-Context, 59 classes; 65,888,219 parameters):
- Stem: two 3x3 stride-2 convs (padding 1, so sizes round UP: h0 = ceil(ceil(H/2)/2)) + BN + ReLU;
  stage 1 = 4 Bottlenecks (64 -> 256 channels).
- Stages 2-4: 1, 4 and 3 HighResolutionModules of 2, 3 and 4 branches (48/96/192/384 channels at
  strides 4/8/16/32), 4 BasicBlocks per branch. A transition before each stage: 3x3 conv + BN + ReLU
  where a branch's width changes; a new branch is a 3x3 stride-2 conv + BN + ReLU of the LAST
  previous branch.
- Fuse layers: for output branch i and input branch j, j > i: 1x1 conv + BN, then bilinear
  upsampling to branch i's size; j < i: (i - j) 3x3 stride-2 convs + BN with ReLU after all but
  the last; the inputs are summed in order j = 0, 1, ... and the sum goes through a ReLU.
- Head (`last_layer`): cat[x0, up(x1), up(x2), up(x3)] (720 channels) -> 1x1 conv (bias) -> BN ->
  ReLU -> 1x1 conv (bias) to the classes, at stride 4.
- Every bilinear resize uses align_corners=True: `config.MODEL.ALIGN_CORNERS` is True by default and
  the yaml does not set it (with False the fixture's logits move by up to 2.25).
- The logits are upsampled x4 to (4 h0, 4 w0) -- NOT to the input size: for inputs not divisible
  by 4 the maps are larger than the input -- and THEN soft-maxed over the classes.
- No input normalisation: SKF feeds its [0, 1] (or unclamped) images straight in.
- BatchNorm in inference mode only (running statistics, eps 1e-5): the network is a frozen tower.

Outputs (`HRNet.__call__`, NHWC):
  `probs`: (N, 4 h0, 4 w0, classes) float32, softmax of `logits` over the last axis (the authors'
    `map`; SKF's semantic map for the SCH and SA losses).
  `logits`: (N, 4 h0, 4 w0, classes) float32, the upsampled logits (DRBN-SKF's `seg_orin`).
  `logits_quarter`: (N, h0, w0, classes) float32, `last_layer`'s output before upsampling.
  `features`: tuple of the four stage-4 branch outputs (the authors' `out_feature`, SKF's
    `seg_fea0..3`), (N, h0, w0, 48), (N, h0/2, w0/2, 96), (N, h0/4, w0/4, 192), (N, h0/8, w0/8, 384)
    for W48 (sizes rounded up), in the compute dtype.

Submodules are named after the torch attributes (`stage3.1.fuse_layers.2.0.1.0.weight` is
`params['stage3']['1']['fuse_layers']['2']['0']['1']['0']['kernel']`), so a state dict converts by
the naming rule of docs/CONVENTIONS.md (`lowlight_jax.convert.hrnet`). Torch `None` entries of the
ModuleLists (unchanged-width transitions, the j == i fuse entries) have no submodule and no key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax import errors
from lowlight_jax.ops import resize

BLOCK_EXPANSION = {"BASIC": 1, "BOTTLENECK": 4}
STEM_CHANNELS = 64
PASCAL_CONTEXT_NUM_CLASSES = 59

# Authors' `init_weights`: every conv weight N(0, 0.001), BN 1 / 0. Only used for random init; the
# tower is meant to be loaded from a checkpoint.
_CONV_INIT = nn.initializers.normal(stddev=0.001)


@dataclasses.dataclass(frozen=True)
class StageConfig:
  """One `STAGEk` entry of the authors' yaml (`MODEL.EXTRA.STAGEk`).

  Attributes:
    num_modules: HighResolutionModules in the stage (ignored by the authors for stage 1, which is
      one Sequential of blocks; must be 1 there).
    block: 'BASIC' (expansion 1) or 'BOTTLENECK' (expansion 4).
    num_blocks: blocks per branch.
    num_channels: block width per branch (branch width = width * expansion).
    fuse_method: only 'SUM' exists in the reference code.
  """
  num_modules: int
  block: str
  num_blocks: tuple[int, ...]
  num_channels: tuple[int, ...]
  fuse_method: str = "SUM"

  def __post_init__(self):
    object.__setattr__(self, "num_blocks", tuple(int(b) for b in self.num_blocks))
    object.__setattr__(self, "num_channels", tuple(int(c) for c in self.num_channels))
    if self.block not in BLOCK_EXPANSION:
      raise errors.ConfigError(f"HRNet stage block {self.block!r}: expected one of "
                               f"{sorted(BLOCK_EXPANSION)}")
    if len(self.num_blocks) != len(self.num_channels) or not self.num_channels:
      raise errors.ConfigError(f"HRNet stage: NUM_BLOCKS {self.num_blocks} and NUM_CHANNELS "
                               f"{self.num_channels} must name the same (non-zero) branches")
    if self.num_modules < 1 or min(self.num_blocks) < 1 or min(self.num_channels) < 1:
      raise errors.ConfigError(f"HRNet stage: counts must be positive, got modules "
                               f"{self.num_modules}, blocks {self.num_blocks}, channels "
                               f"{self.num_channels}")
    if self.fuse_method != "SUM":
      raise errors.ConfigError(f"HRNet FUSE_METHOD {self.fuse_method!r}: only 'SUM' exists")

  @property
  def num_branches(self) -> int:
    return len(self.num_channels)

  @property
  def out_channels(self) -> tuple[int, ...]:
    """Branch widths after the stage (`num_channels * expansion`)."""
    return tuple(c * BLOCK_EXPANSION[self.block] for c in self.num_channels)


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
  """The network shape: the authors' `MODEL.EXTRA` plus `DATASET.NUM_CLASSES`.

  Attributes:
    stage1..stage4: the four stages (stage 1 has one branch and one module).
    num_classes: classifier outputs (PASCAL-Context: 59).
    final_conv_kernel: `FINAL_CONV_KERNEL` of the classifier conv (padding 1 if 3, else 0, as
      the reference).
    align_corners: `MODEL.ALIGN_CORNERS` (True as SKF runs it) for every bilinear resize.
  """
  stage1: StageConfig
  stage2: StageConfig
  stage3: StageConfig
  stage4: StageConfig
  num_classes: int = PASCAL_CONTEXT_NUM_CLASSES
  final_conv_kernel: int = 1
  align_corners: bool = True

  def __post_init__(self):
    if self.stage1.num_branches != 1 or self.stage1.num_modules != 1:
      raise errors.ConfigError("HRNet STAGE1 is one Sequential of blocks: it needs exactly one "
                               f"branch and one module, got {self.stage1}")
    if self.num_classes < 1:
      raise errors.ConfigError(f"HRNet num_classes must be positive, got {self.num_classes}")
    if self.final_conv_kernel < 1:
      raise errors.ConfigError(f"HRNet FINAL_CONV_KERNEL must be positive, got "
                               f"{self.final_conv_kernel}")

  @property
  def stages(self) -> tuple[StageConfig, StageConfig, StageConfig, StageConfig]:
    return (self.stage1, self.stage2, self.stage3, self.stage4)

  @property
  def head_channels(self) -> int:
    """Channels of the concatenated branches that `last_layer` sees (720 for W48)."""
    return sum(self.stage4.out_channels)

  @classmethod
  def from_authors(cls, model: Mapping[str, Any], num_classes: int) -> "HRNetConfig":
    """From the authors' yacs `config.MODEL` (as a dict, e.g. from a keys json) and the class count.

    Reads `EXTRA.STAGE1..4` (`NUM_MODULES`, `BLOCK`, `NUM_BLOCKS`, `NUM_CHANNELS`, `FUSE_METHOD`;
    `NUM_BRANCHES` is checked against the lists as `_check_branches` does; stage 1's misspelt
    `NUM_RANCHES` is unused, as in the reference), `EXTRA.FINAL_CONV_KERNEL` and `ALIGN_CORNERS`
    (default True, as `default.py`).
    """
    try:
      extra = model["EXTRA"]
      stages = []
      for k in range(1, 5):
        s = extra[f"STAGE{k}"]
        stage = StageConfig(num_modules=int(s.get("NUM_MODULES", 1)) if k > 1 else 1,
                            block=str(s["BLOCK"]), num_blocks=tuple(s["NUM_BLOCKS"]),
                            num_channels=tuple(s["NUM_CHANNELS"]),
                            fuse_method=str(s.get("FUSE_METHOD", "SUM")))
        if k > 1 and int(s["NUM_BRANCHES"]) != stage.num_branches:
          raise errors.ConfigError(f"HRNet STAGE{k}: NUM_BRANCHES {s['NUM_BRANCHES']} but "
                                   f"{stage.num_branches} entries in NUM_BLOCKS/NUM_CHANNELS")
        stages.append(stage)
      return cls(*stages, num_classes=int(num_classes),
                 final_conv_kernel=int(extra.get("FINAL_CONV_KERNEL", 1)),
                 align_corners=bool(model.get("ALIGN_CORNERS", True)))
    except KeyError as e:
      raise errors.ConfigError(f"HRNet config: missing field {e}") from None


#: `seg_hrnet_w48_cls59_480x480_sgd_lr4e-3_wd1e-4_bs_16_epoch200.yaml`, SKF's semantic prior.
HRNET_W48_PASCAL_CONTEXT = HRNetConfig(
    stage1=StageConfig(1, "BOTTLENECK", (4,), (64,)),
    stage2=StageConfig(1, "BASIC", (4, 4), (48, 96)),
    stage3=StageConfig(4, "BASIC", (4, 4, 4), (48, 96, 192)),
    stage4=StageConfig(3, "BASIC", (4, 4, 4, 4), (48, 96, 192, 384)),
    num_classes=PASCAL_CONTEXT_NUM_CLASSES, final_conv_kernel=1, align_corners=True)


def _bn(name: str) -> nn.BatchNorm:
  # torch BatchNorm2d in eval mode: running statistics, eps 1e-5; computed in float32.
  return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, dtype=jnp.float32,
                      name=name)


def _conv(features: int, kernel: int, stride: int, padding: int, name: str, dtype: Any,
          precision: Any, use_bias: bool = False) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 kernel_init=_CONV_INIT, dtype=dtype, precision=precision, name=name)


class ConvBN(nn.Module):
  """torch `Sequential(Conv2d(bias=False) '0', BatchNorm2d '1'[, ReLU])`, padding kernel // 2."""
  features: int
  kernel: int = 3
  stride: int = 1
  relu: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _conv(self.features, self.kernel, self.stride, self.kernel // 2, "0", self.dtype,
              self.precision)(x)
    x = _bn("1")(x)
    if self.relu:
      x = nn.relu(x)
    return x.astype(self.dtype)


class ConvBNChain(nn.Module):
  """`Sequential` of 3x3 stride-2 ConvBN(ReLU) children '0', '1', ...: (features, relu) each."""
  specs: tuple[tuple[int, bool], ...]
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for k, (features, relu) in enumerate(self.specs):
      x = ConvBN(features, 3, 2, relu, self.dtype, self.precision, name=str(k))(x)
    return x


class BasicBlock(nn.Module):
  """Two 3x3 conv + BN, identity (or 1x1 conv + BN `downsample`) shortcut, ReLU after the sum."""
  planes: int
  downsample: bool = False
  dtype: Any = jnp.float32
  precision: Any = None
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, name: _conv(f, k, 1, k // 2, name, self.dtype, self.precision)
    y = nn.relu(_bn("bn1")(conv(self.planes, 3, "conv1")(x))).astype(self.dtype)
    y = _bn("bn2")(conv(self.planes, 3, "conv2")(y))
    if self.downsample:
      x = ConvBN(self.planes, 1, 1, False, self.dtype, self.precision, name="downsample")(x)
    return nn.relu(y + x).astype(self.dtype)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 channels) conv + BN, shortcut, ReLU after the sum."""
  planes: int
  downsample: bool = False
  dtype: Any = jnp.float32
  precision: Any = None
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, name: _conv(f, k, 1, k // 2, name, self.dtype, self.precision)
    y = nn.relu(_bn("bn1")(conv(self.planes, 1, "conv1")(x))).astype(self.dtype)
    y = nn.relu(_bn("bn2")(conv(self.planes, 3, "conv2")(y))).astype(self.dtype)
    y = _bn("bn3")(conv(self.planes * 4, 1, "conv3")(y))
    if self.downsample:
      x = ConvBN(self.planes * 4, 1, 1, False, self.dtype, self.precision, name="downsample")(x)
    return nn.relu(y + x).astype(self.dtype)


_BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


class Blocks(nn.Module):
  """`Sequential` of `count` blocks '0', '1', ...; the first gets a 1x1 `downsample` shortcut when
  its input width differs from `planes * expansion` (strides are always 1 here)."""
  block: str
  planes: int
  count: int
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cls = _BLOCKS[self.block]
    for k in range(self.count):
      downsample = k == 0 and x.shape[-1] != self.planes * BLOCK_EXPANSION[self.block]
      x = cls(self.planes, downsample, self.dtype, self.precision, name=str(k))(x)
    return x


class Branches(nn.Module):
  """`ModuleList` of one `Blocks` per branch, '0', '1', ..."""
  stage: StageConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    s = self.stage
    return [Blocks(s.block, s.num_channels[b], s.num_blocks[b], self.dtype, self.precision,
                   name=str(b))(xs[b]) for b in range(s.num_branches)]


class FuseRow(nn.Module):
  """`fuse_layers[i]`: output branch i = ReLU(sum_j f_ij(x_j)); children named by j (no j == i)."""
  i: int
  channels: tuple[int, ...]
  align_corners: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  def _path(self, j: int) -> nn.Module:
    i, ch = self.i, self.channels
    if j > i:
      return ConvBN(ch[i], 1, 1, False, self.dtype, self.precision, name=str(j))
    # (i - j) stride-2 3x3 convs: widths ch[j] ... ch[j], then ch[i]; ReLU on all but the last.
    specs = tuple((ch[j], True) for _ in range(i - j - 1)) + ((ch[i], False),)
    return ConvBNChain(specs, self.dtype, self.precision, name=str(j))

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
    i = self.i
    y = xs[0] if i == 0 else self._path(0)(xs[0])
    for j in range(1, len(xs)):
      if j == i:
        y = y + xs[j]
      elif j > i:
        up = resize.resize_bilinear(self._path(j)(xs[j]), xs[i].shape[1:3],
                                    align_corners=self.align_corners)
        y = y + up
      else:
        y = y + self._path(j)(xs[j])
    return nn.relu(y)


class FuseLayers(nn.Module):
  """`ModuleList` of `FuseRow`s, one per output branch (multi_scale_output is True throughout)."""
  channels: tuple[int, ...]
  align_corners: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    return [FuseRow(i, tuple(self.channels), self.align_corners, self.dtype, self.precision,
                    name=str(i))(xs) for i in range(len(self.channels))]


class HighResolutionModule(nn.Module):
  """Parallel branches, then exchange across resolutions (`branches`, `fuse_layers`)."""
  stage: StageConfig
  align_corners: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    xs = Branches(self.stage, self.dtype, self.precision, name="branches")(xs)
    if self.stage.num_branches == 1:
      return xs
    return FuseLayers(self.stage.out_channels, self.align_corners, self.dtype, self.precision,
                      name="fuse_layers")(xs)


class Stage(nn.Module):
  """`stageK`: `Sequential` of HighResolutionModules '0', '1', ..."""
  stage: StageConfig
  align_corners: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    for m in range(self.stage.num_modules):
      xs = HighResolutionModule(self.stage, self.align_corners, self.dtype, self.precision,
                                name=str(m))(xs)
    return list(xs)


class Transition(nn.Module):
  """`transitionK`: adapts the previous stage's branches to the next stage's.

  Branch i < len(pre): 3x3 conv + BN + ReLU (child str(i)) if the width changes, else identity
  (torch None, no child). A new branch i: a chain of (i + 1 - len(pre)) 3x3 stride-2 conv + BN +
  ReLU from the LAST previous branch (all of width pre[-1] except the last, of width cur[i]).
  """
  pre: tuple[int, ...]
  cur: tuple[int, ...]
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
    out = []
    n_pre = len(self.pre)
    for i, width in enumerate(self.cur):
      if i < n_pre:
        if width != self.pre[i]:
          out.append(ConvBN(width, 3, 1, True, self.dtype, self.precision, name=str(i))(xs[i]))
        else:
          out.append(xs[i])
      else:
        n = i + 1 - n_pre
        specs = tuple((self.pre[-1], True) for _ in range(n - 1)) + ((width, True),)
        out.append(ConvBNChain(specs, self.dtype, self.precision, name=str(i))(xs[-1]))
    return out


class LastLayer(nn.Module):
  """`last_layer`: 1x1 conv (bias) '0' -> BN '1' -> ReLU -> conv (bias) '3' to the classes."""
  channels: int
  num_classes: int
  final_conv_kernel: int = 1
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _conv(self.channels, 1, 1, 0, "0", self.dtype, self.precision, use_bias=True)(x)
    x = nn.relu(_bn("1")(x)).astype(self.dtype)
    k = self.final_conv_kernel
    # Port note: the reference pads 1 only for a 3x3 kernel and 0 for any other size; kept.
    return _conv(self.num_classes, k, 1, 1 if k == 3 else 0, "3", self.dtype, self.precision,
                 use_bias=True)(x)


class HRNet(nn.Module):
  """The authors' `HighResolutionNet` (`seg_hrnet.get_seg_model`) in eval mode.

  Attributes:
    config: the network shape; `HRNET_W48_PASCAL_CONTEXT` (default) is SKF's.
    dtype: compute dtype of convs and features (BatchNorm, resizes of the logits and the softmax run
      in float32); params stay float32.
    precision: conv precision (`jax.lax.Precision.HIGHEST` for parity on accelerators).
  """
  config: HRNetConfig = HRNET_W48_PASCAL_CONTEXT
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, Any]:
    """x: (N, H, W, 3) RGB, used as is (no normalisation). Returns the dict of the module doc."""
    cfg = self.config
    dt, prec = self.dtype, self.precision
    x = x.astype(dt)
    x = nn.relu(_bn("bn1")(_conv(STEM_CHANNELS, 3, 2, 1, "conv1", dt, prec)(x))).astype(dt)
    x = nn.relu(_bn("bn2")(_conv(STEM_CHANNELS, 3, 2, 1, "conv2", dt, prec)(x))).astype(dt)
    s1 = cfg.stage1
    x = Blocks(s1.block, s1.num_channels[0], s1.num_blocks[0], dt, prec, name="layer1")(x)

    xs, pre = [x], s1.out_channels
    for k, stage in enumerate(cfg.stages[1:], start=1):
      xs = Transition(pre, stage.out_channels, dt, prec, name=f"transition{k}")(xs)
      xs = Stage(stage, cfg.align_corners, dt, prec, name=f"stage{k + 1}")(xs)
      pre = stage.out_channels
    features = tuple(xs)

    h0, w0 = features[0].shape[1:3]
    ups = [features[0]] + [resize.resize_bilinear(f, (h0, w0), align_corners=cfg.align_corners)
                           for f in features[1:]]
    logits_quarter = LastLayer(cfg.head_channels, cfg.num_classes, cfg.final_conv_kernel, dt, prec,
                               name="last_layer")(jnp.concatenate(ups, axis=-1))
    logits_quarter = logits_quarter.astype(jnp.float32)
    logits = resize.resize_bilinear(logits_quarter, (4 * h0, 4 * w0),
                                    align_corners=cfg.align_corners)
    return {"probs": jax.nn.softmax(logits, axis=-1), "logits": logits,
            "logits_quarter": logits_quarter, "features": features}


def output_hw(hw: Sequence[int]) -> tuple[int, int]:
  """Spatial size of `probs` / `logits` for an (H, W) input: 4 * ceil(ceil(H / 2) / 2)."""
  h, w = (-(-(-(-int(v) // 2)) // 2) for v in hw)
  return 4 * h, 4 * w


def abstract_variables(config: HRNetConfig = HRNET_W48_PASCAL_CONTEXT) -> dict[str, Any]:
  """`jax.eval_shape` of `HRNet(config).init`: the variables' shapes, no compute, no memory."""
  return jax.eval_shape(HRNet(config).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def count_params(variables: Mapping[str, Any]) -> int:
  """Number of scalars in the `params` collection (the torch parameter count)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))
