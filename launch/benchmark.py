r"""Speed figures as one JSON object (no timed tests anywhere: speed is tracked here).

  lowlight benchmark [--sections ...]
  python -m launch.benchmark [--weights sgz_epoch99.npz] [--sections sgz_inference,sgz_train,metrics]
                             [--peer]  # also time the authors' PyTorch SGZ pipeline side by side (needs torch)

sgz_inference: images/s of the full SGZ inference pipeline (downsample, EFE, align-corners upsample, 8 curve
  iterations, clip) at 1200x900, batch 1 and 8, scale factors 12 and 1, after warm-up.
sgz_train: train steps/s of the paper recipe (512x512, batch 6, ResNet-50 + FPN USS) on all local devices; with
  --peer also the issue's comparison step (256x256, batch 2) in JAX and in PyTorch (`launch/torch_peers.py`).
metrics: images/s for NIQE and LPIPS at 512x512 (needs `python -m launch.assets fetch` first).
data: decoded+augmented images/s of a folder source and frames/s of the video source, per worker count.
methods: every method the same way (`lowlight_jax/analysis/speed.py`): its recipe config with random weights,
  inference images/s at 600x400 and 1200x900 (its own `enhance`, batch 1), train steps/s at the recipe's crop and
  batch, and memory (XLA's plan per device; on a GPU also the measured peak). Each method runs in a child process
  of its own (`--methods` chooses them); one that fails is `{"error": ...}` and the others still run.
scuf_memory: the SCUF train step's memory per device at the real SD-Turbo sizes, 512x512, batch 1 and 8, on 1
  and 8 devices, with and without FSDP / remat, from XLA's compile of the step on abstract shapes (no weights:
  `lowlight_jax.train.memory`); bfloat16 compute and frozen storage, float32 trained params and AdamW state.
  Rows run in a child process that sees 8 devices (on CPU: `--xla_force_host_platform_device_count=8`); each row
  compiles the whole step (minutes on a 2-core CPU). On CPU the worker runs XLA's memory-minimising scheduler
  (`memory.CPU_MEMORY_SCHEDULER_FLAG`: the default CPU schedule favours concurrency and about doubles the plan).
  On a GPU the 1-device rows are compiled for the GPU, and with --scuf_measure also run (random weights) for the
  real peak and the step time. Measured on CPU (2 cores), 2026-12-02, the full objective (caption term on),
  `scale` (chunked UNet and cycle attention, the VAE rematerialised per layer, per-iteration FSDP gathers, frozen
  weights read per block call, the two decoders as a sequential pair): batch 8, 1 device, remat: 54.947 GB
  (51.114 GB without the last two, 128.431 GB without any); batch 8, 8 devices, FSDP, remat: 10.389 GB (13.789
  without the last two): a ratio of 0.189 (goal 0.25). XLA CPU runs bf16 convolutions in float32 (a float32 copy
  of each operand), so its plans overstate a GPU's.

With --peer, a PyTorch re-creation of the authors' pipeline (same architecture, same weights, 2 threads) is timed
in the same process and the JSON holds jax/torch ratios. The issue's reference figures for the authors' code on
our 2-core machines (5.4 images/s at scale 12, 0.068 at scale 1) are included for comparison.
"""

import json
import os
import time

from absl import app
from absl import flags

from launch import _common
from lowlight_jax import errors

