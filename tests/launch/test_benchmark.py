"""`launch.benchmark --sections=methods` (every method timed the same way, each in a child process) and
`scripts/benchmark_gpu.sh`. No timing is asserted: the figures' presence, shapes and plans are."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _benchmark(run_module, *args):
  res = run_module(["launch.benchmark", "--sections=methods", "--repeats=1", "--train_steps=1", *args])
  return res


def test_methods_section_times_inference_and_a_train_step(run_module):
  # SCL-LLE at a small crop and batch (a recipe step is minutes on 2 cores); SNR with a crop it refuses: that
  # method's entry is its one-line error and the other method's figures are still there; SCUF (real-size
  # SD-Turbo) is skipped on a CPU backend, saying why.
  res = _benchmark(run_module, "--methods=scl_lle,skf_snr,scuf", "--method_sizes=96x64,48x32",
                   "--method_override=scl_lle:data.crop=32", "--method_override=scl_lle:data.pool_size=32",
                   "--method_override=scl_lle:batch_size=2", "--method_override=skf_snr:data.crop=30")
  assert res.returncode == 0, res.stderr[-3000:]
  result = json.loads(res.stdout)
  # The host CPU is recorded with every run (ratios to a peer depend on it).
  assert result["host"]["cpus"] == os.cpu_count() and isinstance(result["host"].get("isa", []), list)
  scl = result["methods"]["scl_lle"]
  assert scl["method"] == "scl_lle" and scl["config"] == "configs/scl_lle.py" and scl["devices"] == 1
  assert scl["params_trainable"] == 79416  # DCE-Net; the frozen VGG-16 and DeepLabV3+ are params_frozen.
  assert scl["params_frozen"] > 10_000_000
  assert sorted(scl["inference"]) == ["48x32", "96x64"]
  for figures in scl["inference"].values():
    assert figures["images_per_s"] > 0 and figures["ms_per_image"] > 0 and figures["plan_gb"] >= 0
    assert figures["reps"] == 1 and figures["compile_s"] >= 0
  train = scl["train"]
  assert train["batch"] == 2 and train["size"] == [32, 32] and train["steps"] == 1
  assert train["steps_per_s"] > 0 and train["images_per_s"] == pytest.approx(2 * train["steps_per_s"], rel=1e-3)
  # The step's plan holds at least the frozen towers in float32.
  assert train["plan_gb"] >= 4 * scl["params_frozen"] / 1e9
  assert "device_peak_gb" not in train  # CPU: only XLA's plan.
  snr = result["methods"]["skf_snr"]
  assert "data.crop" in snr["error"] and "inference" not in snr and snr["wall_s"] > 0
  scuf = result["methods"]["scuf"]
  assert scuf["skipped"].startswith("CPU: ") and "scripts/benchmark_gpu.sh" in scuf["skipped"]
  assert "train" not in scuf and "inference" not in scuf


@pytest.mark.parametrize("args, expected", [
    (["--methods=sgz,nope"], "--methods: unknown ['nope']"),
    (["--method_sizes=600by400"], "--method_sizes 600by400: expected WIDTHxHEIGHT"),
    (["--method_override=sgz.data.crop=64"], "--method_override sgz.data.crop=64: expected METHOD:FIELD=VALUE"),
])
def test_bad_methods_flags_are_one_line(run_module, args, expected):
  res = _benchmark(run_module, *args)
  assert res.returncode != 0
  assert expected in res.stderr.strip().splitlines()[-1], res.stderr[-2000:]
  assert "Traceback" not in res.stderr


def test_gpu_script_without_a_gpu_says_so_and_writes_nothing(tmp_path):
  before = sorted(p.name for p in (REPO / "docs").iterdir())
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu", PATH=f"{tmp_path}:{os.environ['PATH']}")
  # No python3 with a GPU jax either: a `python3` that is this (CPU) interpreter comes first on the PATH.
  (tmp_path / "python3").symlink_to(sys.executable)
  res = subprocess.run(["bash", "scripts/benchmark_gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 1
  assert res.stderr.strip().splitlines()[-1].startswith("error: no GPU"), res.stderr
  assert sorted(p.name for p in (REPO / "docs").iterdir()) == before


def test_scuf_memory_rows_are_the_full_objective_at_real_size():
  """The scuf_memory rows' method (`abstract_sd_turbo`: the real SD-Turbo shapes, no weights) has the caption term on
  (caption ids in its batch) and the memory-lean switches of `scale`: chunked attention, the VAE per layer."""
  from configs import scuf as scuf_config  # pylint: disable=g-import-not-at-top
  from lowlight_jax.methods import base  # pylint: disable=g-import-not-at-top
  from lowlight_jax.models import sd_turbo_configs  # pylint: disable=g-import-not-at-top
  config = scuf_config.get_config("scale")
  config.abstract_sd_turbo = True
  method = base.load_method(config)
  assert method.use_captions
  assert {"low_caption_ids", "high_caption_ids"} <= set(method.example_batch())
  assert method.remat_vae_layers and method.unet_spec.module.use_memory_efficient_attention
  assert method.unet_spec.config["block_out_channels"] == sd_turbo_configs.UNET_CONFIG["block_out_channels"]
