r"""SCL-LLE: Semantically Contrastive Learning for Low-Light Image Enhancement (AAAI 2022).

Paper recipe (default arg, the released train.py): Cityscapes fine-labelled training images, random
384x384 crops + horizontal flip, darkened; 2 positives (SICE Part1 normal exposures) and 2 negatives
(SICE Part1 under/over-exposures) drawn at random per input and resized to 384x384; batch 2; Adam lr
1e-4 with coupled L2 1e-4; gradient clipping to global norm 0.1; 50k iterations; frozen DeepLabV3+
(MobileNetV2, OS 16, Cityscapes weights) and VGG-16 (ImageNet weights). Loss = 10*appearance triplet
+ 5*Gram triplet + semantic brightness + segmentation CE + feature retention + 8*colour + 200*TV.
Batch 2 needs a mesh of at most 2 data shards (`--config.mesh.data=1` or 2).

Without `data.inputs=cityscapes` the data are the embedded stand-in (`data_pipelines/scl_data.py`):
embedded photos with unsupervised stand-in class maps and synthetic exposures of other photos as
negatives. Without weight files the frozen networks are random (then the semantic and VGG terms only
exercise the code).

Args (comma separated, e.g. `configs/scl_lle.py:demo,steps=200`):
  smoke   tiny everything (32px crops, batch 8, 4 steps, a 7-block random DeepLabV3+, random VGG);
          used by tests.
  demo    a CPU-sized run on the embedded stand-in: 64px crops, batch 4, 300 steps; without the
          segmentation and feature-retention terms, which need pretrained networks to mean anything.
  finetune  the demo run at the paper's learning rate (1e-4), for starting from released weights:
          `configs/scl_lle.py:finetune --config.init_from=SCL-LLE.pth` (tests/methods/
          test_scl_lle_finetune_niqe.py scores it with NIQE on the conformance DICM + LIME images).
  steps=N override the number of steps.

Launch (paper recipe):
  python -m launch.train --config configs/scl_lle.py --workdir runs/scl_lle --config.mesh.data=2 \
      --config.data.inputs=cityscapes --config.data.root=/data/cityscapes \
      --config.data.positives_dir=/data/Contrast/GT --config.data.negatives_dir=/data/Contrast/low \
      --config.segmentation.weights=/weights/best_deeplabv3plus_mobilenet_cityscapes_os16.pth \
      --config.vgg.weights=/weights/vgg16-397923af.pth

Paper numbers: NIQE 3.46 / UNIQUE 0.85 averaged over DICM, LIME, MEF, VV, NPE; SICE Part2 17.95 dB /
0.68 SSIM; Table 4 (Cityscapes val, gamma 10) mIoU 42.05 / 22.85 / 33.44 (Frankfurt / Lindau /
Munster) after enhancement (`lowlight_jax.metrics.segmentation`).
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from data_pipelines import scl_data


#: The `get_config` args (`lowlight methods` lists them).
CONFIG_ARGS = ("smoke", "demo", "finetune", "steps=N")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, smoke=False, demo=False, finetune=False, steps=0)
  c = common.trainer_fields()
  c.method = "scl_lle"
  c.total_steps = 50_000
  c.batch_size = 2  # Global batch; must divide by the mesh's data axis.
  # Released SCL-LLE (or Zero-DCE) weights, or a converted file.
  c.init_from = config_dict.placeholder(str)
  c.init_from_method = "scl_lle"  # 'scl_lle' or 'zero_dce' (same DCE-Net architecture).

  c.data = scl_data.default_scl_data_config()  # data.source == 'scl'

  c.model = ml_collections.ConfigDict(dict(
      channels=32,
      iterations=8,
      init_std=0.02,  # Released `weights_init`: conv weights N(0, 0.02).
  ))

  c.segmentation = ml_collections.ConfigDict(dict(
      # VainF checkpoint ({'model_state': ...}) or a plain state dict.
      weights=config_dict.placeholder(str),
      num_classes=19,
      output_stride=16,
      # MobileNetV2 blocks per stage; smoke uses a smaller network (no checkpoint fits it).
      repeats=(1, 2, 3, 4, 3, 3, 1),
      # Port note: the released code detaches the enhanced image before DeepLabV3+, so its
      # cross-entropy never reaches the enhancer; False reproduces that.
      gradient=True,
  ))
  c.vgg = ml_collections.ConfigDict(dict(
      weights=config_dict.placeholder(str),  # torchvision vgg16 state dict (.pth/.npz/...).
  ))

  c.loss_weights = ml_collections.ConfigDict(dict(
      contrast_appearance=10.0, contrast_gram=5.0, semantic_brightness=1.0, segmentation=1.0,
      feature_retention=1.0, color=8.0, tv=200.0))
  c.loss = ml_collections.ConfigDict(dict(
      appearance_margin=0.3,
      gram_margin=0.04,
      # How K positives and L negatives form triplets: all_pairs | paired | mean_distance.
      combine="all_pairs",
      # Port note: True reproduces the released L_segexp (detached class means, labels broadcast
      # over the batch); False is the paper's Eq. 6 per image.
      released_semantic_brightness=False,
      # True: the paper's Charbonnier colour term instead of the released 4th powers.
      color_paper_form=False,
      ignore_index=255,
  ))

  c.optim = ml_collections.ConfigDict(dict(enhancer=dict(
      optimizer="adam", lr=1e-4, schedule="constant", weight_decay=1e-4, decoupled=False,
      clip_norm=0.1)))

  # compute_dtype (all networks), frozen_dtype, remat, mesh, sharding, profile, eval:
  # configs/common.py:trainer_fields.

  if a.demo or a.finetune:
    c.total_steps = 300
    c.batch_size = 4
    c.data.crop = c.data.pool_size = 64
    # Without pretrained networks two terms only add noise: the stand-in class ids are not
    # Cityscapes classes (segmentation cross-entropy), and the relu4_3 features of a random VGG
    # grow with the input's brightness, so feature retention would forbid any brightening. Set both
    # back to 1 with real data and `segmentation.weights` / `vgg.weights`.
    c.loss_weights.segmentation = 0.0
    c.loss_weights.feature_retention = 0.0
    c.data.pairings = 16
    c.log_every = 25
    c.checkpoint_every = 100
    c.eval.every = 150
    # Few steps on CPU from a random init; fine-tuning released weights keeps the paper's 1e-4.
    c.optim.enhancer.lr = 1e-4 if a.finetune else 3e-3
  if a.smoke:
    c.total_steps = 4
    c.batch_size = 8
    c.data.crop = c.data.pool_size = 32
    c.data.pairings = 2
    c.data.pseudo_classes = 4
    c.segmentation.repeats = (1, 1, 1, 1, 1, 1, 1)  # Fewer blocks: compiles in seconds on CPU.
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval.every = 4
    c.eval.num_images = 1
  if a.steps:
    c.total_steps = a.steps
  return c
