"""The test run's own scheduling: the files tests/conftest.py sends to the workers first exist (a renamed file
would silently fall back to the end of the queue, where it runs alone and lengthens CI)."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_slow_files_first_exist_and_scripts_keep_their_order():
  text = (REPO / "tests" / "conftest.py").read_text()
  block = text[text.index("SLOW_FILES_FIRST = ("):]
  paths = re.findall(r'"(tests/[^"]+\.py)"', block[:block.index(")\n")])
  assert len(paths) >= 5
  for path in paths:
    assert (REPO / path).is_file(), path
  # Without --no-loadscope-reorder, xdist re-sorts the files by test count and the order above is lost.
  assert "--dist loadfile --no-loadscope-reorder" in (REPO / "scripts" / "test.sh").read_text()
