r"""Renders synthetic fixed-camera traffic videos (day or night) with ground-truth backgrounds.

  lowlight make-synthetic-video --out DIR ...
  python -m launch.make_synthetic_video --out DIR --minutes M --fps F --size WxH \
      [--night | --both] [--seed S] [--cameras N]

Writes per camera `cam{NN}_{YYYYMMDD}T{HHMMSS}.mp4` (day videos start at 12:00, night ones at 22:00,
which the day/night split of `data_pipelines.video` reads from the name), `..._background.png`,
`..._masks.npz` and a `manifest.json`; see `data_pipelines/synthetic_video.py` for the scene and the
formats. Frames are streamed: memory does not grow with the length. Example (30 minutes of 64x36,
day and night, in well under a minute on one core):

  python -m launch.make_synthetic_video --out /tmp/videos --minutes 30 --fps 10 --size 64x36 \
      --both --preset ultrafast
"""

import json
import os

from absl import app
from absl import flags

from data_pipelines import synthetic_video
from launch import _common
from lowlight_jax import errors

_OUT = flags.DEFINE_string("out", None, "Output folder (created if missing).")
_MINUTES = flags.DEFINE_float("minutes", 1.0, "Length of each video in minutes.")
_FPS = flags.DEFINE_float("fps", 25.0, "Frame rate.")
_SIZE = flags.DEFINE_string("size", "640x360", "WIDTHxHEIGHT, both even.")
_NIGHT = flags.DEFINE_bool("night", False, "Render the night version (default: day).")
_BOTH = flags.DEFINE_bool("both", False, "Render day AND night videos of every camera.")
_SEED = flags.DEFINE_integer("seed", 0, "Scene and traffic seed.")
_CAMERAS = flags.DEFINE_integer("cameras", 1, "Number of cameras (different scenes).")
_HARD = flags.DEFINE_bool("hard_cases", False, "Render the background-modelling hard cases of the default set "
                          "(queueing and parked vehicles, day-time cloud shadows, camera jitter: "
                          "synthetic_video.HARD_CASES).")
_PRESET = flags.DEFINE_string("preset", "veryfast",
                              "libx264 speed preset (ultrafast for long test videos).")
flags.mark_flags_as_required(["out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  width, height = _common.parse_size(_SIZE.value, even=True)
  for name, value in (("minutes", _MINUTES.value), ("fps", _FPS.value)):
    if not value > 0:
      raise errors.ConfigError(f"--{name} must be > 0, got {value}")
  if _CAMERAS.value < 1:
    raise errors.ConfigError(f"--cameras must be >= 1, got {_CAMERAS.value}")
  if os.path.exists(_OUT.value) and not os.path.isdir(_OUT.value):
    raise errors.OutputError(f"--out {_OUT.value} is a file; give a folder")
  night = (False, True) if _BOTH.value else (_NIGHT.value,)
  written = synthetic_video.write_videos(
      _OUT.value, minutes=_MINUTES.value, fps=_FPS.value, width=width, height=height, night=night,
      seed=_SEED.value, cameras=_CAMERAS.value, preset=_PRESET.value,
      scene=synthetic_video.HARD_CASES if _HARD.value else None)
  print(json.dumps({"videos": [str(v.video) for v in written],
                    "frames_per_video": written[0].num_frames if written else 0}))


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
