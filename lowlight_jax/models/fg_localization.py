"""DMGNIE's Siamese foreground-localisation network (the similarity maps of Eq. 4).

Paper: DMGNIE, "Daytime-Memory Guided Nighttime Image Enhancement" (seed 000_f6de8f8b0015d52c),
"Foreground Objects Location": the enhanced night image Y' = G(X, Y_BG) and the daytime background
Y_BG of the same scene go through a shared, frozen, pre-trained encoder E; two learnable projectors
f (for Y') and f_BG (for Y_BG) map them into a common space; Gaussian-noised copies Y' + z, Y_BG + z
give the self-similarity maps. With the per-position inner product (x) (a 2D map):
  D_orig = E(Y') (x) E(Y_BG),          D_proj = f(E(Y')) (x) f_BG(E(Y_BG)),
  D_self_Y = f(E(Y')) (x) f(E(Y' + z)), D_self_BG = f_BG(E(Y_BG)) (x) f_BG(E(Y_BG + z)).
Background positions are where the two images agree, so HIGH similarity = background; the
foreground distribution is built from the negated map in `losses.flgcl`.
No public code exists; every open choice is a field with a default:

- Encoder E (`encoder_layer = 'relu3_3'`): torchvision VGG-16 (`models.vgg.VGG16Features`) up to
  relu3_3: H/4 resolution (the resolution of the generator's deepest taps) and mid-level features
  that separate object parts from road/buildings while still tolerating small misalignments.
  Its variables are an INPUT of `__call__` (frozen, wrapped in stop_gradient), never params of
  this module, so optimisers only see f and f_BG.
- Encoder input (`imagenet_normalize = True`): images in [0, 1] are normalised with the ImageNet
  mean/std that torchvision's pretrained VGG-16 was trained with.
- Projectors f, f_BG (`proj_hidden = 256`, `proj_features = 256`): 1x1 conv -> ReLU -> 1x1 conv, the
  width of CUT's PatchSampleF MLP (256), enough for relu3_3's 256 channels without a bottleneck.
  Init N(0, 0.02^2) kernels, zero biases (CUT's init).
- Normalisation (`normalize = True`): every feature vector is L2-normalised before the inner
  product, so all four maps are cosine similarities in [-1, 1]. Raw relu3_3 inner products scale
  with local activation energy (brightness, texture), which would mark bright / textured regions
  rather than differing ones, and would make D_orig and D_proj live on unrelated scales that the
  KL term of Eq. 4 then has to reconcile; cosine maps also make the softmax temperature of
  `losses.flgcl.to_distribution` meaningful.
- Noise z ~ N(noise_mean, noise_sigma^2) (`noise_mean = 0`, `noise_sigma = 0.05`), drawn
  independently per pixel and channel, and separately for Y' and Y_BG, on the [0, 1] images, not
  clipped: 0.05 (about 13/255) is the scale of the "slight noises and distortions" of a generated
  image the paper wants robustness to; clipping would bias dark night pixels upwards.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax.models import vgg
from lowlight_jax.models.cyclegan import l2_normalize

ENCODER_LAYER = "relu3_3"
PROJ_HIDDEN = 256
PROJ_FEATURES = 256
NOISE_SIGMA = 0.05
NOISE_MEAN = 0.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_KERNEL_INIT = nn.initializers.normal(0.02)


def inner_product_map(a: jax.Array, b: jax.Array) -> jax.Array:
  """The paper's (x): per-position inner product of two (B, h, w, C) maps -> (B, h, w)."""
  if a.shape != b.shape:
    raise ValueError(f"feature maps differ in shape: {a.shape} vs {b.shape}")
  return jnp.sum(a.astype(jnp.float32) * b.astype(jnp.float32), axis=-1)


class Projector(nn.Module):
  """1x1 conv -> ReLU -> 1x1 conv (a per-position MLP)."""
  hidden: int = PROJ_HIDDEN
  features: int = PROJ_FEATURES
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(kernel_init=_KERNEL_INIT, bias_init=nn.initializers.zeros, dtype=self.dtype,
              precision=self.precision)
    x = nn.relu(nn.Conv(self.hidden, (1, 1), name="0", **kw)(x))
    return nn.Conv(self.features, (1, 1), name="2", **kw)(x)


