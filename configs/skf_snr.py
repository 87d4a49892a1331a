r"""SKF around SNR-LLIE-Net (SNR-SKF, CVPR 2023) and the plain SNR-LLIE-Net baseline, the authors' LOL recipe by
default.

Recipe (SNR_SKF `options/train/LOLv1_SKF.yml`, `train.py`, `Video_base_model4_m.py`): 128x128 crops of LOL
`our485` with random horizontal and vertical flips (the released `use_rot` is a vertical flip; its rot90 is
commented out), batch 16, Adam lr 1e-4 betas (0.9, 0.99), lr x0.5 at 50k, 100k, 200k and 300k of 600k steps;
loss = Charbonnier (a sum) + 10000 * SCH on every 50th step. The frozen HRNet-W48 PASCAL-Context prior comes from
`--config.hrnet.weights`; the authors start from a baseline SNR-LLIE-Net (`pretrain_model_G`), `init_from` here.

Args (comma separated):
  smoke     tiny everything (the `tiny` HRNet, 1 transformer layer, 32px crops of the embedded pairs, 4 steps,
            SCH every 2nd step so both branches run): seconds on CPU.
  demo      a CPU-sized run on the embedded pairs: 64px crops, batch 8, 2 transformer layers, 300 steps,
            lr 4e-4, SCH every 10th step, random-init `tiny` HRNet (no weights file assumed).
  baseline  the plain SNR-LLIE-Net (no SE blocks, no SCH, no HRNet), for the SKF-vs-baseline comparison.
  steps=N   override the number of steps.

Launch (paper recipe):
  python -m launch.train --config configs/skf_snr.py --workdir runs/skf_snr \
      --config.data.root=/data/LOL/our485 --config.data.eval_root=/data/LOL/eval15 \
      --config.hrnet.weights=/weights/hrnet_w48_pascal_context_cls59_480x480.pth \
      --config.init_from=/weights/SNR_LOLv1.pth

Paper numbers (LOL PSNR / SSIM / LPIPS): SNR-LLIE-Net 24.608 / 0.840 / 0.151 -> SNR-SKF 25.031 / 0.855 / 0.113
(the SKF paper's Table 1; METHODS.md section 4 does not list them).
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from data_pipelines import pipeline

#: The `get_config` args (`lowlight methods` lists them).
CONFIG_ARGS = ("smoke", "demo", "baseline", "steps=N")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, smoke=False, demo=False, baseline=False, steps=0)
  c = common.trainer_fields()
  c.method = "skf_snr"
  c.total_steps = 600_000
  c.batch_size = 16
  c.log_every = 200
  c.checkpoint_every = 5000
  c.eval.every = 5000
  # Released SNR-SKF `.pth`, a baseline SNR-LLIE-Net `.pth` (the authors' start; SE blocks then start random) or a
  # plain state dict; its transformer depth must equal model.n_layers.
  c.init_from = config_dict.placeholder(str)

  c.data = pipeline.default_data_config()
  c.data.source = "paired_folder"  # LOL: root/low + root/high matched by stem (`our485`, `eval15`).
  c.data.crop = 128  # A multiple of 4, at least 16 (the network's requirement).
  c.data.hflip = True
  c.data.vflip = True

  c.model = ml_collections.ConfigDict(dict(
      skf=True,  # False: the plain SNR-LLIE-Net (no SE blocks, no semantic input).
      n_layers=6,  # Transformer depth (6 released; each layer is 6.3 M parameters).
      # Which image HRNet segments in training: 'ground_truth' (released) or 'input' (the paper).
      train_seg_input="ground_truth",
      test_passes=2,  # 2: the released test (HRNet on the first pass's output); 1: HRNet on the input only.
  ))
  c.hrnet = ml_collections.ConfigDict(dict(
      variant="w48",  # 'w48' (the authors' prior) or 'tiny' (random, smoke tests).
      weights=config_dict.placeholder(str),  # The authors' HRNet checkpoint (`model.` keys) or a plain state dict.
  ))
  c.loss_weights = ml_collections.ConfigDict(dict(charbonnier=1.0, sch=10_000.0))
  c.loss = ml_collections.ConfigDict(dict(
      charbonnier_reduction="sum",  # 'sum' (released: over batch, pixels, channels) or 'mean'.
      sch_every=50,  # SCH on every 50th update only (released).
      # Port note: the paper removes class-boundary pixels from SCH; 0 reproduces the released code.
      edge_radius=2,
  ))
  c.optim = ml_collections.ConfigDict(dict(
      enhancer=dict(optimizer="adam", lr=1e-4, b1=0.9, b2=0.99, weight_decay=0.0, decoupled=False, clip_norm=0.0,
                    schedule="step", boundaries=(50_000, 100_000, 200_000, 300_000), factor=0.5)))

  if a.demo or a.smoke:
    c.data.source = "embedded"
    c.hrnet.variant = "tiny"
  if a.demo:
    c.total_steps = 300
    c.batch_size = 8
    c.data.crop = 64
    c.model.n_layers = 2
    c.loss.sch_every = 10
    c.log_every = 25
    c.checkpoint_every = 100
    c.eval.every = 300
    c.optim.enhancer.lr = 4e-4
    c.optim.enhancer.boundaries = (200,)
  if a.smoke:
    c.total_steps = 4
    c.batch_size = 8
    c.data.crop = 32
    c.model.n_layers = 1
    c.loss.sch_every = 2
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval.every = 4
    c.eval.num_images = 1
  if a.baseline:
    c.model.skf = False
    c.loss_weights.sch = 0.0
  if a.steps:
    c.total_steps = a.steps
  return c
