"""SKF's semantic-guided colour histogram (SCH) loss.

Paper: Wu et al., "Learning Semantic-Aware Knowledge Guidance for Low-Light Image Enhancement",
CVPR 2023, Sec. 3.3, Eqs. 6-10. Reference code:
langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement `DRBN_SKF/src/loss/myloss.py`,
`LLFlow_SKF/code/models/modules/loss.py`, `SNR_SKF/models/loss.py` (`SoftHistogram`, `hist_loss`).

For image n, class c and colour channel i, the pixels of class c (argmax of the frozen
segmentation) give a soft histogram of 256 bins on [0, 1]:

  h_k = sum_j sigmoid(400 (x_j - c_k + d/2)) - sigmoid(400 (x_j - c_k - d/2)),
  d = 1/256, c_k = (k + 0.5) d,

un-normalised (a pixel adds about 1 in total). The term is mean_k |h_k(output) - h_k(target)|;
empty classes give 0. Per image the terms are summed over classes and channels and divided by H*W
(LLFlow-SKF, SNR-SKF) or by K*H*W*3 with K the number of classes (DRBN-SKF): `normalization`. The
batch mean of the per-example values returned here is the released (batch-summed, N-divided)
value.

Which image is segmented is the caller's business; the released trainers differ: DRBN-SKF
segments its enhanced output (`seg_model(phr1)` in `trainer_seg_hist_fuse.py`), SNR-SKF the ground
truth (`seg_model(GT)` in `train.py`). The class assignment is a hard argmax: no gradient reaches
the segmentation.

Memory: the released loop builds a (256, pixels) matrix per (image, class, channel). Here the bins
are processed `bins_per_step` at a time (`lax.map` over 256 / bins_per_step steps, rematerialised
in the backward pass), and classes enter through one (pixels x K) one-hot matmul per step, so no
(B, K, 3, 256, H, W) tensor exists. XLA's memory analysis of the jitted value-and-gradient at
B=4, 256x256x3, K=59 puts the temporaries at 303 MiB with bins_per_step=16 (123 MiB with 4, 543 MiB
with 32): about B*H*W*(4*K + 60*bins_per_step) bytes, the float32 one-hot class weights plus five
(B, H*W, 3, bins_per_step) sigmoid tables of one step; the inputs add 65 MiB. The materialised
(4, 59, 3, 256, 256, 256) float32 tensor would be 47.5 GB. `tests/losses/test_skf_histogram.py`
keeps this bound.

Numerics: each bin is computed as kappa * sigmoid(a) * sigmoid(-b) (a, b the two edge arguments,
kappa = 1 - exp(-400/256)), equal to the released sigmoid(a) - sigmoid(b) but without its
cancellation in the tails, and the sigmoid's derivative as sigmoid(x) sigmoid(-x). In float32 the
released difference rounds the tails of the histograms, whose signs then decide the L1 gradient:
this form gives the float64 reference's gradient to 2.4e-7 of its maximum (the plain form, 8e-6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_BINS = 256
SLOPE = 400.0  # The paper's "sigma": the slope of the sigmoids.
# Port note: the paper removes pixels near class boundaries (Sec. 3.3, "we refine the patch group
# ... without edge pixels"), without a radius; the released code removes none (edge_radius=0). We
# drop pixels within Chebyshev distance 2 of another class: HRNet predicts at stride 4 and its
# map is upsampled x4 bilinearly, so its argmax boundaries are only placed to within about half a
# stride (2 px) on either side.
DEFAULT_EDGE_RADIUS = 2
RELEASED_EDGE_RADIUS = 0
# sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), and b - a = -SLOPE / NUM_BINS
# for neighbouring edges: a product without the cancellation of the released difference.
_KAPPA = float(1.0 - np.exp(-SLOPE / NUM_BINS))
NORMALIZATIONS = ("llflow", "drbn")  # SNR-SKF normalises like LLFlow-SKF.


@jax.custom_jvp
def _sigmoid(x: jax.Array) -> jax.Array:
  """`jax.nn.sigmoid` whose derivative is sigmoid(x) * sigmoid(-x), accurate in both tails.

  The default derivative t * (1 - t) loses all precision where t rounds to 1 (x > ~9 in float32):
  a pixel's histogram gradient is a difference of such derivatives at neighbouring bin edges.
  """
  return jax.nn.sigmoid(x)


@_sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  y = jax.nn.sigmoid(x)
  return y, y * jax.nn.sigmoid(-x) * t


def class_labels(seg_map: jax.Array) -> jax.Array:
  """Argmax class per pixel, ties to the lowest index; (B, H, W, K) -> (B, H, W) int32."""
  return jax.lax.stop_gradient(jnp.argmax(seg_map, axis=-1).astype(jnp.int32))


def interior_mask(labels: jax.Array, edge_radius: int) -> jax.Array:
  """True where every pixel within Chebyshev distance `edge_radius` has the same label.

  This is each class mask eroded by a (2r+1) x (2r+1) square, all classes at once: a pixel keeps
  its class iff the window's max label equals its min label. Pixels outside the image are ignored
  (the image border is not a class boundary). `edge_radius=0` keeps every pixel.

  Args:
    labels: (B, H, W) integer labels.
    edge_radius: r >= 0.

  Returns:
    (B, H, W) bool.
  """
  if edge_radius < 0:
    raise ValueError(f"edge_radius must be >= 0, got {edge_radius}")
  if edge_radius == 0:
    return jnp.ones(labels.shape, bool)
  labels = labels.astype(jnp.int32)
  r = edge_radius
  window, strides, pad = (1, 2 * r + 1, 2 * r + 1), (1, 1, 1), ((0, 0), (r, r), (r, r))
  info = jnp.iinfo(jnp.int32)
  hi = jax.lax.reduce_window(labels, info.min, jax.lax.max, window, strides, pad)
  lo = jax.lax.reduce_window(labels, info.max, jax.lax.min, window, strides, pad)
  return hi == lo


def soft_histograms(values: jax.Array, weights: jax.Array, *,
                    bins_per_step: int = 16) -> jax.Array:
  """Weighted soft histograms, 256 bins on [0, 1], one per (image, weight column, channel).

  Args:
    values: (B, P, C) pixel values (float32).
    weights: (B, P, K) per-pixel weights of each histogram (0/1 class masks here).
    bins_per_step: bins computed per step of the loop; divides 256. Trades memory for speed.

  Returns:
    (B, K, C, 256): h[b, k, c, n] = sum_p weights[b, p, k] (sigmoid(400 (x - e_n)) -
    sigmoid(400 (x - e_{n+1}))), x = values[b, p, c], with bin edges e_n = n/256. This equals the
    released `x - c_n +- d/2` form (the edges are the centres -+ half a bin), evaluated as the
    cancellation-free product of the module docstring.
  """
  if NUM_BINS % bins_per_step:
    raise ValueError(f"bins_per_step must divide {NUM_BINS}, got {bins_per_step}")
  b, p, c = values.shape
  k = weights.shape[-1]
  steps = NUM_BINS // bins_per_step
  values = values.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  offsets = jnp.arange(bins_per_step + 1, dtype=jnp.float32)

  # Rematerialised: the backward pass recomputes one step's sigmoid table instead of keeping all.
  @jax.checkpoint
  def step(first_bin):
    edges = (first_bin.astype(jnp.float32) + offsets) / NUM_BINS  # exact dyadic edges
    a = SLOPE * (values[..., None] - edges)  # (B, P, C, bins_per_step + 1)
    kernel = _KAPPA * _sigmoid(a[..., :-1]) * _sigmoid(-a[..., 1:])
    return jnp.einsum("bpk,bpcn->bkcn", weights, kernel, precision=jax.lax.Precision.HIGHEST)

  hist = jax.lax.map(step, jnp.arange(steps, dtype=jnp.int32) * bins_per_step)  # (S, B, K, C, n)
  return jnp.moveaxis(hist, 0, 3).reshape(b, k, c, NUM_BINS)


def semantic_histogram_terms(labels: jax.Array, enhanced: jax.Array, target: jax.Array, *,
                             num_classes: int, edge_radius: int = DEFAULT_EDGE_RADIUS,
                             bins_per_step: int = 16) -> jax.Array:
  """The per-(image, class, channel) L1 terms: mean over bins of |h(enhanced) - h(target)|.

  Args:
    labels: (B, H, W) integer class ids in [0, num_classes) (other ids belong to no class).
    enhanced: (B, H, W, C) enhanced image (NHWC).
    target: (B, H, W, C) ground truth.
    num_classes: K.
    edge_radius: boundary pixels removed within this Chebyshev distance of another class
      (`interior_mask`); 0 reproduces the released code.
    bins_per_step: see `soft_histograms`.

  Returns:
    (B, K, C) float32; empty classes give exactly 0.
  """
  if enhanced.shape != target.shape or enhanced.shape[:3] != labels.shape:
    raise ValueError(f"shapes differ: labels {labels.shape}, enhanced {enhanced.shape}, "
                     f"target {target.shape}")
  b, h, w, c = enhanced.shape
  labels = jax.lax.stop_gradient(labels.astype(jnp.int32))
  keep = interior_mask(labels, edge_radius)
  onehot = (labels[..., None] == jnp.arange(num_classes, dtype=jnp.int32)) & keep[..., None]
  weights = onehot.reshape(b, h * w, num_classes).astype(jnp.float32)
  h_out = soft_histograms(enhanced.reshape(b, h * w, c), weights, bins_per_step=bins_per_step)
  h_ref = soft_histograms(target.reshape(b, h * w, c), weights, bins_per_step=bins_per_step)
  return jnp.mean(jnp.abs(h_out - h_ref), axis=-1)


def semantic_histogram_loss(seg_map: jax.Array, enhanced: jax.Array, target: jax.Array, *,
                            normalization: str = "llflow",
                            edge_radius: int = DEFAULT_EDGE_RADIUS,
                            bins_per_step: int = 16) -> jax.Array:
  """The SCH loss per example.

  Args:
    seg_map: (B, H, W, K) segmentation scores (softmax map or logits: only the argmax is used) at
      the images' size.
    enhanced: (B, H, W, 3) enhanced image in [0, 1] (NHWC).
    target: (B, H, W, 3) ground truth.
    normalization: 'llflow' divides each image's summed terms by H*W (LLFlow-SKF and SNR-SKF,
      `Sum terms / (N*H*W)` over the batch); 'drbn' by K*H*W*3 (DRBN-SKF, `/ (N*C*H*W*3)`).
    edge_radius: pixels within this Chebyshev distance of another class are left out (the paper);
      0 reproduces the released code, which keeps them.
    bins_per_step: memory/speed trade-off of the histogram loop (see `soft_histograms`).

  Returns:
    (B,) float32; the batch mean is the released scalar (before the trainers' weights: 1 in
    DRBN-SKF, 1000 in LLFlow-SKF, 10000 every 50th step in SNR-SKF).
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  if seg_map.shape[:3] != enhanced.shape[:3]:
    raise ValueError(f"segmentation map {seg_map.shape[:3]} and images {enhanced.shape[:3]} "
                     "differ in size; resize the map to the images first")
  _, h, w, c = enhanced.shape
  k = seg_map.shape[-1]
  terms = semantic_histogram_terms(class_labels(seg_map), enhanced, target, num_classes=k,
                                   edge_radius=edge_radius, bins_per_step=bins_per_step)
  divisor = h * w if normalization == "llflow" else k * h * w * c
  return terms.sum(axis=(1, 2)) / divisor
