"""Speed and memory of every method, the same way for each: the `methods` section of `launch.benchmark`.

`method_speed(name)` builds the method from its recipe config (`RECIPES`: the authors' training crop and batch)
with random weights for every network and tower (`trainer.build(load_pretrained=False)`: nothing is read from
weight files, so it runs anywhere, and the shapes are the real ones), then times

  inference   the method's own `enhance` (what `launch.enhance` runs) on one image at 600x400 and 1200x900,
              after a warm-up call: images/s and ms per image;
  train       the trainer's jitted step (`trainer.make_train_step`) on a random batch of the recipe's shape:
              steps/s and images/s over `train_steps` steps after one compile + warm-up step.

Memory, for each figure: XLA's plan of the compiled program (`compiled.memory_analysis()`: arguments + outputs not
aliased + temporaries, per device: `plan_gb`), and on a GPU/TPU the device's measured peak since the process
started (`device_peak_gb`; run one method per process, as `launch.benchmark` does, so that it is that method's).
Every figure says its shape, batch, device count and compile seconds. Schema of one method's result:

  {"method", "config", "params_trainable", "params_frozen", "devices", "device_kind",
   "inference": {"600x400": {"images_per_s", "ms_per_image", "compile_s", "plan_gb", "device_peak_gb"?},
                 "1200x900": {...}},
   "train": {"batch", "size", "steps", "steps_per_s", "images_per_s", "compile_s", "plan_gb", "device_peak_gb"?}}

A part that cannot run is `{"error": one line}` in place of its figures (the rest still runs). A method in
`CPU_SKIP` is `{"skipped": reason}` on a CPU backend (SCUF: real-size SD-Turbo does not fit a workstation).
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lowlight_jax.inference import enhancers
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import trainer

GB = 1e9
INFERENCE_SIZES = ((400, 600), (900, 1200))  # (height, width)
# Method -> (config module, config arg): the authors' recipe (crop, batch, architecture) as `configs/` has it.
RECIPES = {
    "sgz": ("sgz", ""),
    "scl_lle": ("scl_lle", ""),
    "skf_drbn": ("skf_drbn", ""),
    "skf_snr": ("skf_snr", ""),
    "dmgnie": ("dmgnie", "enhance"),
    "scuf": ("scuf", ""),
}
METHODS = tuple(RECIPES)
# Methods whose recipe does not fit a CPU host (measured: SCUF's real-size build and step compile passed 20 GB of
# host memory at a 64 px crop on a 23 GB machine). On a CPU backend they are reported as skipped, with the reason,
# unless `cpu_anyway`.
CPU_SKIP = {
    "scuf": "the real-size SD-Turbo towers (random weights) and the step's compile need more host memory than a "
            "CPU workstation has (over 20 GB at a 64 px crop); its CPU figures are the scuf_memory section's plans. "
            "Run it on a GPU: bash scripts/benchmark_gpu.sh",
}


def recipe_config(name: str) -> ml_collections.ConfigDict:
  """The method's recipe config, set up to run without weight files or a background store."""
  module, arg = RECIPES[name]
  config = importlib.import_module(f"configs.{module}").get_config(arg or None)
  if name == "dmgnie":
    # No background store (random weights: the backgrounds are placeholders of the frames' size), and inference
    # resizes the camera's background to the image (the benchmark's sizes are not the frames').
    config.backgrounds.fallback = "median"
    config.inference.resize_background = True
  if name == "scuf":
    config.abstract_sd_turbo = True  # The real SD-Turbo shapes from `models.sd_turbo_configs`, random weights.
  return config


def _plan_gb(compiled) -> float | None:
  ma = compiled.memory_analysis()
  if ma is None:
    return None
  used = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes
          + ma.generated_code_size_in_bytes)
  return round(used / GB, 3)


def _device_peak_gb() -> float | None:
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  return None if not stats or "peak_bytes_in_use" not in stats else round(stats["peak_bytes_in_use"] / GB, 3)


def mean_seconds(fn: Callable[[], Any], reps: int) -> float:
  """Mean seconds of `reps` calls of `fn` (which blocks until its result is ready), after one untimed call (the
  compile, on a first call). The one timing loop of every benchmark, JAX's and the PyTorch peers'."""
  fn()
  start = time.perf_counter()
  for _ in range(reps):
    fn()
  return (time.perf_counter() - start) / reps


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def train_batch(setup: trainer.Setup) -> dict[str, np.ndarray]:
  """A random batch of the recipe's shape: the method's `example_batch` with the config's batch size (images in
  [0, 1), integer inputs 0). DMGNIE's frames have the size of its backgrounds (the data's frame size; the step
  crops them), not its example's."""
  example = trainer._example_batch(setup.config, setup.method)  # pylint: disable=protected-access
  frames = setup.method.background_shape()[1:3] if hasattr(setup.method, "background_shape") else None
  rng = np.random.default_rng(0)
  out = {}
  for key, value in example.items():
    shape = (int(setup.config.batch_size), *value.shape[1:])
    if frames and len(shape) == 4:
      shape = (shape[0], *frames, shape[3])
    if jnp.issubdtype(value.dtype, jnp.floating):
      out[key] = rng.uniform(0, 1, shape).astype(np.float32)
    else:
      out[key] = np.zeros(shape, np.dtype(value.dtype))
  return out


