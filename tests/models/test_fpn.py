"""SGZ USS head (lowlight_jax/models/fpn.py) vs the authors' `fpn_module` outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.convert import layout
from lowlight_jax.models import fpn
from lowlight_jax.models import resnet


def _nhwc(a: np.ndarray) -> jnp.ndarray:
  return jnp.asarray(a.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def authors(conformance_dir):
  io = np.load(conformance_dir / "fixtures/sgz_fpn_head_io.npz")
  feats = [_nhwc(io[k]) for k in ("c2", "c3", "c4", "c5")]
  sd = dict(np.load(conformance_dir / "fixtures/sgz_fpn_head_random.npz"))
  head = fpn.FPNHead(num_classes=21)
  target = jax.eval_shape(head.init, jax.random.key(0), *feats)
  variables = layout.assign(target, layout.torch_to_flax(sd))
  return head, variables, feats, io["logits_nchw"].transpose(0, 2, 3, 1)


def test_head_matches_authors(authors):
  head, variables, feats, want = authors
  assert feats[3].shape[1:3] == (3, 3)  # c5 is 3x3: the 3 -> 4 -> 8 -> 16 odd-size resize path
  assert sum(v.size for v in jax.tree.leaves(variables)) == 4_621_333
  got = np.asarray(jax.jit(head.apply)(variables, *feats))
  assert got.shape == want.shape == (2, 16, 24, 21)
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_concat_order_matters(authors):
  # Swapping the p5 and p2 blocks of the classifier's input channels must break parity, so the
  # test above really pins the released order [p5, p4, p3, p2].
  head, variables, feats, want = authors
  k = np.asarray(variables["params"]["classify"]["kernel"])
  swapped = np.concatenate([k[:, :, 384:], k[:, :, 128:384], k[:, :, :128]], axis=2)
  params = dict(variables["params"], classify=dict(variables["params"]["classify"], kernel=swapped))
  got = np.asarray(jax.jit(head.apply)({"params": params}, *feats))
  assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()


def test_head_init():
  # Two convs from the head's own factory (a full init of the head is slow to compile on CPU).
  class TwoConvs(nn.Module):

    @nn.compact
    def __call__(self, x):
      return fpn.head_conv(128, 3, name="smooth1_2")(x), fpn.head_conv(256, 1, name="latlayer3")(x)

  v = jax.jit(TwoConvs().init)(jax.random.key(0), jnp.zeros((1, 4, 4, 256)))["params"]
  assert v["smooth1_2"]["kernel"].shape == (3, 3, 256, 128)
  for conv in v.values():
    assert float(jnp.abs(conv["bias"]).max()) == 0.0
    assert abs(float(conv["kernel"].std()) - 0.01) < 5e-4
    assert abs(float(conv["kernel"].mean())) < 5e-4


def _random_variables(model, x, seed: int):
  """Random variables with the model's structure (cheaper than compiling `init`)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)

  def fill(path, s):
    name = path[-1].key
    if name == "var":
      return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
    if name == "scale":
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if name == "kernel":  # He-normal over fan-in keeps activations O(1) through the ResNet
      std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
      return (rng.standard_normal(s.shape) * std).astype(np.float32)
    return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_uss_shapes_names_and_bn_modes():
  model = fpn.USS(stage_sizes=(1, 1, 1, 1))
  x = jnp.asarray(np.random.default_rng(0).random((2, 32, 64, 3), dtype=np.float32))
  variables = _random_variables(model, x, seed=1)
  keys = layout.flax_to_torch(variables)
  assert "resnet.layer4.0.downsample.1.running_var" in keys and "fpn.classify.bias" in keys
  assert "fpn.smooth4_2.weight" in keys and "resnet.bn1.running_mean" in keys
  train_model = fpn.USS(stage_sizes=(1, 1, 1, 1), bn_use_batch_stats=True)

  def direct(v, a):
    feats = resnet.ResNet50((1, 1, 1, 1)).apply(
        {"params": v["params"]["resnet"], "batch_stats": v["batch_stats"]["resnet"]}, a)
    return fpn.FPNHead().apply({"params": v["params"]["fpn"]},
                               *(feats[f"c{i}"] for i in range(2, 6)))

  def all_three(v, a):  # one compilation
    return fpn.uss_logits(model, v, a), fpn.uss_logits(train_model, v, a), direct(v, a)

  logits, logits_bs, composed = jax.jit(all_three)(variables, x)
  assert logits.shape == logits_bs.shape == (2, 8, 16, 21)  # 1/4 resolution
  # Batch-statistics BN (the released train-mode behaviour) differs from running statistics.
  assert float(jnp.abs(logits_bs - logits).max()) > 1e-3 * float(jnp.abs(logits).max())
  # USS equals the head applied to the backbone's features (composition and naming are consistent).
  np.testing.assert_allclose(np.asarray(logits), np.asarray(composed),
                             atol=1e-5 * float(jnp.abs(logits).max()))
