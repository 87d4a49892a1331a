r"""DMGNIE: daytime-memory guided nighttime image enhancement (seed `000_f6de8f8b0015d52c`), by stage.

Stage 1, `segbmn`: SegBMN learns a fixed camera's static background from K of its daytime frames and their
foreground masks (Eq. 2), trained with L_BG (Eq. 3); method `lowlight_jax/methods/dmgnie_segbmn.py`.
Stage 2, `enhance` (the CycleGAN with foreground-localised contrastive learning, Eqs. 4-10): not ported yet.

The paper gives none of the hyper-parameters below (no code is public): every value is ours, with its reason.

Args (comma separated, e.g. `configs/dmgnie.py:segbmn,demo`):
  segbmn  stage 1 (also the default while stage 2 is not ported).
  smoke   tiny everything (64x48 frames, K=4, a 3-level UNet of width 8, batch 8, 4 steps): seconds on CPU,
          used by tests; motion masks (no mask files, no weights).
  demo    a CPU-sized stage 1 on the default synthetic videos (`data_pipelines.synthetic_video`, 160x90, two
          cameras, the hard cases on): native-size frames, K=8, a width-8 UNet, 2 clips per step, 600 steps at
          lr 2e-3 (cosine), motion masks. Measured 10 min 29 s end to end (compile included) on 2 cores shared
          with other jobs (load ~4). It does NOT beat the temporal median there (PSNR vs the ground truth, 32
          frames: cam00 23.91 vs 24.77 dB, cam01 24.89 vs 26.28 dB): the masked mean that Eq. 2 computes from
          motion masks is only ~0.3 dB above the median on these videos, and the 600-step network reproduces it
          at ~30 dB PSNR (its blur costs ~1 dB).
  steps=N override the number of steps.

Launch:
  # Stage 1 on your daytime videos (a folder, searched recursively; camera = file-name prefix or folder):
  python -m launch.train --config configs/dmgnie.py:segbmn --workdir runs/segbmn \
      --config.data.video.root=/data/cams --config.segmenter.weights=/weights/best_deeplabv3plus_mobilenet_cityscapes_os16.pth
  # Without segmentation weights (masks from motion, ours):
  python -m launch.train --config configs/dmgnie.py:segbmn --workdir runs/segbmn \
      --config.data.video.root=/data/cams --config.masks.source=motion
  # CPU demo on the synthetic videos, then a camera's background and its PSNR against the ground truth:
  python -m launch.train --config configs/dmgnie.py:segbmn,demo --workdir /tmp/segbmn_demo
  python -m launch.background --video ~/.cache/lowlight_jax/synthetic_video_v2_.../cam00_20240601T120000.mp4 \
      --workdir /tmp/segbmn_demo --out /tmp/cam00_bg.png --store /tmp/backgrounds --eval_gt

Evaluation is per video against its ground-truth background (`eval.every` is 0 here; see the method module and
`launch.background --eval_gt`).

Paper numbers (LQ-TLL-QD, private; stage 2): BRISQUE 31.42, NIQE 22.47, FID 43.18, LPIPS 42.96 (x100).
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from data_pipelines import pipeline


#: The `get_config` args (`lowlight methods` lists them).
CONFIG_ARGS = ("segbmn", "smoke", "demo", "steps=N")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, segbmn=False, enhance=False, smoke=False, demo=False, steps=0)
  if a.enhance:
    raise ValueError("dmgnie: stage 'enhance' is not available yet (only stage 1, 'segbmn', is ported)")
  c = _segbmn(a)  # Stage 1; the only stage so far, hence also the default.
  if a.steps:
    c.total_steps = a.steps
  return c


def _segbmn(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Stage 1: SegBMN with L_BG (Eq. 3)."""
  c = common.trainer_fields()
  c.method = "dmgnie_segbmn"
  c.total_steps = 20_000  # ~20 passes over 100 clips per camera x 80 cameras; a UNet autoencoder converges well
  #                         within that (the paper gives no schedule).
  c.batch_size = 8  # Global clips per step (x K frames each); must divide by the mesh's data axis.

  c.data = pipeline.default_data_config()
  c.data.source = "video"
  v = c.data.video
  v.root = config_dict.placeholder(str)  # Folder of the camera videos; unset = the synthetic default set.
  v.split = "day"  # SegBMN models the DAYTIME background (the "memory" that guides night enhancement).
  # K: Eq. 2 needs every pixel to be background in at least one of the K frames. With a pixel covered by traffic
  # a fraction p of the day, all K frames are foreground with probability p^K: 0.4% at p = 0.5 for K = 8, and the
  # encoder/decoders run on K frames, so memory grows with K.
  v.clip_frames = 8
  v.clip_records = 0  # 100 clips per camera per epoch (the frames of a clip are redrawn per record).
  # Frames are resized in the decoder to 256x448 (16:9-ish, multiples of 2**(L-1) = 8): the scale the SegBMN
  # widths were sized for (models/segbmn.py), and 8 clips x 8 frames fit one accelerator's memory easily.
  v.height, v.width = 256, 448
  v.with_masks = False  # Synthetic ground-truth masks; needed (True) only by masks.source='ground_truth'.
  v.worker_count = 8  # Decoding K frames with a seek each is the bottleneck on an accelerator: grain processes.

  # SegBMN (models/segbmn.py; every field's reason is documented there).
  c.model = ml_collections.ConfigDict(dict(
      features=(32, 64, 128, 256),  # L = 4 stages, a small UNet (3.1M parameters) for ~256 px frames.
      mask_resize="area",  # The paper's "interpolated and resized" masks: exact area interpolation.
      weighting="paper",  # Eq. 2 as printed (M_j^2 / sum M_i; = plain masked mean for binary masks).
      empty_fill="mean",  # Where every frame is foreground: the unmasked mean of the K frames (finite).
      downsample="maxpool",  # UNet's.
      upsample="bilinear",  # Bilinear + 3x3 conv: no checkerboard artefacts in the produced image.
      pad_mode="edge",  # Padding to multiples of 8 copies real pixels and labels.
      # D_BG refines the pixel-level Eq. 2 (the masked mean of the K frames) instead of decoding from scratch:
      # ours, not the paper's (models/segbmn.py: a short training reproduces the mean only blurred); False is
      # the paper's plain decoder.
      image_skip=True,
  ))

  c.masks = ml_collections.ConfigDict(dict(
      # 'segmenter' (the paper's M = fseg(Y); needs segmenter.weights), 'ground_truth' (the synthetic videos'
      # true masks; needs data.video.with_masks=True) or 'motion' (needs nothing; Port note: ours, not the
      # paper's: deviation from the per-pixel median of the clip's K frames, which are stratified over the
      # camera's whole daytime timeline, so the median is robust to traffic).
      source="segmenter",
      # Motion masks (ops/background.py:motion_masks, same fields and reasons): 0.1 ~ 25/255 is above sensor
      # and compression noise and below vehicle/road contrast; 2 px dilation covers soft and shadowed borders;
      # the median is robust while an object covers a pixel in under half of the K frames; 'max' over channels
      # catches a colour change at equal brightness.
      motion=dict(threshold=0.1, dilate=2, statistic="median", reduce="max"),
  ))
  c.segmenter = ml_collections.ConfigDict(dict(
      weights=config_dict.placeholder(str),  # VainF DeepLabV3+ MobileNetV2 Cityscapes checkpoint (.pth/.npz).
      num_classes=19,  # Cityscapes train ids.
      output_stride=16,  # The released os16 checkpoint.
      repeats=(1, 2, 3, 4, 3, 3, 1),  # MobileNetV2 blocks per stage (the released network).
      # The paper's foreground: "cars, pedestrians, and motorcycles"; we take every Cityscapes road user
      # (person, rider, car, truck, bus, motorcycle, bicycle). Add 16 (train/tram) for tram lines.
      foreground_classes=(11, 12, 13, 14, 15, 17, 18),
      dilate=0,  # M = fseg(Y) as the paper writes it; >0 widens foreground against segmentation borders.
      allow_random_weights=False,  # Tests only: run the segmenter path with a random network.
  ))

  c.loss = ml_collections.ConfigDict(dict(
      alpha=1.0,  # Eq. 3's alpha: both terms are mean L1 distances of [0, 1] images (losses/segbmn.py).
      reduction="mean",  # Eq. 3's ||.||_1 normalised by size, as F.l1_loss (losses/segbmn.py).
  ))

  c.optim = ml_collections.ConfigDict(dict(segbmn=dict(
      # Adam at 2e-4, the rate of the image-to-image UNets DMGNIE builds on (pix2pix / CycleGAN, whose
      # generators stage 2 uses); default betas since L_BG is not adversarial; constant rate, no clipping.
      optimizer="adam", lr=2e-4, schedule="constant", weight_decay=0.0, clip_norm=0.0)))

  # The trainer's periodic evaluation enhances single images; a background is scored per video against its
  # ground truth instead: `launch.background --eval_gt` / `methods.dmgnie_segbmn.evaluate_videos`.
  c.eval.every = 0
  c.log_every = 50
  c.checkpoint_every = 1000

  if a.demo:
    # CPU budget (~15 min on 2 cores, compile included) on the default synthetic set (2 cameras, 160x90, 1 min
    # each at 10 fps): the cost is per frame, ~0.06 s forward + backward at these widths and size (~1 step/s).
    c.total_steps = 600
    c.batch_size = 2  # 2 clips x 8 frames: as many frames per step as 4 x 4, but Eq. 2 averages 8 frames as at
    #                   inference (32) more nearly than 4 would.
    v.height = v.width = 0  # Native 160x90: scored against the native-size ground truth, so trained there.
    v.worker_count = 0  # Decoding 160x90 frames is cheap next to the step on CPU.
    c.model.features = (8, 16, 32, 64)  # A sixteenth of the default FLOPs; an 8-channel full-res path still
    #                                     carries RGB through the skips.
    c.masks.source = "motion"  # The demo needs no weights and no mask files (ground truth: see the module doc).
    # Few steps from scratch: a high rate, decayed to 0 (cosine) so the last weights settle.
    c.optim.segbmn.lr = 2e-3
    c.optim.segbmn.schedule = "cosine"
    c.log_every = 25
    c.checkpoint_every = 200
  if a.smoke:
    c.total_steps = 4
    c.batch_size = 8
    v.clip_frames = 4
    v.clip_records = 16
    v.height, v.width = 48, 64
    v.worker_count = 0
    c.model.features = (8, 16, 32)
    c.masks.source = "motion"
    c.segmenter.repeats = (1, 1, 1, 1, 1, 1, 1)  # For tests of masks.source='segmenter': compiles in seconds.
    c.segmenter.allow_random_weights = True
    c.log_every = 2
    c.checkpoint_every = 2
  return c
