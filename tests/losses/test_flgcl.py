"""DMGNIE losses: map distributions, Eq. 4 terms, FLGCL sampling / InfoNCE, GAN (hand checks)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.losses import flgcl


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _square_map(h=16, w=16, lo=4, hi=12):
  m = np.zeros((1, h, w), np.float32)
  m[:, lo:hi, lo:hi] = 1.0
  return jnp.asarray(m / m.sum())


# ----------------------------------------------------------------------------- distributions


def test_to_distribution_and_foreground_direction():
  d = np.full((2, 4, 5), 0.9, np.float32)
  d[0, 1, 2] = -0.5  # dissimilar to the background -> foreground
  p = flgcl.to_distribution(jnp.asarray(d), 0.1)
  np.testing.assert_allclose(np.asarray(p).reshape(2, -1).sum(-1), 1.0, rtol=1e-6)
  fg = np.asarray(flgcl.foreground_distribution(jnp.asarray(d), 0.1))
  assert np.unravel_index(fg[0].argmax(), fg[0].shape) == (1, 2)
  np.testing.assert_allclose(fg[0, 1, 2], 1 / (1 + 19 * np.exp(-14.0)), rtol=1e-5)
  np.testing.assert_allclose(fg[1], 1 / 20, rtol=1e-6)  # constant map -> uniform
  assert np.asarray(p)[0, 1, 2] < 1e-5  # the plain softmax points the other way


def test_background_distribution_is_the_complement():
  bg = np.asarray(flgcl.background_distribution(_square_map()))
  assert np.all(bg[:, 4:12, 4:12] == 0)
  np.testing.assert_allclose(bg[0][bg[0] > 0], 1 / (256 - 64), rtol=1e-6)
  flat = np.asarray(flgcl.background_distribution(jnp.full((1, 3, 3), 1 / 9)))
  np.testing.assert_allclose(flat, 1 / 9, rtol=1e-6)  # no complement -> uniform, not NaN


# ----------------------------------------------------------------------------- Eq. 4


def test_fgmap_terms_known_values():
  const = jnp.full((2, 4, 6), 0.3)
  total, t = flgcl.fgmap_loss(const, const, const, const, beta1=0.1, beta2=0.2, beta3=0.3)
  np.testing.assert_allclose(np.asarray(t["kl"]), 0.0, atol=1e-6)
  for k in ("entropy_proj", "entropy_self_y", "entropy_self_bg"):
    np.testing.assert_allclose(np.asarray(t[k]), np.log(24), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(t["tv"]), 0.0, atol=0)
  np.testing.assert_allclose(np.asarray(total), 0.1 * np.log(24) - 0.2 * 2 * np.log(24),
                             rtol=1e-5)
  tv = flgcl.total_variation(jnp.asarray([[[0.0, 1.0], [2.0, 4.0]]]))
  np.testing.assert_allclose(np.asarray(tv), [2.5 + 1.5])  # vertical |2|,|3|; horizontal |1|,|2|
  # Equal non-constant maps: KL 0, entropy below log n.
  d = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 4, 6)), jnp.float32)
  _, t = flgcl.fgmap_loss(jnp.zeros_like(d), d, d, d, beta1=0, beta2=0, beta3=0)
  _, t_eq = flgcl.fgmap_loss(d, d, d, d, beta1=0, beta2=0, beta3=0)
  np.testing.assert_allclose(np.asarray(t_eq["kl"]), 0.0, atol=1e-6)
  assert float(t["kl"][0]) > 0.1 and float(t["entropy_proj"][0]) < np.log(24) - 0.1


def test_fgmap_total_matches_numpy():
  rng = np.random.default_rng(1)
  maps = [rng.uniform(-1, 1, (2, 3, 4)).astype(np.float32) for _ in range(4)]
  tau, b1, b2, b3 = 0.2, 0.3, 0.05, 0.7
  total, terms = flgcl.fgmap_loss(*map(jnp.asarray, maps), beta1=b1, beta2=b2, beta3=b3, tau=tau)
  for b in range(2):
    p = [_softmax(-m[b].ravel() / tau) for m in maps]  # orig, proj, self_y, self_bg
    ent = lambda q: -np.sum(q * np.log(q))
    kl = np.sum(p[1] * np.log(p[1] / p[0]))
    dp = maps[1][b]
    tv = np.abs(np.diff(dp, axis=0)).mean() + np.abs(np.diff(dp, axis=1)).mean()
    ref = kl + b1 * ent(p[1]) - b2 * (ent(p[2]) + ent(p[3])) + b3 * tv
    np.testing.assert_allclose(float(terms["kl"][b]), kl, rtol=1e-4)
    np.testing.assert_allclose(float(terms["tv"][b]), tv, rtol=1e-5)
    np.testing.assert_allclose(float(total[b]), ref, rtol=1e-4)


# ----------------------------------------------------------------------------- sampling


def test_anchors_follow_the_map():
  one_hot = np.zeros((2, 5, 7), np.float32)
  one_hot[0, 3, 1] = 1.0
  one_hot[1, 0, 6] = 1.0
  a = np.asarray(flgcl.sample_anchors(jax.random.key(0), jnp.asarray(one_hot), 32))
  assert a.shape == (2, 32, 2) and a.dtype == np.int32
  assert np.all(a[0] == [3, 1]) and np.all(a[1] == [0, 6])
  # Empirical frequencies follow the map; zero cells are never drawn.
  p = np.zeros((1, 4, 4), np.float32)
  p[0, 0, 0], p[0, 2, 3], p[0, 3, 1] = 0.5, 0.3, 0.2
  n = 20000
  a = np.asarray(jax.jit(flgcl.sample_anchors, static_argnums=2)(jax.random.key(1),
                                                                  jnp.asarray(p), n))[0]
  counts = np.zeros((4, 4))
  np.add.at(counts, (a[:, 0], a[:, 1]), 1)
  assert counts.sum() == n and counts[p[0] == 0].sum() == 0
  np.testing.assert_allclose(counts[p[0] > 0] / n, p[0][p[0] > 0], atol=0.015)


def test_positives_within_radius_and_clipped():
  h, w, r, m = 9, 11, 2, 6
  anchors = jnp.asarray([[[4, 5], [0, 0], [8, 10], [4, 0]]], jnp.int32)
  pos = np.asarray(jax.jit(flgcl.sample_positives, static_argnums=(2, 3, 4, 5))(
      jax.random.key(0), anchors, r, m, h, w))
  assert pos.shape == (1, 4, m, 2)
  assert pos[..., 0].min() >= 0 and pos[..., 0].max() < h
  assert pos[..., 1].min() >= 0 and pos[..., 1].max() < w
  cheb = np.abs(pos - np.asarray(anchors)[:, :, None]).max(-1)
  assert cheb.max() <= r
  # Interior anchor: many draws cover exactly the 24 non-centre cells of the 5x5 square.
  many = np.asarray(flgcl.sample_positives(jax.random.key(1), anchors[:, :1], r, 4000, h, w))
  offsets = {tuple(o) for o in (many[0, 0] - [4, 5])}
  assert offsets == {(i, j) for i in range(-2, 3) for j in range(-2, 3)} - {(0, 0)}
  with pytest.raises(ValueError, match="radius"):
    flgcl.sample_positives(jax.random.key(1), anchors, 0, 2, h, w)


def test_negatives_avoid_the_foreground():
  neg = np.asarray(jax.jit(flgcl.sample_negatives, static_argnums=2)(
      jax.random.key(0), _square_map(), 4096))
  assert neg.shape == (1, 4096, 2)
  inside = (neg[0, :, 0] >= 4) & (neg[0, :, 0] < 12) & (neg[0, :, 1] >= 4) & (neg[0, :, 1] < 12)
  assert not inside.any()
  assert len({tuple(q) for q in neg[0]}) > 150  # spread over the 192 background cells


# ----------------------------------------------------------------------------- InfoNCE


def test_infonce_two_anchor_hand_computation():
  v = {"a": [1.0, 0.0, 0.0], "b": [0.6, 0.8, 0.0], "c": [0.0, 1.0, 0.0], "d": [0.0, 0.0, 1.0],
       "e": [0.0, -0.6, 0.8], "f": [-1.0, 0.0, 0.0]}
  grid = [["a", "b", "c"], ["d", "e", "f"]]
  feats = jnp.asarray([[[v[k] for k in row] for row in grid]], jnp.float32)  # (1, 2, 3, 3)
  anchors = jnp.asarray([[[0, 0], [1, 1]]])                 # a, e
  positives = jnp.asarray([[[[0, 1], [1, 0]], [[0, 2], [1, 0]]]])  # (b, d), (c, d)
  negatives = jnp.asarray([[[1, 2], [0, 2]]])               # f, c
  tau = 0.5
  loss = float(flgcl.flgcl_infonce(feats, anchors, positives, negatives, tau=tau)[0])
  vec = lambda k: np.asarray(v[k])
  terms = []
  for a, ps in (("a", ("b", "d")), ("e", ("c", "d"))):
    negs = np.exp([vec(a) @ vec(n) / tau for n in ("f", "c")])
    for p in ps:
      sp = np.exp(vec(a) @ vec(p) / tau)
      terms.append(-np.log(sp / (sp + negs.sum())))
  # e.g. anchor a, positive b: -log(e^1.2 / (e^1.2 + e^-2 + e^0)).
  np.testing.assert_allclose(terms[0], -np.log(np.exp(1.2) / (np.exp(1.2) + np.exp(-2) + 1)))
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-6)


def test_infonce_orthogonal_features_is_log_n_plus_1():
  n_neg, k, m = 40, 5, 3
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 64)))
  feats = jnp.asarray(q.reshape(1, 8, 8, 64), jnp.float32)  # 64 mutually orthogonal unit vectors
  cells = np.random.default_rng(1).permutation(64)
  pos2d = lambda c: np.stack([c // 8, c % 8], -1)
  anchors = jnp.asarray(pos2d(cells[:k])[None])
  positives = jnp.asarray(pos2d(cells[k:k + k * m]).reshape(1, k, m, 2))
  negatives = jnp.asarray(pos2d(np.resize(cells[k + k * m:], n_neg))[None])
  loss = float(flgcl.flgcl_infonce(feats, anchors, positives, negatives, tau=0.07)[0])
  np.testing.assert_allclose(loss, np.log(n_neg + 1), rtol=1e-4)


def test_infonce_detaches_keys():
  feats = np.random.default_rng(0).normal(size=(1, 4, 4, 8))
  feats = jnp.asarray(feats / np.linalg.norm(feats, axis=-1, keepdims=True), jnp.float32)
  anchors, positives, negatives = (jnp.asarray([[[1, 1]]]), jnp.asarray([[[[1, 2]]]]),
                                   jnp.asarray([[[3, 3], [0, 0]]]))
  f = lambda x, detach: flgcl.flgcl_infonce(x, anchors, positives, negatives, tau=1.0,
                                            detach_keys=detach)[0]
  grad = jax.jit(jax.grad(f), static_argnums=1)
  g = np.asarray(grad(feats, True))[0]
  assert np.abs(g[1, 1]).max() > 0
  assert np.abs(g[1, 2]).max() == 0 and np.abs(g[3, 3]).max() == 0
  g = np.asarray(grad(feats, False))[0]
  assert np.abs(g[1, 2]).max() > 0 and np.abs(g[3, 3]).max() > 0


def test_multiscale_one_hot_features_and_alignment():
  fg = _square_map(16, 16, 6, 10)
  eye = np.eye(256, dtype=np.float32)
  layers = [jnp.asarray(eye.reshape(1, 16, 16, 256)),
            jnp.asarray(eye[np.random.default_rng(0).permutation(256)].reshape(1, 16, 16, 256))]
  run = jax.jit(functools.partial(flgcl.multiscale_flgcl, num_anchors=8, num_positives=3,
                                  num_negatives=32, radius=1))
  mean, per = run(jax.random.key(0), layers, fg)
  # All vectors orthogonal, negatives never at an anchor (the map is flat on its support, so its
  # complement is 0 there), positives never the anchor itself.
  assert len(per) == 2
  for loss in per:
    np.testing.assert_allclose(np.asarray(loss), np.log(33), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(mean), np.log(33), rtol=1e-5)

  # Foreground features agree and differ from the background: the loss is small (only positives
  # that fall off the square's border cost log(N + 1); about 12% of pairs for a 12x12 square and
  # r = 1); unstructured features cost far more.
  fg = _square_map(16, 16, 2, 14)
  f = np.zeros((1, 16, 16, 2), np.float32)
  f[..., 1] = 1.0
  f[0, 2:14, 2:14] = [1.0, 0.0]
  ident = lambda l, x: x
  run = jax.jit(functools.partial(flgcl.multiscale_flgcl, radius=1, project=ident))
  good, _ = run(jax.random.key(1), [jnp.asarray(f)], fg)
  assert float(good[0]) < 0.2 * np.log(257)
  noise = np.random.default_rng(2).normal(size=(1, 16, 16, 2))
  noise /= np.linalg.norm(noise, axis=-1, keepdims=True)
  bad, _ = run(jax.random.key(1), [jnp.asarray(noise, jnp.float32)], fg)
  assert float(bad[0]) > 3 * float(good[0])


def test_resize_distribution():
  fg = _square_map(16, 16, 4, 12)
  r = np.asarray(flgcl.resize_distribution(fg, (8, 8)))
  np.testing.assert_allclose(r.sum(), 1.0, rtol=1e-6)
  assert r[0, 3, 3] > 0 and r[0, 0, 0] == 0
  assert flgcl.resize_distribution(fg, (16, 16)) is fg


# ----------------------------------------------------------------------------- GAN / cycle


def test_gan_loss_values():
  zeros = jnp.zeros((2, 3, 3, 1))
  for real in (True, False):
    np.testing.assert_allclose(np.asarray(flgcl.gan_loss(zeros, real)), np.log(2), rtol=1e-6)
  x = jnp.asarray([[2.0, -1.0], [0.5, 0.5]]).reshape(2, 2, 1, 1)
  sig = lambda z: 1 / (1 + np.exp(-z))
  np.testing.assert_allclose(np.asarray(flgcl.gan_loss(x, True, "log")),
                             [-(np.log(sig(2)) + np.log(sig(-1))) / 2, -np.log(sig(0.5))],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(flgcl.gan_loss(x, False, "log")),
                             [-(np.log(1 - sig(2)) + np.log(1 - sig(-1))) / 2,
                              -np.log(1 - sig(0.5))], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(flgcl.gan_loss(x, True, "lsgan")), [(1 + 4) / 2, 0.25])
  np.testing.assert_allclose(np.asarray(flgcl.gan_loss(x, False, "lsgan")), [(4 + 1) / 2, 0.25])
  np.testing.assert_allclose(np.asarray(flgcl.discriminator_loss(x, zeros[:, :2, :1], "lsgan")),
                             [0.5 * 2.5, 0.5 * 0.25])
  np.testing.assert_allclose(np.asarray(flgcl.generator_gan_loss(x)),
                             np.asarray(flgcl.gan_loss(x, True)))
  with pytest.raises(ValueError, match="mode"):
    flgcl.gan_loss(x, True, "wgan")


def test_cycle_loss():
  x = jnp.zeros((2, 2, 2, 3))
  y = x.at[1].set(0.5)
  np.testing.assert_allclose(np.asarray(flgcl.cycle_loss(x, y)), [0.0, 0.5])
