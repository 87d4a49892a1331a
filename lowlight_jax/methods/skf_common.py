"""What the SKF methods (`skf_drbn`, `skf_snr`) share: the frozen HRNet knowledge bank and its weight source.

SKF (Wu et al., CVPR 2023) wraps an enhancer with a frozen HRNet-W48 PASCAL-Context segmenter (59 classes): its
branch features feed the SE blocks, its softmax map picks the SCH loss's classes (and the SA discriminator's
input). `hrnet.variant` selects the network: `w48` (the authors' prior; its weights come from `hrnet.weights`)
`tiny` (W48's first two branch widths, one block per stage, random weights: smoke tests and CPU demos) or `mini`
(all four W48 widths, one block per stage: the smallest that fits SNR-SKF's released SE blocks).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from lowlight_jax import errors
from lowlight_jax.methods import base
from lowlight_jax.models import hrnet as hrnet_lib
from lowlight_jax.models import init as init_lib

PyTree = Any

def one_block_per_stage(widths: tuple[int, int, int, int]) -> hrnet_lib.HRNetConfig:
  """An HRNet with one block and one module per stage, branch widths `widths`, 59 classes: seconds on CPU."""
  return hrnet_lib.HRNetConfig(
      stage1=hrnet_lib.StageConfig(1, "BOTTLENECK", (1,), (16,)),
      stage2=hrnet_lib.StageConfig(1, "BASIC", (1, 1), widths[:2]),
      stage3=hrnet_lib.StageConfig(1, "BASIC", (1, 1, 1), widths[:3]),
      stage4=hrnet_lib.StageConfig(1, "BASIC", (1, 1, 1, 1), widths),
      num_classes=hrnet_lib.PASCAL_CONTEXT_NUM_CLASSES)


#: W48's first two branch widths (DRBN-SKF's SE blocks read its 48/96-channel features). Random weights; smoke tests.
HRNET_TINY = one_block_per_stage((48, 96, 32, 32))
#: All four of W48's branch widths (the SNR SE blocks also read the 192-channel branch): the smallest HRNet that fits
#: every SE block of the authors' networks. Random weights; for tests.
HRNET_MINI = one_block_per_stage((48, 96, 192, 384))
HRNET_VARIANTS = {"w48": hrnet_lib.HRNET_W48_PASCAL_CONTEXT, "tiny": HRNET_TINY, "mini": HRNET_MINI}


def hrnet_config(config: ml_collections.ConfigDict) -> hrnet_lib.HRNetConfig:
  """The HRNet of `config.hrnet.variant` (a ConfigError naming the field when unknown)."""
  if config.hrnet.variant not in HRNET_VARIANTS:
    raise errors.ConfigError(f"hrnet.variant: unknown {config.hrnet.variant!r}; known: {sorted(HRNET_VARIANTS)}")
  return HRNET_VARIANTS[config.hrnet.variant]


def init_hrnet(model: hrnet_lib.HRNet, rng: jax.Array, images: jax.Array) -> PyTree:
  """Random HRNet variables (replaced by `hrnet.weights` when given; see `hrnet_weight_source`).

  Port note: a random HRNet (no `hrnet.weights`: smoke tests, demos) gets He-normal kernels. The authors'
  N(0, 0.001) init (they always load trained weights) makes its features nearly constant per pixel, and the SE
  blocks' LayerNorm of them amplifies gradients by up to 1/sqrt(eps): measured enhancer grad norm 1.3e8 at step 0
  on the DRBN smoke config, 37 with He-normal.
  """
  return init_lib.random_variables(model, rng, images)


def hrnet_weight_source(config: ml_collections.ConfigDict) -> list[base.WeightSource]:
  """`hrnet.weights` (the authors' HRNet checkpoint with `model.` keys, or a plain state dict) as the source of
  the frozen `hrnet` tower; [] when not given."""
  if not config.hrnet.weights:
    return []
  net_config = hrnet_config(config)

  def convert(abstract, path=config.hrnet.weights):
    from lowlight_jax.convert import hrnet as hrnet_convert  # Conversion code only when files are given.
    return hrnet_convert.load_hrnet(path, net_config, target_variables=abstract)

  return [base.WeightSource(target=("frozen", "hrnet"), files=(config.hrnet.weights,), convert=convert,
                            converter="skf-hrnet-v1")]
