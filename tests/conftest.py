"""Test setup: eight fake CPU devices, parsed absl flags, and paths to ../shared."""

import os
import pathlib
import subprocess
import sys

# Must happen before jax is imported anywhere: tests exercise sharded steps on a
# mesh of 8 fake CPU devices.
# XLA CPU's memory-minimising scheduler (lowlight_jax/train/memory.py CPU_MEMORY_SCHEDULER_FLAG): the SCUF smoke
# step on the 8 fake devices holds 387 MiB of temporaries per device with it and 997 MiB without (each fake device
# holds its own while the eight run), and compiles and steps faster too (279 s vs 370 s, 11.6 s vs 17.4 s a step).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_cpu_enable_concurrency_optimized_scheduler=false"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# transformers / diffusers (imported at collection by the SD-Turbo parity tests) must never import TensorFlow:
# the library hides it from them (models/sd_compat.py), and TensorFlow beside torch's triton crashes the process.
os.environ["USE_TF"] = "0"

from absl import flags  # noqa: E402
import pytest  # noqa: E402

# grain worker processes read absl flags; they must count as parsed.
flags.FLAGS.mark_as_parsed()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("LOWLIGHT_SHARED", REPO_ROOT.parent / "shared"))
CONFORMANCE = SHARED / "conformance"
METRICS_REFERENCE = SHARED / "metrics_reference"


def _compile_cache_for_this_run():
  """One persistent XLA compilation cache per test run, shared by the xdist workers and the CLIs the tests start
  (they inherit JAX_COMPILATION_CACHE_DIR): a step compiled again by another test (smoke runs and their resumes,
  re-built pipelines) is read back instead of compiled. Set here, when this file is imported, not in a
  pytest_configure hook: a run of one folder (`pytest tests/methods`) imports that folder's conftest.py, and jax with
  it, before any hook runs, and jax reads the variable when it is imported. Returns the folder this process made
  (removed when the run ends), or None (a worker, which inherits the controller's, or a cache the user chose)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return None
  import tempfile  # pylint: disable=g-import-not-at-top
  path = tempfile.mkdtemp(prefix="lowlight-test-compile-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  return path


_COMPILE_CACHE = _compile_cache_for_this_run()


#: Scheduling. scripts/test.sh runs `-n 2 --dist loadfile --no-loadscope-reorder`: whole files go to the two workers
#: in collection order, each worker taking the next file as it runs out. Moving whole files keeps every file's own
#: order; no test depends on which file ran before it. The order, by a JUnit report and a memory log of full runs (the
#: seconds: a fresh clone's run on a 2-core host, 2026-12-02, 2,658 s of tests in 1,359 s):
#:   1. MEMORY_HEAVY_FIRST: the SCUF file (about 780 s). Its 8-device smoke run is the run's memory peak
#:      (each fake device holds the step's temporaries while the eight run: its worker reached 18.8 GB of the
#:      machine's 24 with XLA CPU's default scheduler, 12.6 GB with the one set above), so it starts first, while the
#:      other worker takes
#:   2. the remaining files, minutes of short ones (about 1,000 s in all), and only then
#:   3. SLOW_FILES_LAST, slowest first (1-4 min and a few GB each; about 880 s in all): they run two at a time once the
#:      SCUF file is done, instead of beside its peak, and none is left to run alone at the end of the queue.
MEMORY_HEAVY_FIRST = (
    "tests/methods/test_scuf.py",
)
SLOW_FILES_LAST = (
    "tests/methods/test_skf_drbn.py",
    "tests/train/test_trainer.py",
    "tests/methods/test_scl_lle_finetune_niqe.py",
    "tests/methods/test_skf_snr.py",
    "tests/methods/test_dmgnie.py",
    "tests/launch/test_skf_cli.py",
    "tests/models/test_sd_compat_remat.py",
)


def pytest_collection_modifyitems(config, items):
  del config
  first = set(MEMORY_HEAVY_FIRST)
  last = {path: i for i, path in enumerate(SLOW_FILES_LAST)}

  def rank(item):
    path = item.nodeid.split("::")[0]
    return (0, 0) if path in first else (2, last[path]) if path in last else (1, 0)

  items.sort(key=rank)  # stable


def pytest_unconfigure(config):
  del config
  if _COMPILE_CACHE:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def conformance_dir() -> pathlib.Path:
  if not CONFORMANCE.is_dir():
    # A missing ../shared is a broken checkout, not a reason to skip.
    raise FileNotFoundError(f"conformance data not found at {CONFORMANCE}")
  return CONFORMANCE


@pytest.fixture(scope="session")
def metrics_reference_dir() -> pathlib.Path:
  if not METRICS_REFERENCE.is_dir():
    raise FileNotFoundError(f"metrics reference data not found at {METRICS_REFERENCE}")
  return METRICS_REFERENCE


def _run_module(args, *, timeout: float = 600) -> subprocess.CompletedProcess:
  """`python -m ARGS` in the repo root as a user runs it: one CPU device (no fake-device flag)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_module():
  """Runs a CLI in a subprocess: `run_module(["launch.train", ...], timeout=600)`."""
  return _run_module


@pytest.fixture(scope="module", autouse=True)
def _drop_compiled_train_steps():
  """After each file, the trainer's in-process compiled steps (`trainer._COMPILED_STEPS`, kept so a resume in the
  same test reuses its program) go: an 8-device smoke step's executable is large, and no other file runs the same
  program. JAX's own jit caches stay (later files reuse their small programs)."""
  yield
  trainer = sys.modules.get("lowlight_jax.train.trainer")
  if trainer is not None:
    trainer._COMPILED_STEPS.clear()  # pylint: disable=protected-access
