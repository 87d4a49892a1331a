"""The test run's own scheduling: the files tests/conftest.py places first and last exist (a renamed file would
silently fall back among the short files: beside the SCUF file's memory peak, or to the end of the queue)."""

import pathlib

from tests import conftest  # The module pytest loaded (sys.modules), not a second copy.

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_scheduled_files_exist_and_scripts_keep_their_order():
  for name, least in (("MEMORY_HEAVY_FIRST", 1), ("SLOW_FILES_LAST", 5)):
    paths = getattr(conftest, name)
    assert len(paths) >= least, name
    for path in paths:
      assert (REPO / path).is_file(), path
  # Without --no-loadscope-reorder, xdist re-sorts the files by test count and the order above is lost.
  assert "--dist loadfile --no-loadscope-reorder" in (REPO / "scripts" / "test.sh").read_text()


def test_tests_run_under_xla_cpus_memory_minimising_scheduler():
  """tests/conftest.py sets the flag `launch.benchmark`'s memory rows use (the SCUF 8-device run's memory)."""
  import os  # pylint: disable=g-import-not-at-top
  from lowlight_jax.train import memory  # pylint: disable=g-import-not-at-top
  assert memory.CPU_MEMORY_SCHEDULER_FLAG in os.environ["XLA_FLAGS"].split()