_WEIGHTS = flags.DEFINE_string("weights", None, "SGZ weights (.pth/.npz/converted); random init if absent.")
_SECTIONS = flags.DEFINE_list("sections", ["sgz_inference", "sgz_train"], "What to time.")
_PEER = flags.DEFINE_bool("peer", False, "Also time a PyTorch re-creation of the authors' pipeline.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions per figure (after one warm-up).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 3, "Timed train steps (after one warm-up/compile step).")
_SCUF_ROWS = flags.DEFINE_list("scuf_rows", [], "scuf_memory: only these rows (indices into SCUF_ROWS).")
_SCUF_MEASURE = flags.DEFINE_bool("scuf_measure", False, "scuf_memory on a GPU: also run the 1-device rows.")
_SCUF_WORKER = flags.DEFINE_bool("scuf_memory_worker", False, "Internal: compute scuf_memory rows in this process.")
_METHODS = flags.DEFINE_list("methods", [], "methods: only these methods (default: all).")
_METHOD_SIZES = flags.DEFINE_list("method_sizes", ["600x400", "1200x900"], "methods: inference sizes, WxH.")
_METHOD_OVERRIDES = flags.DEFINE_multi_string("method_override", [], "methods: METHOD:FIELD=VALUE set on that "
                                              "method's recipe config (e.g. scuf:data.crop=128).")
_METHOD_CPU_ANYWAY = flags.DEFINE_bool("method_cpu_anyway", False, "methods: also run, on a CPU backend, the methods "
                                      "that are skipped there (SCUF at real size: tens of GB of host memory).")
_METHOD_WORKER = flags.DEFINE_string("method_worker", None, "Internal: compute one method's figures in this process.")

REFERENCE_TORCH_IMAGES_PER_S = {"scale_12": 5.4, "scale_1": 0.068}  # Issue #2, authors' code, 2 CPU threads.
SECTIONS = ("sgz_inference", "sgz_train", "data", "metrics", "methods", "scuf_memory")
# (batch, devices, fsdp, remat, micro-batches). Batch 1 does not split over 8 devices (the batch is sharded over
# every device). Row 7 is row 3 with gradient accumulation over 2 slices of 4 (`configs/scuf.py` microbatches): the
# same batch-8 gradient, half the activations.
SCUF_ROWS = ((1, 1, False, False, 1), (1, 1, False, True, 1), (8, 1, False, False, 1), (8, 1, False, True, 1),
             (8, 8, False, True, 1), (8, 8, True, False, 1), (8, 8, True, True, 1), (8, 1, False, True, 2))
SCUF_SIZE = 512
GOAL_GB = 80.0
PEER_TRAIN_SIZE, PEER_TRAIN_BATCH = 256, 2  # The SGZ train-step comparison (ResNet-50 + FPN USS).


def check_flags() -> None:
  """One-line errors for what would otherwise fail minutes into the run."""
  unknown = [s for s in _SECTIONS.value if s not in SECTIONS]
  if unknown:
    raise errors.ConfigError(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
  if _WEIGHTS.value and not os.path.isfile(_WEIGHTS.value):
    raise errors.InputError(f"--weights {_WEIGHTS.value}: no such file")
  for name, holder in (("repeats", _REPEATS), ("train_steps", _TRAIN_STEPS)):
    if holder.value < 1:
      raise errors.ConfigError(f"--{name} must be >= 1, got {holder.value}")
  if "methods" in _SECTIONS.value or _METHOD_WORKER.value:
    from lowlight_jax.analysis import speed
    unknown = [m for m in _METHODS.value + ([_METHOD_WORKER.value] if _METHOD_WORKER.value else [])
               if m not in speed.METHODS]
    if unknown:
      raise errors.ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(speed.METHODS)}")
    method_sizes()
    method_overrides()
  if "metrics" in _SECTIONS.value:
    from lowlight_jax.metrics import assets
    for name in assets.METRIC_ASSETS["niqe"] + assets.METRIC_ASSETS["lpips"]:
      assets.asset_path(name)  # AssetMissingError names the fetch command.


def host_cpu() -> dict:
  """The host CPU: ratios to a peer depend on it (the same PyTorch SGZ peer read 18.6 and 6.0 images/s at scale 12
  in two sessions of this project, on machines of the same size)."""
  info = {"cpus": os.cpu_count()}
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return info
  for line in text.splitlines():
    if line.startswith("model name") and "model" not in info:
      info["model"] = line.split(":", 1)[1].strip()
    if line.startswith("flags") and "isa" not in info:
      have = set(line.split(":", 1)[1].split())
      info["isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have]
  return info


def sgz_inference(weights, repeats, peer):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from lowlight_jax.analysis import speed
  from lowlight_jax.models import sgz as sgz_model

  efe = sgz_model.EnhancementFactorExtractor()
  if weights:
    from lowlight_jax.inference import released
    params = released.load_released("sgz", weights)["params"]
  else:
    params = efe.init(jax.random.PRNGKey(0), jnp.zeros((1, 24, 24, 3)))["params"]
  apply = lambda p, x: efe.apply({"params": p}, x)
  out = {}
  for scale in (12, 1):
    fn = jax.jit(lambda p, x, s=scale: jnp.clip(
        sgz_model.sgz_forward(apply, p, x, scale_factor=s, crop_to_multiple=True)["enhanced"], 0, 1))
    for batch in (1, 8):
      if scale == 1 and batch == 8 and repeats > 2:
        reps = 2  # ~1 s/image on 2 cores: keep the section short.
      elif scale == 12:
        # A few ms per image: 10x the repeats, so that one slow call weighs less. (On the 2-core VM the figure
        # still varies between runs: 5.7 to 8.8 ms per image over 30-50 calls in one session.)
        reps = 10 * repeats
      else:
        reps = max(1, repeats // 2)
      x = jnp.asarray(np.random.default_rng(0).uniform(0, 0.3, (batch, 900, 1200, 3)).astype(np.float32))
      sec = speed.mean_seconds(lambda: fn(params, x).block_until_ready(), reps)
      out[f"scale_{scale}_batch_{batch}_images_per_s"] = batch / sec
  out["reference_torch_images_per_s"] = REFERENCE_TORCH_IMAGES_PER_S
  out["ratio_vs_reference_scale_12_batch_1"] = out["scale_12_batch_1_images_per_s"] / 5.4
  out["ratio_vs_reference_scale_1_batch_1"] = out["scale_1_batch_1_images_per_s"] / 0.068
  if peer:
    from launch import torch_peers
    out["torch_peer"] = torch_peers.sgz_inference(jax.device_get(params), repeats)
    for scale in (12, 1):
      out[f"ratio_vs_torch_peer_scale_{scale}_batch_1"] = (
          out[f"scale_{scale}_batch_1_images_per_s"] / out["torch_peer"][f"scale_{scale}_batch_1_images_per_s"])
  return out


def sgz_train(steps, size: int = 512, batch_size: int | None = None):
  """Train steps/s of configs/sgz.py (its batch, or `batch_size`) on random size x size images, all devices."""
  import jax
  import numpy as np

  from configs import sgz as sgz_config
  from lowlight_jax.train import sharding as sharding_lib
  from lowlight_jax.train import trainer

  config = sgz_config.get_config()
  config.data.crop = size
  if batch_size:
    config.batch_size = batch_size
  setup = trainer.build(config)
  step_fn = trainer.make_train_step(setup)
  batch = {"low": np.random.default_rng(0).uniform(0, 0.3, (config.batch_size, size, size, 3)).astype(np.float32)}
  batch = jax.device_put(batch, sharding_lib.batch_sharding(setup.mesh))
  sec = trainer.time_steps(step_fn, setup.state, setup.frozen, batch, steps)
  return {"steps_per_s": 1 / sec, "images_per_s": config.batch_size / sec, "batch": config.batch_size,
          "size": size, "devices": jax.device_count()}


def sgz_train_section(steps, peer):
  """The recipe's step; with `peer`, also the issue's comparison step (256x256, batch 2) in JAX and PyTorch."""
  out = sgz_train(steps)
  if peer:
    import jax
    import jax.numpy as jnp

    from launch import torch_peers
    from lowlight_jax.models import sgz as sgz_model
    ours = sgz_train(steps, size=PEER_TRAIN_SIZE, batch_size=PEER_TRAIN_BATCH)
    params = sgz_model.EnhancementFactorExtractor().init(jax.random.PRNGKey(0), jnp.zeros((1, 24, 24, 3)))["params"]
    theirs = torch_peers.sgz_train_step(jax.device_get(params), PEER_TRAIN_BATCH, PEER_TRAIN_SIZE, steps)
    out["peer_comparison"] = {"jax": ours, "torch_peer": theirs,
                              "ratio_vs_torch_peer": ours["steps_per_s"] / theirs["steps_per_s"]}
  return out


def method_sizes() -> list[tuple[int, int]]:
  """--method_sizes as (height, width) pairs."""
  return [_common.parse_size(s, "--method_sizes")[::-1] for s in _METHOD_SIZES.value]


def method_overrides() -> dict[str, dict]:
  """--method_override METHOD:FIELD=VALUE as {method: {field: value}} (values parsed as JSON, else strings)."""
  out: dict[str, dict] = {}
  for item in _METHOD_OVERRIDES.value:
    head, sep, value = item.partition("=")
    method, colon, field = head.partition(":")
    if not (sep and colon and field):
      raise errors.ConfigError(f"--method_override {item}: expected METHOD:FIELD=VALUE")
    try:
      parsed = json.loads(value)
    except ValueError:
      parsed = value
    out.setdefault(method, {})[field] = parsed
  return out


def methods_section(names: list[str]) -> dict:
  """Each method's figures from a child process of its own (see the module doc)."""
  import subprocess
  import sys

  from lowlight_jax.analysis import speed

  out = {}
  for name in names or list(speed.METHODS):
    cmd = [sys.executable, "-m", "launch.benchmark", "--sections=methods", f"--method_worker={name}",
           f"--repeats={_REPEATS.value}", f"--train_steps={_TRAIN_STEPS.value}",
           f"--method_sizes={','.join(_METHOD_SIZES.value)}", f"--method_cpu_anyway={_METHOD_CPU_ANYWAY.value}"]
    cmd += [f"--method_override={o}" for o in _METHOD_OVERRIDES.value if o.startswith(f"{name}:")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
      err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
      out[name] = {"error": f"worker exited {proc.returncode}: {err}"}
    else:
      out[name] = json.loads(lines[-1])
    out[name]["wall_s"] = round(time.perf_counter() - start, 1)
  return out


def scuf_memory_rows(rows, measure: bool = False) -> list[dict]:
  """The rows, computed in this process (see the module doc)."""
  import jax
  import jax.numpy as jnp

  from configs import scuf as scuf_config
  from lowlight_jax.train import memory

  out = []
  for batch, devices, fsdp, remat, micro in rows:
    row = {"batch": batch, "size": SCUF_SIZE, "devices": devices, "fsdp": fsdp, "remat": remat,
           "microbatches": micro}
    platform = jax.devices()[0].platform
    pool = jax.devices() if devices == 1 or platform == "cpu" else []
    if len(pool) < devices:
      pool = jax.devices("cpu")
    if len(pool) < devices:
      out.append({**row, "per_device_gb": None, "how": f"skipped: {len(pool)} devices in this process"})
      continue
    config = scuf_config.get_config("scale")
    config.abstract_sd_turbo = True
    config.batch_size = batch
    config.data.crop = SCUF_SIZE
    config.remat = "full" if remat else "none"
    config.microbatches = micro
    config.model.conv_gradients = "lax"  # the accelerator's program ('auto' is 'canonical' on CPU)
    config.mesh = {"data": 1, "fsdp": devices} if fsdp else {"data": devices}
    shapes = {k: jax.ShapeDtypeStruct((batch, SCUF_SIZE, SCUF_SIZE, 3), jnp.float32) for k in ("low", "high")}
    # The full objective: the caption-consistency term on (CLIP-tokenised captions, 77 ids per image).
    shapes.update({k: jax.ShapeDtypeStruct((batch, 77), jnp.int32) for k in ("low_caption_ids", "high_caption_ids")})
    # A CPU compile is only for the plan: without LLVM's optimisations it is the same buffer assignment, sooner.
    cpu = pool[0].platform == "cpu"
    m = memory.step_memory(config, pool[:devices], shapes, plan_only=cpu)
    row.update(per_device_gb=round(m["per_device_gb"], 3), arguments_gb=round(m["arguments_gb"], 3),
               temp_gb=round(m["temp_gb"], 3), compile_s=round(m["compile_s"], 1),
               trained_params=m["trained_params"], frozen_params=m["frozen_params"],
               how=f"XLA {pool[0].platform} compile of the train step on abstract shapes (buffer assignment: "
                   "arguments + outputs + temporaries per device"
                   + ("; XLA CPU's memory-minimising scheduler, the closer proxy of a GPU's memory-limited one"
                      if cpu and memory.CPU_MEMORY_SCHEDULER_FLAG in os.environ.get("XLA_FLAGS", "") else "")
                   + "); bf16 compute and frozen storage, f32 params and AdamW")
    if measure and devices == 1 and pool[0].platform == "gpu":
      import numpy as np  # pylint: disable=g-import-not-at-top
      data = np.random.default_rng(0).uniform(0, 1, (2, batch, SCUF_SIZE, SCUF_SIZE, 3)).astype(np.float32)
      peak = memory.measured_peak(config, pool[0], {"low": data[0], "high": data[1]}, load_pretrained=False)
      row.update(measured_peak_gb=round(peak["peak_gb"], 3), step_s=round(peak["step_s"], 3))
    out.append(row)
  return out


def scuf_memory(selected: list[int], measure: bool) -> dict:
  """Runs the rows in a child process with 8 devices visible (fake CPU devices when the backend is CPU)."""
  import subprocess
  import sys

  import jax

  from lowlight_jax.train import memory

  indices = selected or list(range(len(SCUF_ROWS)))
  env = dict(os.environ)
  if jax.default_backend() == "cpu":
    flags_ = env.get("XLA_FLAGS", "")
    if jax.device_count() < 8:
      flags_ += " --xla_force_host_platform_device_count=8"
    # XLA CPU's memory-minimising scheduler (`memory.step_memory`'s doc): read from the flags at backend start (a
    # per-compile option does not reach it).
    env["XLA_FLAGS"] = (flags_ + " " + memory.CPU_MEMORY_SCHEDULER_FLAG).strip()
  cmd = [sys.executable, "-m", "launch.benchmark", "--sections=scuf_memory", "--scuf_memory_worker",
         f"--scuf_rows={','.join(map(str, indices))}"] + (["--scuf_measure"] if measure else [])
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"scuf_memory worker failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
  rows = json.loads(proc.stdout.strip().splitlines()[-1])
  one = {(r["batch"], r["devices"], r["fsdp"], r["remat"], r["microbatches"]): r.get("per_device_gb")
         for r in rows}
  goal_1 = one.get((8, 1, False, True, 1))
  goal_8 = one.get((8, 8, True, True, 1))
  accumulated = one.get((8, 1, False, True, 2))
  summary = {"goal_batch8_1device_fits_80gb": None if goal_1 is None else goal_1 <= GOAL_GB}
  if accumulated is not None:
    summary["batch8_1device_2_microbatches_fits_80gb"] = accumulated <= GOAL_GB
  if goal_1 and goal_8 is not None:
    summary["fsdp8_over_1device_ratio"] = round(goal_8 / goal_1, 3)
    summary["goal_fsdp8_quarter_or_less"] = goal_8 <= goal_1 / 4
  return {"rows": rows, **summary}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  check_flags()
  if _METHOD_WORKER.value:
    from lowlight_jax.analysis import speed
    name = _METHOD_WORKER.value
    fields = method_overrides().get(name, {})
    print(json.dumps(speed.method_speed(name, reps=_REPEATS.value, train_steps=_TRAIN_STEPS.value,
                                        sizes=method_sizes(), overrides=fields,
                                        cpu_anyway=_METHOD_CPU_ANYWAY.value)))
    return
  if _SCUF_WORKER.value:
    indices = [int(i) for i in _SCUF_ROWS.value] or list(range(len(SCUF_ROWS)))
    print(json.dumps(scuf_memory_rows([SCUF_ROWS[i] for i in indices], _SCUF_MEASURE.value)))
    return
  import jax

  result = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
            "device_count": jax.device_count(), "host": host_cpu()}
  if "sgz_inference" in _SECTIONS.value:
    result["sgz_inference"] = sgz_inference(_WEIGHTS.value, _REPEATS.value, _PEER.value)
  if "sgz_train" in _SECTIONS.value:
    result["sgz_train"] = sgz_train_section(_TRAIN_STEPS.value, _PEER.value)
  if "data" in _SECTIONS.value:
    from data_pipelines import benchmark as data_benchmark
    result["data"] = {"folder": data_benchmark.folder_images_per_s(),
                      "video": data_benchmark.video_frames_per_s()}
    if "sgz_train" in result:
      # The input pipeline should deliver at least twice what the SGZ train step consumes.
      best = max(v["per_s"] for k, v in result["data"]["folder"].items() if k.startswith("workers_"))
      result["data"]["folder_vs_sgz_train_images_per_s_ratio"] = best / result["sgz_train"]["images_per_s"]
  if "metrics" in _SECTIONS.value:
    from lowlight_jax.metrics import benchmark as metrics_benchmark
    result["metrics"] = metrics_benchmark.benchmark_metrics()
  if "methods" in _SECTIONS.value:
    result["methods"] = methods_section(_METHODS.value)
  if "scuf_memory" in _SECTIONS.value:
    result["scuf_memory"] = scuf_memory([int(i) for i in _SCUF_ROWS.value], _SCUF_MEASURE.value)
  print(json.dumps(result, indent=2))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
