r"""Speed figures as one JSON object (no timed tests anywhere: speed is tracked here).

  lowlight benchmark [--sections ...]
  python -m launch.benchmark [--weights sgz_epoch99.npz] [--sections sgz_inference,sgz_train,metrics]
                             [--peer]  # also time the authors' PyTorch SGZ pipeline side by side (needs torch)

sgz_inference: images/s of the full SGZ inference pipeline (downsample, EFE, align-corners upsample, 8 curve
  iterations, clip) at 1200x900, batch 1 and 8, scale factors 12 and 1, after warm-up.
sgz_train: train steps/s of the paper recipe (512x512, batch 6, ResNet-50 + FPN USS) on all local devices.
metrics: images/s for NIQE and LPIPS at 512x512 (needs `python -m launch.assets fetch` first).
data: decoded+augmented images/s of a folder source and frames/s of the video source, per worker count.

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

REFERENCE_TORCH_IMAGES_PER_S = {"scale_12": 5.4, "scale_1": 0.068}  # Issue #2, authors' code, 2 CPU threads.
SECTIONS = ("sgz_inference", "sgz_train", "data", "metrics")


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
  if "metrics" in _SECTIONS.value:
    from lowlight_jax.metrics import assets
    for name in assets.METRIC_ASSETS["niqe"] + assets.METRIC_ASSETS["lpips"]:
      assets.asset_path(name)  # AssetMissingError names the fetch command.


def _time(fn, repeats):
  fn()  # Warm-up (compilation).
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def sgz_inference(weights, repeats, peer):
  import jax
  import jax.numpy as jnp
  import numpy as np

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
      else:
        reps = repeats if scale == 12 else max(1, repeats // 2)
      x = jnp.asarray(np.random.default_rng(0).uniform(0, 0.3, (batch, 900, 1200, 3)).astype(np.float32))
      sec = _time(lambda: fn(params, x).block_until_ready(), reps)
      out[f"scale_{scale}_batch_{batch}_images_per_s"] = batch / sec
  out["reference_torch_images_per_s"] = REFERENCE_TORCH_IMAGES_PER_S
  out["ratio_vs_reference_scale_12_batch_1"] = out["scale_12_batch_1_images_per_s"] / 5.4
  out["ratio_vs_reference_scale_1_batch_1"] = out["scale_1_batch_1_images_per_s"] / 0.068
  if peer:
    out["torch_peer"] = _torch_peer(jax.device_get(params), repeats)
    for scale in (12, 1):
      out[f"ratio_vs_torch_peer_scale_{scale}_batch_1"] = (
          out[f"scale_{scale}_batch_1_images_per_s"] / out["torch_peer"][f"scale_{scale}_batch_1_images_per_s"])
  return out


def _torch_peer(params, repeats):
  """The authors' SGZ forward (model.py enhance_net_nopool, conv_type='dsc') re-created in PyTorch."""
  import numpy as np
  import torch
  import torch.nn.functional as F

  from lowlight_jax.convert import layout

  torch.set_num_threads(2)
  sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layout.flax_to_torch({"params": params}).items()}

  def dsc(x, name):
    w = sd[f"{name}.depth_conv.weight"]
    x = F.conv2d(x, w, sd[f"{name}.depth_conv.bias"], padding=1, groups=w.shape[0])
    return F.conv2d(x, sd[f"{name}.point_conv.weight"], sd[f"{name}.point_conv.bias"])

  def forward(x, scale):
    x_down = x if scale == 1 else F.interpolate(x, scale_factor=1 / scale, mode="bilinear")
    x1 = F.relu(dsc(x_down, "e_conv1"))
    x2 = F.relu(dsc(x1, "e_conv2"))
    x3 = F.relu(dsc(x2, "e_conv3"))
    x4 = F.relu(dsc(x3, "e_conv4"))
    x5 = F.relu(dsc(torch.cat([x3, x4], 1), "e_conv5"))
    x6 = F.relu(dsc(torch.cat([x2, x5], 1), "e_conv6"))
    x_r = torch.tanh(dsc(torch.cat([x1, x6], 1), "e_conv7"))
    if scale != 1:
      x_r = F.interpolate(x_r, scale_factor=scale, mode="bilinear", align_corners=True)
    for _ in range(8):
      x = x + x_r * (torch.pow(x, 2) - x)
    return x

  out = {}
  with torch.no_grad():
    for scale in (12, 1):
      x = torch.rand(1, 3, 900, 1200) * 0.3
      reps = repeats if scale == 12 else 1
      out[f"scale_{scale}_batch_1_images_per_s"] = 1 / _time(lambda: forward(x, scale), reps)
  return out


def sgz_train(steps):
  import jax
  import numpy as np

  from configs import sgz as sgz_config
  from lowlight_jax.train import sharding as sharding_lib
  from lowlight_jax.train import trainer

  config = sgz_config.get_config()
  config.data.crop = 512
  setup = trainer.build(config)
  step_fn = trainer.make_train_step(setup)
  batch = {"low": np.random.default_rng(0).uniform(0, 0.3, (config.batch_size, 512, 512, 3)).astype(np.float32)}
  batch = jax.device_put(batch, sharding_lib.batch_sharding(setup.mesh))
  state = setup.state
  state, metrics, _ = step_fn(state, setup.frozen, batch)  # Compile + warm-up.
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics, _ = step_fn(state, setup.frozen, batch)
  jax.block_until_ready(state)
  sec = (time.perf_counter() - start) / steps
  return {"steps_per_s": 1 / sec, "images_per_s": config.batch_size / sec, "batch": config.batch_size,
          "size": 512, "devices": jax.device_count()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  check_flags()
  import jax

  result = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
            "device_count": jax.device_count()}
  if "sgz_inference" in _SECTIONS.value:
    result["sgz_inference"] = sgz_inference(_WEIGHTS.value, _REPEATS.value, _PEER.value)
  if "sgz_train" in _SECTIONS.value:
    result["sgz_train"] = sgz_train(_TRAIN_STEPS.value)
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
  print(json.dumps(result, indent=2))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
