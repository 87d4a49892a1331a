"""Test setup: eight fake CPU devices, parsed absl flags, and paths to ../shared."""

import os
import pathlib
import subprocess
import sys

# Must happen before jax is imported anywhere: tests exercise sharded steps on a
# mesh of 8 fake CPU devices.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402
import pytest  # noqa: E402

# grain worker processes read absl flags; they must count as parsed.
flags.FLAGS.mark_as_parsed()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("LOWLIGHT_SHARED", REPO_ROOT.parent / "shared"))
CONFORMANCE = SHARED / "conformance"
METRICS_REFERENCE = SHARED / "metrics_reference"


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
