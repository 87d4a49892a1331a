"""Throughput of the slow metrics for `launch.benchmark` (speed lives there, never in tests)."""

import time

import jax
import numpy as np

from lowlight_jax.metrics import lpips
from lowlight_jax.metrics import niqe


def _per_second(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, caches
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return repeats / (time.perf_counter() - start)


def benchmark_metrics(size: int = 512, batch: int = 4, repeats: int = 3,
                      nets: tuple[str, ...] = ('alex',),
                      seed: int = 0) -> dict[str, float | int | str]:
  """Images per second at `size` x `size` on the default backend, after warm-up.

  NIQE runs one image at a time in float64 numpy; LPIPS (`nets`: 'alex', 'vgg') runs jitted on
  batches of `batch` (VGG at 512 px takes ~10 s per image on a 2-core CPU, hence not timed by
  default). Needs the metric assets (`python -m launch.assets fetch`).
  """
  rng = np.random.default_rng(seed)
  # A smooth image plus noise: natural-ish statistics so NIQE's AGGD fits are not degenerate.
  yy, xx = np.mgrid[0:size, 0:size] / size
  base = np.stack([np.sin(6 * xx + 3 * c) * np.cos(4 * yy) for c in range(3)], axis=-1) * 0.4 + 0.5
  img = np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1).astype(np.float32)
  pair = np.stack([img] * batch), np.stack([np.clip(img + 0.02, 0, 1)] * batch)
  model = niqe.load_model()
  out = {'niqe_images_per_s': _per_second(lambda: niqe.niqe(img, model=model), repeats)}
  for net in nets:
    variables = jax.device_put(lpips.load_variables(net))
    fn = jax.jit(lambda a, b, v, net=net: lpips.lpips(a, b, variables=v, net=net))
    a, b = jax.device_put(pair[0]), jax.device_put(pair[1])
    out[f'lpips_{net}_images_per_s'] = batch * _per_second(
        lambda: fn(a, b, variables).block_until_ready(), repeats)
  out['backend'] = jax.default_backend()
  out['size'] = size
  return out
