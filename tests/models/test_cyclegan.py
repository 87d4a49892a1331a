"""CycleGAN/CUT networks for DMGNIE: layout, torch keys, parity with torch re-creations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from lowlight_jax.models import cyclegan

HIGHEST = jax.lax.Precision.HIGHEST


# ---- PyTorch re-creations of the CycleGAN reference layouts (no_antialias, instance norm). ----


class _TorchResnetBlock(tnn.Module):

  def __init__(self, dim):
    super().__init__()
    self.conv_block = tnn.Sequential(
        tnn.ReflectionPad2d(1), tnn.Conv2d(dim, dim, 3, bias=True), tnn.InstanceNorm2d(dim),
        tnn.ReLU(True), tnn.ReflectionPad2d(1), tnn.Conv2d(dim, dim, 3, bias=True),
        tnn.InstanceNorm2d(dim))

  def forward(self, x):
    return x + self.conv_block(x)


def _torch_generator(in_nc, out_nc, ngf, n_blocks):
  layers = [tnn.ReflectionPad2d(3), tnn.Conv2d(in_nc, ngf, 7, bias=True), tnn.InstanceNorm2d(ngf),
            tnn.ReLU(True)]
  for i in range(2):
    m = 2 ** i
    layers += [tnn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1, bias=True),
               tnn.InstanceNorm2d(ngf * m * 2), tnn.ReLU(True)]
  layers += [_TorchResnetBlock(ngf * 4) for _ in range(n_blocks)]
  for i in range(2):
    m = 2 ** (2 - i)
    layers += [tnn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, stride=2, padding=1,
                                   output_padding=1, bias=True),
               tnn.InstanceNorm2d(ngf * m // 2), tnn.ReLU(True)]
  layers += [tnn.ReflectionPad2d(3), tnn.Conv2d(ngf, out_nc, 7), tnn.Tanh()]
  net = tnn.Module()
  net.model = tnn.Sequential(*layers)
  return net


def _torch_discriminator(in_nc, ndf, n_layers):
  layers = [tnn.Conv2d(in_nc, ndf, 4, 2, 1), tnn.LeakyReLU(0.2, True)]
  mult = 1
  for n in range(1, n_layers):
    prev, mult = mult, min(2 ** n, 8)
    layers += [tnn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), tnn.InstanceNorm2d(ndf * mult),
               tnn.LeakyReLU(0.2, True)]
  prev, mult = mult, min(2 ** n_layers, 8)
  layers += [tnn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), tnn.InstanceNorm2d(ndf * mult),
             tnn.LeakyReLU(0.2, True), tnn.Conv2d(ndf * mult, 1, 4, 1, 1)]
  net = tnn.Module()
  net.model = tnn.Sequential(*layers)
  return net


def _randomise(net, seed):
  """Random weights AND biases (torch zero-inits nothing here, but make biases clearly nonzero)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in net.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.2)
  return net


def _sd(net):
  return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def _nhwc(t):
  return np.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def small_generator():
  net = _randomise(_torch_generator(6, 3, ngf=8, n_blocks=2), 0).eval()
  x01 = np.random.default_rng(0).random((2, 6, 32, 32), dtype=np.float32)
  taps = (0, 1, 4, 8, 10, 11, 12)
  ref, h = {}, torch.from_numpy(2 * x01 - 1)
  with torch.no_grad():
    for i, layer in enumerate(net.model):
      inp, h = h, layer(h)
      if i in taps:
        # clone: the next ReLU(inplace=True) overwrites a norm's output.
        ref[i] = _nhwc((inp if isinstance(layer, tnn.ReflectionPad2d) else h).clone())
  return net, x01, ref, _nhwc(h)


def test_generator_plan_indices_match_cyclegan():
  keys = cyclegan.generator_torch_keys(9)
  convs = sorted({int(k.split(".")[1]) for k in keys})
  # The well-known CycleGAN resnet_9blocks netG: model.1/4/7, blocks 10-18, ConvT 19/22, conv 26.
  assert convs == [1, 4, 7] + list(range(10, 19)) + [19, 22, 26]
  assert "model.10.conv_block.5.weight" in keys and "model.26.bias" in keys
  assert len(keys) == 2 * (3 + 2 + 1) + 4 * 9


def test_default_generator_shapes_and_param_count():
  g = cyclegan.ResnetGenerator()
  x = jnp.zeros((1, 64, 64, 6))
  shapes = jax.eval_shape(g.init, jax.random.key(0), x)
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
  # torch ResnetGenerator(6, 3, 64, instance, 9 blocks) parameter count, computed by hand:
  ngf = 64
  conv = lambda i, o, k: i * o * k * k + o
  expected = (conv(6, ngf, 7) + conv(ngf, 2 * ngf, 3) + conv(2 * ngf, 4 * ngf, 3)
              + 9 * 2 * conv(4 * ngf, 4 * ngf, 3) + conv(4 * ngf, 2 * ngf, 3)
              + conv(2 * ngf, ngf, 3) + conv(ngf, 3, 7))
  assert n == expected
  feats = jax.eval_shape(lambda: g.apply(g.init(jax.random.key(0), x), x, method=g.encode))
  assert [f.shape for f in feats] == [(1, 64, 64, 6), (1, 32, 32, 128), (1, 16, 16, 256),
                                      (1, 16, 16, 256), (1, 16, 16, 256)]
  with pytest.raises(ValueError, match="multiples of 4"):
    g.init(jax.random.key(0), jnp.zeros((1, 30, 32, 6)))
  with pytest.raises(ValueError, match="6"):
    g.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parity
