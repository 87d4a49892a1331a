"""DMGNIE stage-2 losses: foreground map (Eq. 4), FLGCL InfoNCE (Eqs. 5-8), GAN (9), cycle (1).

Paper: DMGNIE, "Daytime-Memory Guided Nighttime Image Enhancement" (seed 000_f6de8f8b0015d52c),
"Preliminaries" (Eq. 1), "Foreground Localization-guided Contrastive Learning" (Eqs. 4-8) and "Model
Optimization" (Eqs. 9-10). The contrastive part follows CUT (Park et al., ECCV 2020;
taesungp/contrastive-unpaired-translation `models/patchnce.py`, `models/networks.py` PatchSampleF).
No public DMGNIE code exists; each open choice is an argument with a default, documented here.

Maps -> distributions. The Siamese maps (`models.fg_localization`) are per-position cosine
similarities between Y' and Y_BG: HIGH similarity = background. A map d (B, h, w) becomes a
distribution over the h*w positions of each image by `to_distribution(d, tau) = softmax(d / tau)`.
Port note: the paper calls D_X a "foreground probability distribution map" obtained from the
Siamese network and Dproj "for locating the foreground objects", so we read
D_X = softmax(-D_proj / tau_map) (`foreground_distribution`): low similarity to the background ->
high foreground probability. Eq. 4 is evaluated on the same (negated) orientation for all four maps,
so the sparsity term concentrates D_X on few (foreground) positions.
The background distribution D^_X = Normalize(-D_X) (Eq. 6) is read as the min-max complement
(max D_X - D_X) / sum(max D_X - D_X) (`background_distribution`): it is zero exactly where D_X peaks
and is a proper distribution (a softmax of -D_X would be nearly uniform, since D_X ~ 1/(h w)).

Eq. 4, L_FGMap = KL(Dproj || Dorig) + b1 H(Dproj) - b2 (H(Dself_Y) + H(Dself_BG)) + b3 TV(Dproj):
KL and the entropies on the distributions above; TV on the raw D_proj map (cosine values), the
mean absolute horizontal plus vertical difference, so b3 does not depend on the map size.

Eqs. 5-8 (FLGCL), on generator-encoder features X^(l) at each tap l:
- K anchors p_k ~ D_X (resized to the layer), with replacement (`sample_anchors`): static shapes
  under jit, and small objects may cover fewer than K cells.
- M positives per anchor uniformly among the (2r+1)^2 - 1 cells at Chebyshev distance 1..r
  (a square patch neighbourhood on the feature grid; the anchor itself is excluded because a
  positive equal to the anchor carries no signal), clipped to the map (`sample_positives`).
- N negatives q_n ~ D^_X, shared by all anchors of the image, with replacement
  (`sample_negatives`).
- Eq. 8 (garbled in the paper) is read as InfoNCE: for each anchor a and each of its positives p,
  -log exp(a.p / tau) / (exp(a.p / tau) + sum_n exp(a.q_n / tau)), i.e. CUT's cross-entropy with
  logits [pos, negs] / tau and label 0, averaged (not summed) over anchors and positives: a sum
  only rescales gamma3. Features are the PatchProjector's L2-normalised 256-d vectors (CUT).
  Keys (positives, negatives) are stop-gradient'ed by default, as CUT's `feat_k.detach()`.
  Port note: anchors, positives and negatives all come from the features of X (the paper's
  reading); `query_features` optionally takes the anchors from another map (CUT takes queries
  from the encoded output G(X) and keys from X).

Eq. 9 is read as the standard (log) GAN loss (the paper's "E[D_G(Y)]" lacks its log); the
discriminator returns logits and the losses use the sigmoid cross-entropy. The generator side is
the non-saturating form (target "real"), as in CycleGAN/CUT's `GANLoss`. 'lsgan' is offered since
CycleGAN and CUT default to it.

Defaults (paper gives none):
- NCE_TAU = 0.07: CUT's --nce_T.
- MAP_TAU = 0.1: the maps are cosines in [-1, 1]; 0.1 spreads them over a factor e^20 in
  probability, enough to single out dissimilar (foreground) cells, whereas tau = 1 would leave the
  distribution nearly uniform.
- NUM_ANCHORS K = 64, NUM_POSITIVES M = 4: K * M = 256 positive pairs per layer, CUT's 256 patches.
- NUM_NEGATIVES N = 256: CUT contrasts each query with the other 255 sampled patches of its image.
- RADIUS r = 2 feature cells: at the H/4 taps that is 8 px, inside a typical vehicle/pedestrian of
  a surveillance frame, so positives stay on the same object.
- BETA1 = BETA2 = BETA3 = 0.1: the KL term to the frozen encoder's map anchors D_proj; the
  sparsity, noise-robustness and smoothness regularisers are kept an order of magnitude weaker so
  they shape it without collapsing it.
- CYCLE_WEIGHT gamma1 = 10 (CycleGAN's lambda), FGMAP_WEIGHT gamma2 = 1, NCE_WEIGHT gamma3 = 1
  (CUT's lambda_NCE).

All functions are pure; losses return per-example values (B,) that the trainer averages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

NCE_TAU = 0.07
MAP_TAU = 0.1
NUM_ANCHORS = 64
NUM_POSITIVES = 4
NUM_NEGATIVES = 256
RADIUS = 2
BETA1 = 0.1
BETA2 = 0.1
BETA3 = 0.1
CYCLE_WEIGHT = 10.0
FGMAP_WEIGHT = 1.0
NCE_WEIGHT = 1.0
GAN_MODES = ("log", "lsgan")


# ----------------------------------------------------------------------------- maps


def _flat(d: jax.Array) -> jax.Array:
  if d.ndim != 3:
    raise ValueError(f"expected a (B, h, w) map, got {d.shape}")
  return d.reshape(d.shape[0], -1).astype(jnp.float32)


def to_distribution(d: jax.Array, tau: float = MAP_TAU) -> jax.Array:
  """softmax(d / tau) over the h*w positions of each image: (B, h, w) -> (B, h, w), sums to 1."""
  return jax.nn.softmax(_flat(d) / tau, axis=-1).reshape(d.shape)


def foreground_distribution(d_proj: jax.Array, tau: float = MAP_TAU) -> jax.Array:
  """D_X = softmax(-D_proj / tau): low Y'/Y_BG similarity -> high foreground probability."""
  return to_distribution(-d_proj, tau)


