"""2-D convolutions whose gradients XLA's CPU backend runs with its fast kernels inside loop bodies too.

Why: XLA CPU runs a convolution with its Eigen kernels only in the canonical form (NHWC input, HWIO kernel, no
kernel reversal). Its `ConvCanonicalization` pass rewrites other forms into that one, but it visits the entry
computation only: a convolution inside a `lax.scan` / `lax.map` body that is not canonical runs as a naive loop.
JAX's gradient of an NHWC / HWIO convolution is not canonical (the kernel gradient treats the batch as the feature
dimension, `f01b_i01o->01bf`; the input gradient reverses the kernel), so in a loop body it is slow: SCUF's
pair of translations took 2.33 s per gradient as a `lax.map`, 0.16 s written out twice (smoke family, batch 1,
2 cores).

`conv2d` is `lax.conv_general_dilated` (NHWC, HWIO, one feature group, no dilation) with a hand-written gradient
built of canonical pieces only:
  * the input's gradient is a convolution of the (stride-dilated) output gradient with the flipped, transposed
    kernel, flipped by an explicit `rev` (no kernel reversal in the convolution), NHWC / HWIO;
  * the kernel's gradient is one matrix product per kernel tap (kh * kw of them, over strided slices of the
    padded input), accumulated in float32.
`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` that routes the supported case (2-D, NHWC /
HWIO, one group, no dilation, kernel at most `MAX_TAPS` taps) to `conv2d` and anything else to lax.
`loop_friendly_convs()` makes every `flax.linen.Conv` built while it is active (diffusers' included) use it.

The forward value is lax's own convolution, bit for bit; the gradients equal JAX's up to float summation order
(tests/ops/test_conv.py).
"""

import contextlib
import functools
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

#: Kernels with more taps (e.g. CLIP's 32x32 patch embedding) keep lax's gradient: one product per tap would make
#: a large program, and their kernels are frozen (only the input's gradient is needed there).
MAX_TAPS = 9

_NHWC = ("NHWC", "HWIO", "NHWC")


def _pads(padding, in_hw, kernel_hw, strides) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...],
           precision: Any = None) -> jax.Array:
  """NHWC x HWIO -> NHWC convolution with explicit (lo, hi) padding pairs (non-negative), as lax computes it."""
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


def _conv2d_fwd(x, w, strides, padding, precision):
  return conv2d(x, w, strides, padding, precision), (x, w)


def _conv2d_bwd(strides, padding, precision, res, g):
  x, w = res
  kh, kw = w.shape[:2]
  n, h, wd, _ = x.shape
  oh, ow = g.shape[1:3]
  (plh, phh), (plw, phw) = padding
  g = g.astype(x.dtype)
  # Input: the transposed convolution. The output gradient dilated by the stride, padded so that the result has the
  # input's size, against the kernel flipped in space with in / out swapped (an explicit rev: canonical form).
  pads_t = ((kh - 1 - plh, h - 1 - (oh - 1) * strides[0] + plh),
            (kw - 1 - plw, wd - 1 - (ow - 1) * strides[1] + plw))
  w_t = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)
  dx = lax.conv_general_dilated(g, w_t, (1, 1), pads_t, lhs_dilation=strides, dimension_numbers=_NHWC,
                                precision=precision)
  # Kernel: tap (i, j) sees the padded input at rows i, i + s, ..., one (C_in, N*oh*ow) x (N*oh*ow, C_out) product.
  xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0)))  # non-negative: `supported` routes no other
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = lax.slice(xp, (0, i, j, 0), (n, i + (oh - 1) * strides[0] + 1, j + (ow - 1) * strides[1] + 1,
                                        x.shape[3]), (1, strides[0], strides[1], 1))
      taps.append(lax.dot_general(xs, g, (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision,
                                  preferred_element_type=jnp.float32))
  dw = jnp.stack(taps).reshape(w.shape).astype(w.dtype)
  return dx.astype(x.dtype), dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def supported(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
              batch_group_count, preferred_element_type) -> bool:
  """Whether `conv_general_dilated` routes these arguments to `conv2d`."""
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  if preferred_element_type is not None or lhs.dtype != rhs.dtype:
    return False
  if any(d != 1 for d in (lhs_dilation or (1, 1))) or any(d != 1 for d in (rhs_dilation or (1, 1))):
    return False
  if rhs.shape[0] * rhs.shape[1] > MAX_TAPS:
    return False
  if dimension_numbers is None or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != \
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
    return False
  if not isinstance(padding, str) and any(lo < 0 or hi < 0 for lo, hi in padding):
    return False
  return True


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated`, through `conv2d` where `supported`."""
  if supported(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
               batch_group_count, preferred_element_type):
    strides = tuple(int(s) for s in window_strides)
    return conv2d(lhs, rhs, strides, _pads(padding, lhs.shape[1:3], rhs.shape[:2], strides), precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                                  precision=precision, preferred_element_type=preferred_element_type)


class _ConvFn:
  """What `flax.linen.Conv.conv_general_dilated_cls` instantiates."""

  def __call__(self, *args, **kwargs):
    return conv_general_dilated(*args, **kwargs)


class Conv(nn.Conv):  # pylint: disable=missing-class-docstring
  # Same class name: modules named automatically ('Conv_0') keep their parameter names.
  conv_general_dilated_cls: Any = _ConvFn


@contextlib.contextmanager
def loop_friendly_convs(active: bool = True) -> Iterator[None]:
  """While active, `flax.linen.Conv` is `Conv` above for modules built in the meantime (Flax builds submodules
  while a model is applied, so wrap the tracing of the step). Parameters and values are unchanged."""
  if not active:
    yield
    return
  import flax.linen.linear as linear  # pylint: disable=g-import-not-at-top
  saved = (nn.Conv, linear.Conv)
  try:
    nn.Conv = linear.Conv = Conv
    yield
  finally:
    nn.Conv, linear.Conv = saved