def test_generator_parity_with_torch(small_generator):
  net, x01, ref, out = small_generator
  params = cyclegan.params_from_torch_state(_sd(net), n_blocks=2)
  g = cyclegan.ResnetGenerator(in_channels=6, ngf=8, n_blocks=2, precision=HIGHEST)
  target = jax.eval_shape(g.init, jax.random.key(0), jnp.zeros((1, 32, 32, 6)))["params"]
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, target)
  x = jnp.asarray(x01.transpose(0, 2, 3, 1))
  y = g.apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(y), (out + 1) / 2, atol=1e-5, rtol=0)
  # Encoder taps (index 0: the un-padded, [-1, 1]-mapped input).
  taps = (0, 1, 4, 8, 10, 11, 12)
  feats = g.apply({"params": params}, x, taps, method=g.encode)
  for i, f in zip(taps, feats):
    np.testing.assert_allclose(np.asarray(f), ref[i], atol=1e-5 * max(1, np.abs(ref[i]).max()),
                               rtol=0, err_msg=f"layer {i}")
  y2, feats2 = g.apply({"params": params}, x, (4, 11), method=g.forward_with_features)
  np.testing.assert_allclose(np.asarray(y2), np.asarray(y), atol=1e-6)
  np.testing.assert_allclose(np.asarray(feats2[1]), np.asarray(feats[5]), atol=1e-6)


def test_generator_conversion_rejects_wrong_blocks(small_generator):
  sd = _sd(small_generator[0])
  with pytest.raises(ValueError, match="missing"):
    cyclegan.params_from_torch_state(sd, n_blocks=3)
  # A DataParallel prefix is accepted.
  params = cyclegan.params_from_torch_state({f"module.{k}": v for k, v in sd.items()}, n_blocks=2)
  assert set(params["model"]) == {"1", "4", "7", "10", "11", "12", "15", "19"}


@pytest.mark.parity
def test_discriminator_parity_with_torch():
  net = _randomise(_torch_discriminator(3, ndf=8, n_layers=3), 1).eval()
  x01 = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
  with torch.no_grad():
    ref = _nhwc(net.model(torch.from_numpy(2 * x01 - 1)))
  assert ref.shape == (2, 6, 6, 1)
  params = cyclegan.discriminator_params_from_torch_state(_sd(net), n_layers=3)
  assert set(params["model"]) == {"0", "2", "5", "8", "11"}
  d = cyclegan.NLayerDiscriminator(ndf=8, n_layers=3, precision=HIGHEST)
  out = d.apply({"params": params}, jnp.asarray(x01.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5 * max(1, np.abs(ref).max()), rtol=0)


def test_discriminator_receptive_field_is_70(monkeypatch):
  """Default PatchGAN: one output cell sees a 70x70 input window (norms off: their statistics are
  global)."""
  monkeypatch.setattr(cyclegan, "instance_norm", lambda x: x)
  d = cyclegan.NLayerDiscriminator(ndf=4)
  x = jnp.zeros((1, 128, 128, 3))
  v = d.init(jax.random.key(0), x)
  grad = jax.grad(lambda x: d.apply(v, x)[0, 5, 5, 0])(x)
  rows = np.nonzero(np.abs(np.asarray(grad[0])).sum(axis=(1, 2)))[0]
  cols = np.nonzero(np.abs(np.asarray(grad[0])).sum(axis=(0, 2)))[0]
  assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_patch_projector_matches_cut_mlp():
  feats = [jnp.asarray(np.random.default_rng(i).normal(size=(2, 5, c)), jnp.float32)
           for i, c in enumerate((6, 16))]
  proj = cyclegan.PatchProjector(num_layers=2, features=32, precision=HIGHEST)
  v = proj.init(jax.random.key(0), feats)
  assert v["params"]["mlp_0"]["0"]["kernel"].shape == (6, 32)
  assert v["params"]["mlp_1"]["0"]["kernel"].shape == (16, 32)
  out = proj.apply(v, feats)
  for i, (f, o) in enumerate(zip(feats, out)):
    p = v["params"][f"mlp_{i}"]
    h = np.maximum(np.asarray(f) @ np.asarray(p["0"]["kernel"]) + np.asarray(p["0"]["bias"]), 0)
    h = h @ np.asarray(p["2"]["kernel"]) + np.asarray(p["2"]["bias"])
    h = h / (np.linalg.norm(h, axis=-1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(np.asarray(o), h, atol=1e-5)
    # ||h|| ~ 1e-2 at the N(0, 0.02^2) init, so the 1e-7 of CUT's Normalize shows at 1e-5.
    np.testing.assert_allclose(np.linalg.norm(np.asarray(o), axis=-1), 1.0, atol=1e-4)
  one = proj.apply(v, feats[1], 1, method=proj.project)
  np.testing.assert_allclose(np.asarray(one), np.asarray(out[1]), atol=1e-6)
  with pytest.raises(ValueError, match="2 feature maps"):
    proj.apply(v, feats[:1])