def inference_figures(setup: trainer.Setup, sizes=INFERENCE_SIZES, reps: int = 3) -> dict[str, Any]:
  method = setup.method
  fn = jax.jit(lambda p, ms, fz, x: method.enhance(p, ms, fz, x)["enhanced"])
  out = {}
  for h, w in sizes:
    key = f"{w}x{h}"
    try:
      x = jax.device_put(np.random.default_rng(1).uniform(0, 0.3, (1, h, w, 3)).astype(np.float32))
      t0 = time.perf_counter()
      compiled = fn.lower(setup.state.params, setup.state.model_state, setup.frozen, x).compile()
      compile_s = time.perf_counter() - t0
      run = lambda: compiled(setup.state.params, setup.state.model_state, setup.frozen, x).block_until_ready()
      sec = mean_seconds(run, reps)
      out[key] = {"images_per_s": round(1 / sec, 4), "ms_per_image": round(1000 * sec, 2),
                  "compile_s": round(compile_s, 1), "plan_gb": _plan_gb(compiled), "reps": reps}
      peak = _device_peak_gb()
      if peak is not None:
        out[key]["device_peak_gb"] = peak
    except Exception as e:  # pylint: disable=broad-except
      out[key] = {"error": _one_line(e)}
  return out


def train_figures(setup: trainer.Setup, steps: int = 3) -> dict[str, Any]:
  batch_np = train_batch(setup)
  first = next(iter(batch_np.values()))
  out: dict[str, Any] = {"batch": int(first.shape[0]), "size": list(first.shape[-3:-1]), "steps": steps}
  try:
    batch = jax.device_put(batch_np, sharding_lib.batch_sharding(setup.mesh))
    step = trainer.make_train_step(setup)
    t0 = time.perf_counter()
    compiled = step.lower(setup.state, setup.frozen, batch).compile()
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    out["plan_gb"] = _plan_gb(compiled)
    sec = trainer.time_steps(compiled, setup.state, setup.frozen, batch, steps)
    out.update(steps_per_s=round(1 / sec, 4), images_per_s=round(out["batch"] / sec, 4))
    peak = _device_peak_gb()
    if peak is not None:
      out["device_peak_gb"] = peak
  except Exception as e:  # pylint: disable=broad-except
    out["error"] = _one_line(e)
  return out


def method_speed(name: str, *, inference: bool = True, train: bool = True, reps: int = 3, train_steps: int = 3,
                 sizes=INFERENCE_SIZES, overrides: Mapping[str, Any] | None = None,
                 cpu_anyway: bool = False) -> dict[str, Any]:
  """One method's figures (see the module doc). `overrides`: dotted config fields set after the recipe's."""
  if name not in RECIPES:
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
  if name in CPU_SKIP and jax.default_backend() == "cpu" and not cpu_anyway:
    module, arg = RECIPES[name]
    return {"method": name, "config": f"configs/{module}.py" + (f":{arg}" if arg else ""),
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "skipped": f"CPU: {CPU_SKIP[name]}"}
  config = recipe_config(name)
  for dotted, value in (overrides or {}).items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  module, arg = RECIPES[name]
  out: dict[str, Any] = {"method": name, "config": f"configs/{module}.py" + (f":{arg}" if arg else ""),
                         "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind}
  t0 = time.perf_counter()
  setup = trainer.build(config, load_pretrained=False)
  out.update(build_s=round(time.perf_counter() - t0, 1), params_trainable=enhancers.count(setup.state.params),
             params_frozen=enhancers.count(setup.frozen))
  if inference:
    inference_setup = setup
    if name == "dmgnie":  # Inference enhances one camera's frames with that camera's background.
      config = ml_collections.ConfigDict(config.to_dict())
      config.inference.camera = setup.method.cameras[0]
      inference_setup = trainer.build(config, load_pretrained=False)
    out["inference"] = inference_figures(inference_setup, sizes, reps)
    del inference_setup
  if train:
    out["train"] = train_figures(setup, train_steps)
  return out
