"""launch.background as a user runs it: a camera's background from a short synthetic video (median, RPCA, a SegBMN
smoke run), written atomically, stored per camera, scored against the video's ground-truth background; bad inputs
are one error line naming them."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import dmgnie
from data_pipelines import synthetic_video
from lowlight_jax import errors
from lowlight_jax.io import backgrounds
from lowlight_jax.train import trainer


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  """6 s of a 96x64 day scene of camera 0 (`cam00_20240601T120000.mp4`) with its ground truth beside it."""
  cfg = synthetic_video.SceneConfig(width=96, height=64, fps=10.0)
  return synthetic_video.write_video(tmp_path_factory.mktemp("videos"), cfg, num_frames=60, seed=3, camera=0)


def _report(result):
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _error_line(result):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert lines[0].startswith("background.py: error: "), lines[0]
  return lines[0]


def test_median_and_rpca_backgrounds_are_written_stored_and_scored(video, tmp_path, run_module):
  out, store = tmp_path / "out" / "bg.png", tmp_path / "store"
  report = _report(run_module(["launch.background", "--video", str(video.video), "--out", str(out), "--store",
                               str(store), "--frames", "16", "--eval_gt"], timeout=300))
  assert report["camera"] == "cam00" and report["method"] == "median" and report["frames"] == 16
  assert np.asarray(Image.open(out)).shape == (64, 96, 3)
  assert report["reference"] == str(video.background) and report["psnr"] > 27 and report["ssim"] > 0.8
  # Stored per camera for stage 2, with its provenance; a stage that needs another size is told the file and sizes.
  np.testing.assert_array_equal(backgrounds.load(store, "cam00", size=(64, 96)) * 255,
                                np.asarray(Image.open(out), np.float32))
  assert backgrounds.load_info(store, "cam00")["method"] == "median"
  with pytest.raises(errors.InputError, match=r"cam00\.png is 64x96 \(HxW\) but 90x160 is needed"):
    backgrounds.load(store, "cam00", size=(90, 160))

  rpca = _report(run_module(["launch.background", "--video", str(video.video), "--method", "rpca", "--out",
                             str(tmp_path / "rpca.png"), "--frames", "8", "--reference", str(video.background)],
                            timeout=300))
  assert rpca["method"] == "rpca" and rpca["store"] is None and rpca["psnr"] > 25


@pytest.mark.parametrize("case", ["not_a_video", "night_video", "no_run", "no_checkpoint"])
def test_bad_inputs_are_one_error_line_naming_them(case, video, tmp_path, run_module):
  args, needle = ["--video", str(video.video), "--out", str(tmp_path / "bg.png")], None
  if case == "night_video":  # No daytime frame (22:00 by its name): no daytime memory to extract.
    cfg = synthetic_video.SceneConfig(width=32, height=24, fps=10.0, night=True)
    night = synthetic_video.write_video(tmp_path, cfg, num_frames=10, seed=3, camera=2).video
    args[1], needle = str(night), f"--video {night}: no daytime frames (the video is night by its timestamp"
  elif case == "not_a_video":
    bad = tmp_path / "cam05_20240601T120000.mp4"
    bad.write_bytes(b"these bytes are not a video")
    args[1], needle = str(bad), f"--video {bad}: no readable frames"
  elif case == "no_run":
    args += ["--workdir", str(tmp_path / "missing_run")]
    needle = f"--workdir {tmp_path / 'missing_run'} is not a folder"
  else:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(dmgnie.get_config("smoke").to_json())
    args += ["--workdir", str(run)]
    needle = f"--workdir {run} has no checkpoints/"
  line = _error_line(run_module(["launch.background", *args], timeout=300))
  assert needle in line, line
  assert not (tmp_path / "bg.png").exists()


def test_segbmn_background_from_a_smoke_run(video, tmp_path, run_module):
  # The method test's smoke run (same config: its compiled step comes from the test session's cache).
  config = dmgnie.get_config("segbmn,smoke,steps=4")
  config.checkpoint_every = 2
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(config, str(workdir))
  store = tmp_path / "store"
  report = _report(run_module(["launch.background", "--video", str(video.video), "--workdir", str(workdir),
                               "--store", str(store), "--frames", "6", "--masks", "ground_truth", "--eval_gt"],
                              timeout=300))
  assert report["method"] == "segbmn" and report["step"] == 4 and report["mask_source"] == "ground_truth"
  assert np.isfinite(report["psnr"]) and report["out"] is None
  assert backgrounds.load(store, "cam00", size=(64, 96)).shape == (64, 96, 3)
  assert backgrounds.load_info(store, "cam00")["workdir"] == str(workdir)
