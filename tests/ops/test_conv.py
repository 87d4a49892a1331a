"""ops/conv.py: the convolution with canonical-form gradients equals lax's (value bit for bit, gradients up to
summation order), routes only the supported case, keeps every convolution of a loop body's gradient in XLA CPU's
canonical form, and `loop_friendly_convs` swaps Flax's Conv without changing parameter names or values."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lowlight_jax.ops import conv as conv_lib

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _ours(x, w, strides, padding):
  return conv_lib.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


CASES = [  # (input h, w, c_in), kernel (kh, kw, c_out), strides, padding
    ((37, 29, 5), (3, 3, 7), (1, 1), ((1, 1), (1, 1))),
    ((32, 20, 4), (3, 3, 6), (2, 2), ((0, 1), (0, 1))),  # diffusers' VAE downsample
    ((33, 21, 4), (3, 3, 6), (2, 2), ((1, 1), (1, 1))),  # odd input, the stride leaves a remainder
    ((16, 12, 8), (1, 1, 3), (1, 1), ((0, 0), (0, 0))),
    ((16, 12, 3), (2, 2, 4), (2, 2), ((0, 0), (0, 0))),
    ((15, 11, 3), (3, 1, 4), (1, 2), "SAME"),
    ((15, 11, 3), (3, 3, 4), (1, 1), "VALID"),
]


@pytest.mark.parametrize("hwc,kernel,strides,padding", CASES)
def test_value_and_gradients_equal_lax(hwc, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2,) + hwc), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel[:2] + (hwc[2], kernel[2])) * 0.3, jnp.float32)
  np.testing.assert_array_equal(jax.jit(_ours, static_argnums=(2, 3))(x, w, strides, padding),
                                jax.jit(_lax, static_argnums=(2, 3))(x, w, strides, padding))
  probe = jnp.asarray(rng.normal(size=_lax(x, w, strides, padding).shape), jnp.float32)
  loss = lambda f: jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b, strides, padding)) * probe), (0, 1)))
  for got, want in zip(loss(_ours)(x, w), loss(_lax)(x, w)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(want))))


def test_bfloat16_gradients_accumulate_in_float32():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 24, 24, 16)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 16, 8)) * 0.1, jnp.bfloat16)
  g = lambda f: jax.grad(lambda a, b: jnp.sum(f(a, b, (1, 1), ((1, 1), (1, 1))).astype(jnp.float32)), (0, 1))(x, w)
  reference = jax.grad(lambda a, b: jnp.sum(_lax(a, b, (1, 1), ((1, 1), (1, 1)))), (0, 1))(
      x.astype(jnp.float32), w.astype(jnp.float32))
  for got, want in zip(g(_ours), reference):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(want))))


def test_unsupported_cases_are_lax_itself():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(1, 12, 12, 4)), jnp.float32)
  for w, kwargs in ((rng.normal(size=(3, 3, 2, 4)), dict(feature_group_count=2)),
                    (rng.normal(size=(3, 3, 4, 4)), dict(rhs_dilation=(2, 2))),
                    (rng.normal(size=(5, 5, 4, 4)), {})):  # more taps than MAX_TAPS
    w = jnp.asarray(w, jnp.float32)
    assert not conv_lib.supported(x, w, ((1, 1), (1, 1)), kwargs.get("lhs_dilation"), kwargs.get("rhs_dilation"),
                                  NHWC, kwargs.get("feature_group_count", 1), 1, None)
    f = lambda conv: jax.grad(lambda a, b: jnp.sum(conv(a, b, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC,
                                                        **kwargs) ** 2), (0, 1))(x, w)
    for got, want in zip(f(conv_lib.conv_general_dilated), f(lax.conv_general_dilated)):
      np.testing.assert_array_equal(got, want)


def _conv_labels_of_looped_gradient(conv):
  """dim_labels of every convolution XLA CPU compiles for the gradient of two convolutions in a `lax.map` body."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 1, 16, 16, 8)), jnp.float32)
  w = [jnp.asarray(rng.normal(size=(3, 3, 8, 8)) * 0.1, jnp.float32) for _ in range(2)]

  def loss(w, x):
    def one(xi):
      y = jnp.tanh(conv(xi, w[0], (1, 1), ((1, 1), (1, 1))))
      return jnp.sum(conv(y, w[1], (2, 2), ((0, 1), (0, 1))) ** 2)
    return jnp.sum(jax.lax.map(one, x))

  text = jax.jit(jax.grad(loss, (0, 1))).lower(w, x).compile().as_text()
  assert " while(" in text  # the loop stayed a loop
  return re.findall(r"convolution\(.*?dim_labels=(\S+?)[,\s]", text)


def test_a_loop_bodys_gradient_convolutions_are_canonical_on_cpu():
  """What makes them fast in a loop body on CPU: only XLA's canonical form (NHWC, HWIO, no reversal), which its
  Eigen kernels run. lax's gradient keeps other forms there (so the check can fail)."""
  assert jax.default_backend() == "cpu"
  ours = _conv_labels_of_looped_gradient(_ours)
  theirs = _conv_labels_of_looped_gradient(_lax)
  assert ours and set(ours) == {"b01f_01io->b01f"}, ours
  assert set(theirs) - {"b01f_01io->b01f"}, theirs


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(6, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)))(x)
    return nn.Conv(4, (1, 1), name="proj")(jax.nn.gelu(x))


def test_loop_friendly_convs_swaps_flax_conv_keeping_names_and_values():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 15, 13, 3)), jnp.float32)
  params = _Net().init(jax.random.key(0), x)
  grad = lambda p: jax.grad(lambda q: jnp.sum(_Net().apply(q, x) ** 2))(p)
  with conv_lib.loop_friendly_convs():
    assert nn.Conv is conv_lib.Conv
    swapped_params = _Net().init(jax.random.key(0), x)
    out, got = _Net().apply(params, x), grad(params)
  assert nn.Conv is not conv_lib.Conv and issubclass(conv_lib.Conv, nn.Conv)
  assert jax.tree.structure(swapped_params) == jax.tree.structure(params)  # 'Conv_0', 'proj'
  np.testing.assert_array_equal(out, _Net().apply(params, x))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(grad(params))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
  with conv_lib.loop_friendly_convs(False):
    assert nn.Conv is not conv_lib.Conv