class SiameseLocalizer(nn.Module):
  """Shared frozen VGG-16 encoder + learnable projectors f (enhanced image) and f_BG (background).

  Attributes: see the module docstring for each default and its reason.
    encoder_layer: VGG-16 ReLU tap used as E.
    proj_hidden, proj_features: projector widths.
    normalize: L2-normalise features before the inner products.
    noise_sigma, noise_mean: the Gaussian z added to the images for the self maps.
    imagenet_normalize: ImageNet mean/std normalisation of the encoder input.
    dtype, precision: compute dtype / conv precision.
  """
  encoder_layer: str = ENCODER_LAYER
  proj_hidden: int = PROJ_HIDDEN
  proj_features: int = PROJ_FEATURES
  normalize: bool = True
  noise_sigma: float = NOISE_SIGMA
  noise_mean: float = NOISE_MEAN
  imagenet_normalize: bool = True
  dtype: Any = jnp.float32
  precision: Any = None

  def setup(self):
    kw = dict(hidden=self.proj_hidden, features=self.proj_features, dtype=self.dtype,
              precision=self.precision)
    self.f = Projector(**kw)
    self.f_bg = Projector(**kw)

  def encode(self, vgg_variables: Any, x: jax.Array) -> jax.Array:
    """E(x): frozen VGG-16 features at `encoder_layer`, (B, H, W, 3) in [0, 1] -> (B, h, w, C).

    Gradients flow to x (the generator's output) but never to `vgg_variables`.
    """
    if self.imagenet_normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    # parent=None: a free-standing module applied to the frozen variables, not a submodule of ours.
    net = vgg.VGG16Features(stop_at=self.encoder_layer, dtype=self.dtype, precision=self.precision,
                            parent=None)
    frozen = jax.lax.stop_gradient(vgg_variables)
    return net.apply(frozen, x)[self.encoder_layer]

  def _norm(self, x: jax.Array) -> jax.Array:
    return l2_normalize(x) if self.normalize else x

  def localize(self, vgg_variables: Any, y_enh: jax.Array, y_bg: jax.Array) -> jax.Array:
    """D_proj only (no noisy branches): the map FLGCL turns into D_X. (B, h, w)."""
    return inner_product_map(self._norm(self.f(self.encode(vgg_variables, y_enh))),
                             self._norm(self.f_bg(self.encode(vgg_variables, y_bg))))

  def __call__(self, vgg_variables: Any, y_enh: jax.Array, y_bg: jax.Array, key: jax.Array
               ) -> dict[str, jax.Array]:
    """The four similarity maps of Eq. 4.

    Args:
      vgg_variables: frozen `VGG16Features` variables (at least up to `encoder_layer`).
      y_enh: (B, H, W, 3) Y' = G(X, Y_BG) in [0, 1].
      y_bg: (B, H, W, 3) Y_BG in [0, 1].
      key: PRNG key for the noise z.

    Returns:
      {'d_orig', 'd_proj', 'd_self_y', 'd_self_bg'}: (B, H/4, W/4) float32 maps for relu3_3
      (cosine similarities in [-1, 1] when `normalize`).
    """
    if y_enh.shape != y_bg.shape:
      raise ValueError(f"Y' and Y_BG differ in shape: {y_enh.shape} vs {y_bg.shape}")
    k_y, k_bg = jax.random.split(key)
    z_y = self.noise_mean + self.noise_sigma * jax.random.normal(k_y, y_enh.shape, y_enh.dtype)
    z_bg = self.noise_mean + self.noise_sigma * jax.random.normal(k_bg, y_bg.shape, y_bg.dtype)
    # One encoder pass over all four images.
    e = self.encode(vgg_variables, jnp.concatenate([y_enh, y_bg, y_enh + z_y, y_bg + z_bg], 0))
    e_y, e_bg, e_y_noisy, e_bg_noisy = jnp.split(e, 4, axis=0)
    p_y = self._norm(self.f(e_y))
    p_y_noisy = self._norm(self.f(e_y_noisy))
    p_bg = self._norm(self.f_bg(e_bg))
    p_bg_noisy = self._norm(self.f_bg(e_bg_noisy))
    return {
        "d_orig": inner_product_map(self._norm(e_y), self._norm(e_bg)),
        "d_proj": inner_product_map(p_y, p_bg),
        "d_self_y": inner_product_map(p_y, p_y_noisy),
        "d_self_bg": inner_product_map(p_bg, p_bg_noisy),
    }