def background_distribution(prob: jax.Array) -> jax.Array:
  """D^_X = Normalize(-D_X) read as (max D_X - D_X) / sum(.) per image; uniform if D_X is flat.

  Zero exactly at the cells where D_X is maximal: for a D_X that is flat on its support (a mask)
  that is the whole foreground; for a softmax map, cells of lower foreground probability keep a
  correspondingly small weight.
  """
  p = _flat(prob)
  c = jnp.max(p, axis=-1, keepdims=True) - p
  total = jnp.sum(c, axis=-1, keepdims=True)
  uniform = jnp.full_like(c, 1.0 / c.shape[-1])
  return jnp.where(total > 0, c / jnp.where(total > 0, total, 1.0), uniform).reshape(prob.shape)


def entropy(log_p: jax.Array) -> jax.Array:
  """H(p) = -sum p log p from log-probabilities (B, n) -> (B,)."""
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def kl_divergence(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """KL(p || q) = sum p (log p - log q) from log-probabilities (B, n) -> (B,)."""
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def total_variation(d: jax.Array) -> jax.Array:
  """Mean |d[i+1, j] - d[i, j]| + mean |d[i, j+1] - d[i, j]| per image: (B, h, w) -> (B,)."""
  d = d.astype(jnp.float32)
  tv_h = jnp.mean(jnp.abs(d[:, 1:, :] - d[:, :-1, :]), axis=(1, 2)) if d.shape[1] > 1 else 0.0
  tv_w = jnp.mean(jnp.abs(d[:, :, 1:] - d[:, :, :-1]), axis=(1, 2)) if d.shape[2] > 1 else 0.0
  return tv_h + tv_w


def fgmap_loss(d_orig: jax.Array, d_proj: jax.Array, d_self_y: jax.Array, d_self_bg: jax.Array, *,
               beta1: float = BETA1, beta2: float = BETA2, beta3: float = BETA3,
               tau: float = MAP_TAU) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 4 on the Siamese maps (B, h, w) (module docstring: orientation, TV).

  Each map m becomes log softmax(-m / tau) over positions; D_orig carries no trainable projector
  but is not stop-gradient'ed here (callers decide whether G receives this gradient).

  Returns:
    (total (B,), {'kl', 'entropy_proj', 'entropy_self_y', 'entropy_self_bg', 'tv'} each (B,)).
  """
  lp = {k: jax.nn.log_softmax(-_flat(m) / tau, axis=-1) for k, m in
        (("orig", d_orig), ("proj", d_proj), ("self_y", d_self_y), ("self_bg", d_self_bg))}
  terms = {
      "kl": kl_divergence(lp["proj"], lp["orig"]),
      "entropy_proj": entropy(lp["proj"]),
      "entropy_self_y": entropy(lp["self_y"]),
      "entropy_self_bg": entropy(lp["self_bg"]),
      "tv": total_variation(d_proj),
  }
  total = (terms["kl"] + beta1 * terms["entropy_proj"]
           - beta2 * (terms["entropy_self_y"] + terms["entropy_self_bg"]) + beta3 * terms["tv"])
  return total, terms


# ----------------------------------------------------------------------------- sampling


def _sample_positions(key: jax.Array, prob: jax.Array, num: int) -> jax.Array:
  """`num` positions per image ~ prob (B, h, w), with replacement -> (B, num, 2) int32 (row, col).
  """
  b, h, w = prob.shape
  p = jax.lax.stop_gradient(_flat(prob))
  p = jnp.where(jnp.sum(p, -1, keepdims=True) > 0, p, 1.0)  # all-zero map -> uniform
  logits = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)
  flat = jax.random.categorical(key, logits[:, None, :], axis=-1, shape=(b, num))
  return jnp.stack([flat // w, flat % w], axis=-1).astype(jnp.int32)


def sample_anchors(key: jax.Array, prob_map: jax.Array, num_anchors: int = NUM_ANCHORS
                   ) -> jax.Array:
  """Eq. 5's anchors p_k ~ D_X: (B, h, w) foreground probabilities -> (B, K, 2) (row, col).

  With replacement; only positions with prob > 0 can be drawn. `num_anchors` is static.
  """
  return _sample_positions(key, prob_map, num_anchors)


def sample_positives(key: jax.Array, anchors: jax.Array, radius: int = RADIUS,
                     num_positives: int = NUM_POSITIVES, h: int | None = None,
                     w: int | None = None) -> jax.Array:
  """M positives per anchor within Chebyshev radius r (excluding the anchor), clipped to the map.

  Args:
    key: PRNG key.
    anchors: (B, K, 2) int (row, col).
    radius: r >= 1 in feature cells (static).
    num_positives: M (static).
    h, w: the map size (static), for clipping.

  Returns:
    (B, K, M, 2) int32 positions. At the border clipping may fold a neighbour onto the anchor row /
    column (or onto the anchor itself in a corner); the offsets are otherwise uniform.
  """
  if radius < 1:
    raise ValueError(f"radius must be >= 1, got {radius}")
  if h is None or w is None:
    raise ValueError("sample_positives needs the map size h, w")
  side = 2 * radius + 1
  n_off = side * side - 1
  b, k, _ = anchors.shape
  i = jax.random.randint(key, (b, k, num_positives), 0, n_off)
  i = jnp.where(i >= n_off // 2, i + 1, i)  # skip the centre cell (index n_off // 2 of side^2)
  dr, dc = i // side - radius, i % side - radius
  rows = jnp.clip(anchors[:, :, None, 0] + dr, 0, h - 1)
  cols = jnp.clip(anchors[:, :, None, 1] + dc, 0, w - 1)
  return jnp.stack([rows, cols], axis=-1).astype(jnp.int32)


def sample_negatives(key: jax.Array, prob_map: jax.Array, num_negatives: int = NUM_NEGATIVES
                     ) -> jax.Array:
  """Eq. 6's shared negatives q_n ~ D^_X = background_distribution(D_X) -> (B, N, 2)."""
  return _sample_positions(key, background_distribution(prob_map), num_negatives)


# ----------------------------------------------------------------------------- InfoNCE


def gather(features: jax.Array, positions: jax.Array) -> jax.Array:
  """features (B, h, w, C) at positions (B, ..., 2) (row, col) -> (B, ..., C)."""
  b, h, w, c = features.shape
  idx = (positions[..., 0] * w + positions[..., 1]).reshape(b, -1)
  out = jnp.take_along_axis(features.reshape(b, h * w, c), idx[..., None], axis=1)
  return out.reshape(positions.shape[:-1] + (c,))


def infonce_from_vectors(anchor: jax.Array, positive: jax.Array, negative: jax.Array, *,
                         tau: float = NCE_TAU, detach_keys: bool = True) -> jax.Array:
  """Eq. 8 on vectors: anchor (B, K, C), positive (B, K, M, C), negative (B, N, C) -> (B,).

  For every (anchor, positive): cross-entropy of logits [a.p, a.q_1..a.q_N] / tau with label 0;
  mean over K and M.
  """
  if detach_keys:
    positive, negative = jax.lax.stop_gradient(positive), jax.lax.stop_gradient(negative)
  a = anchor.astype(jnp.float32)
  l_pos = jnp.einsum("bkc,bkmc->bkm", a, positive.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
  l_neg = jnp.einsum("bkc,bnc->bkn", a, negative.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
  # logsumexp over [pos, negs] = logaddexp(pos, logsumexp(negs)).
  lse_neg = jax.nn.logsumexp(l_neg / tau, axis=-1)[:, :, None]
  loss = jnp.logaddexp(l_pos / tau, lse_neg) - l_pos / tau
  return jnp.mean(loss, axis=(1, 2))


def flgcl_infonce(features: jax.Array, anchors: jax.Array, positives: jax.Array,
                  negatives: jax.Array, *, tau: float = NCE_TAU,
                  query_features: jax.Array | None = None, detach_keys: bool = True) -> jax.Array:
  """Eq. 8 on one layer's projected, L2-normalised features (B, h, w, C).

  Args:
    features: the key map (and the anchor map unless `query_features` is given).
    anchors: (B, K, 2); positives: (B, K, M, 2); negatives: (B, N, 2) (row, col).
    tau: temperature.
    query_features: optional map (same shape) the anchors are read from (CUT-style).
    detach_keys: stop gradients through positives and negatives (CUT).

  Returns:
    (B,) losses.
  """
  q = features if query_features is None else query_features
  return infonce_from_vectors(gather(q, anchors), gather(features, positives),
                              gather(features, negatives), tau=tau, detach_keys=detach_keys)


def resize_distribution(prob: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """(B, h, w) distribution -> hw (bilinear, antialiased when shrinking), renormalised."""
  b = prob.shape[0]
  if tuple(prob.shape[1:]) == tuple(hw):
    return prob
  r = jax.image.resize(prob.astype(jnp.float32), (b,) + tuple(hw), method="linear", antialias=True)
  r = jnp.maximum(r, 0.0)
  total = jnp.sum(r, axis=(1, 2), keepdims=True)
  return jnp.where(total > 0, r / jnp.where(total > 0, total, 1.0), 1.0 / (hw[0] * hw[1]))


def multiscale_flgcl(key: jax.Array, features: Sequence[jax.Array], fg_prob: jax.Array, *,
                     num_anchors: int = NUM_ANCHORS, num_positives: int = NUM_POSITIVES,
                     num_negatives: int = NUM_NEGATIVES, radius: int = RADIUS,
                     tau: float = NCE_TAU,
                     project: Callable[[int, jax.Array], jax.Array] | None = None,
                     query_features: Sequence[jax.Array] | None = None,
                     detach_keys: bool = True) -> tuple[jax.Array, list[jax.Array]]:
  """FLGCL over the generator-encoder taps: mean over layers of Eq. 8.

  Args:
    key: PRNG key (split per layer).
    features: per layer (B, h_l, w_l, C_l) maps. With `project=None` they must already be
      projected and L2-normalised; otherwise raw, and `project(l, vectors)` (e.g.
      `PatchProjector.project` bound to its params) maps the GATHERED vectors (..., C_l) to
      normalised ones, so the MLP only runs on the K + K*M + N sampled cells, as CUT does.
    fg_prob: (B, H, W) foreground distribution D_X (e.g. `foreground_distribution(D_proj)`),
      resized to each layer and renormalised. Treated as constant (sampling has no gradient).
    num_anchors, num_positives, num_negatives, radius, tau: K, M, N, r, tau (static).
    project, query_features, detach_keys: see above and `flgcl_infonce`.

  Returns:
    (mean loss (B,), [per-layer loss (B,)]).
  """
  if query_features is not None and len(query_features) != len(features):
    raise ValueError("query_features must have one map per layer")
  fg_prob = jax.lax.stop_gradient(fg_prob)
  losses = []
  for l, feat in enumerate(features):
    _, h, w, _ = feat.shape
    k_a, k_p, k_n = jax.random.split(jax.random.fold_in(key, l), 3)
    prob = resize_distribution(fg_prob, (h, w))
    anchors = sample_anchors(k_a, prob, num_anchors)
    positives = sample_positives(k_p, anchors, radius, num_positives, h, w)
    negatives = sample_negatives(k_n, prob, num_negatives)
    qf = feat if query_features is None else query_features[l]
    a, p, n = gather(qf, anchors), gather(feat, positives), gather(feat, negatives)
    if project is not None:
      a, p, n = project(l, a), project(l, p), project(l, n)
    losses.append(infonce_from_vectors(a, p, n, tau=tau, detach_keys=detach_keys))
  return sum(losses) / len(losses), losses


# ----------------------------------------------------------------------------- GAN / cycle


def gan_loss(logits: jax.Array, target_is_real: bool, mode: str = "log") -> jax.Array:
  """Per-example GAN loss of discriminator logits (B, ...) -> (B,) (mean over patches).

  'log' (Eq. 9, default): sigmoid cross-entropy, -log sigmoid(x) for real targets and
  -log(1 - sigmoid(x)) for fake ones. 'lsgan': (x - 1)^2 or x^2 (CycleGAN/CUT's default).
  """
  x = logits.astype(jnp.float32).reshape(logits.shape[0], -1)
  if mode == "log":
    per = jax.nn.softplus(-x) if target_is_real else jax.nn.softplus(x)
  elif mode == "lsgan":
    per = jnp.square(x - 1.0) if target_is_real else jnp.square(x)
  else:
    raise ValueError(f"mode must be one of {GAN_MODES}, got {mode!r}")
  return jnp.mean(per, axis=-1)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, mode: str = "log"
                       ) -> jax.Array:
  """0.5 * (loss(real, real) + loss(fake, fake)) (CycleGAN/CUT halve the D objective). (B,)."""
  return 0.5 * (gan_loss(real_logits, True, mode) + gan_loss(fake_logits, False, mode))


def generator_gan_loss(fake_logits: jax.Array, mode: str = "log") -> jax.Array:
  """Non-saturating generator side of Eq. 9: loss(D(G(x)), real). (B,)."""
  return gan_loss(fake_logits, True, mode)


def cycle_loss(x: jax.Array, x_rec: jax.Array) -> jax.Array:
  """Eq. 1's per-direction term |F(G(x)) - x|_1, mean over pixels (CycleGAN L1Loss). (B,)."""
  return jnp.mean(jnp.abs(x_rec.astype(jnp.float32) - x.astype(jnp.float32)),
                  axis=tuple(range(1, x.ndim)))
