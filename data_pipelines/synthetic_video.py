"""Procedural fixed-camera traffic videos by day and by night: the embedded default for video data.

DMGNIE (Daytime-Memory Guided Nighttime Image Enhancement; seed `000_f6de8f8b0015d52c`) trains on
long videos from fixed road-intersection cameras: SegBMN learns the static background of a camera
from K of its daytime frames, and the night frames of the same camera are enhanced with that
background as a guide. The authors' LQ-TLL videos are private and nothing can be downloaded, so this
module renders stand-in footage with exactly the properties those models rely on, plus the ground
truth real footage never has:

  * a fixed camera: a textured static background (sky, buildings with windows, trees, two sidewalks
    with street lamps, a four-lane road with lane marks and a centre line);
  * moving foreground: vehicles (two lanes each way, car-following so they never overlap) and
    pedestrians on both sidewalks, arriving as Poisson processes;
  * day: bright, slightly warm light, a little sensor noise;
  * night: low bluish ambient light, warm pools under the street lamps, lit windows, headlight beams
    on the road ahead of each vehicle, headlight glare (saturating), red tail lights, and strong
    signal-dependent sensor noise (the Poisson-Gaussian model of `degrade.py`, at night-time gain);
  * ground truth per video: the static background under the video's own lighting (PNG, noise-free)
    and a foreground mask for every frame (1 = vehicle/pedestrian pixel; DMGNIE's M is 1 - mask).

Hard cases for background modelling (`SceneConfig` fields, all off by default, so that
`SceneConfig()` renders exactly what earlier versions did; `HARD_CASES` turns them on, and the
embedded default set `DEFAULT_SET` uses it, so that a plain per-pixel temporal median visibly fails
on it):

  * foreground that stops: a traffic light (`signal_cycle`, `signal_red`) with a stop line on each
    side of an intersection in the middle of the frame; during red, vehicles stop before the line
    and queue (car-following), and drive on at green. Parked vehicles (`parked_vehicles`) stand on
    the parking strip along a curb (drawn over the road edge of a sidewalk) for a fraction
    `parked_fraction` of the video (by default 60-80% of the frames, more than half: the case where
    a temporal median returns the car); half of them are there from the first frame and drive off,
    the others drive in mid-video and stay to the end. Stopped, queued and parked vehicles are
    foreground in the masks for every frame they are visible, like moving ones.
  * moving cloud shadows (day only; `cloud_shadow`, `cloud_coverage`, `cloud_speed`, `cloud_scale`):
    a smooth low-frequency multiplicative darkening field (random plane waves roughly along the
    drift, so that no shadow stands still, thresholded softly to the wanted coverage) drifting
    across everything below the skyline, vehicles and pedestrians included. Shadows are NOT
    foreground (masks stay 0), and the ground-truth background is the static background under the
    base lighting WITHOUT shadows: a background model should not keep a passing shadow.
  * camera jitter (`jitter`, `jitter_time`, `jitter_subpixel`): a global translation of the whole
    rendered frame (background, foreground, shadows; sensor noise is added after it), an
    Ornstein-Uhlenbeck process per axis (smooth over `jitter_time` seconds, or independent per
    frame) clipped to +-`jitter` pixels, sub-pixel (bilinear) or whole pixels. The masks are shifted
    with the frame (a pixel is foreground when any of its interpolation taps is, so mask = 0 is pure
    background); uncovered borders repeat the edge pixels (frame and mask alike). The ground-truth
    background is the un-jittered one: borders of ceil(`jitter`) pixels are unreliable.

Rendering happens in linear light and is tone-mapped with a 1/2.2 power; no learned parts, no
assets. Everything is streamed: each frame is rendered, encoded and forgotten, so videos of any
length cost constant memory (the cost of a frame does not depend on the video's length; the
renderer is told the length only to schedule the parked vehicles). The same (seed, camera) gives the
same scene by day and by night (and the same stop lines and cloud field); traffic, parked vehicles,
jitter and noise differ.

Outputs of `write_video` (stem `cam{camera:02d}_{YYYYMMDD}T{HHMMSS}`; the wall-clock timestamp in
the name is what `video.py` uses for its day/night split, and it is also stored as the MP4's
`creation_time`):

  {stem}.mp4             H.264 (libx264; MPEG-4 Part 2 if the build lacks it), yuv420p, a keyframe
                         every `keyframe_seconds`, constant frame rate.
  {stem}_background.png  the static background as rendered under this video's base lighting: no
                         foreground, no cloud shadows, no jitter, no noise.
  {stem}_masks.npz       foreground masks, chunked packed bits (see `MaskWriter` / `read_masks`).

Day videos start at 12:00:00 and night videos at 22:00:00 local time on 2024-06-01 (plus one minute
per camera, so names never collide).
"""

from __future__ import annotations

import dataclasses
import datetime
import fractions
import hashlib
import io
import json
import logging
import math
import os
import pathlib
import statistics
import tempfile
import zipfile
from typing import Any, Iterator, Mapping, Sequence

import av
import numpy as np
from PIL import Image

from lowlight_jax.io import imageio
from lowlight_jax.io import atomic_io

log = logging.getLogger(__name__)

DAY_START = datetime.datetime(2024, 6, 1, 12, 0, 0)
NIGHT_START = datetime.datetime(2024, 6, 1, 22, 0, 0)
TIMESTAMP_FORMAT = '%Y%m%dT%H%M%S'
MASK_CHUNK = 256  # Frames per member of the mask archive: random access decompresses one chunk.


@dataclasses.dataclass(frozen=True, kw_only=True)
class SceneConfig:
  """What to render. Sizes are pixels; rates are events per second.

  Attributes:
    width, height: frame size; both even (yuv420p chroma subsampling).
    fps: frame rate.
    night: render the night version of the scene.
    vehicle_rate: mean vehicle arrivals per second per lane (4 lanes).
    pedestrian_rate: mean pedestrian arrivals per second per sidewalk direction (4 streams).
    day_noise, night_noise: (a, b) of the Poisson-Gaussian sensor noise in linear light, variance
      a * x + b (night: the gain of a camera exposing for a dark scene).
    ambient_night: linear ambient light level at night (moonlight + sky glow), bluish.

  Hard cases for background modelling (defaults: off; see `HARD_CASES` for the values of the default
  set and the module docstring for the ground truth):
    signal_cycle: length (seconds) of a traffic-light cycle; 0 = no traffic light, no stop lines.
      A red phase starts at frame 0 and at every multiple of `signal_cycle` seconds.
    signal_red: seconds of red per cycle (<= `signal_cycle`): vehicles that have not passed their
      stop line stop before it and queue behind each other; at green they drive on.
    parked_vehicles: vehicles on the parking strips along the two curbs (alternating upper and
      lower curb, spread along the strip).
    parked_fraction: (low, high): each parked vehicle stands at its spot for a uniform fraction of
      the video's frames in this range; vehicles 0, 3, 4, 7, ... are there from frame 0 and then
      drive off, the others drive in and stay to the last frame.
    cloud_shadow: strength of the cloud shadows by day (the largest fractional darkening, in
      [0, 1)); 0 = none. Ignored at night.
    cloud_coverage: approximate fraction of the ground in shadow at any time, in (0, 1); also about
      the fraction of the time a ground pixel spends in shadow once a few clouds have passed it
      (keep it well below 0.5 for shadows that a temporal median should ignore).
    cloud_speed: drift speed of the shadow field, in frame widths per second.
    cloud_scale: typical size (wavelength) of the clouds, in frame widths.
    jitter: camera jitter amplitude in pixels (each axis clipped to +-jitter); 0 = a still camera.
    jitter_time: correlation time of the jitter in seconds (an Ornstein-Uhlenbeck process: a smooth
      sway); 0 = independent offsets every frame.
    jitter_subpixel: sub-pixel (bilinear) offsets; False rounds them to whole pixels.
  """

  width: int = 640
  height: int = 360
  fps: float = 25.0
  night: bool = False
  vehicle_rate: float = 0.25
  pedestrian_rate: float = 0.08
  day_noise: tuple[float, float] = (2e-4, 1e-6)
  night_noise: tuple[float, float] = (2e-3, 2e-5)
  ambient_night: float = 0.012
  signal_cycle: float = 0.0
  signal_red: float = 0.0
  parked_vehicles: int = 0
  parked_fraction: tuple[float, float] = (0.6, 0.8)
  cloud_shadow: float = 0.0
  cloud_coverage: float = 0.3
  cloud_speed: float = 0.08
  cloud_scale: float = 0.8
  jitter: float = 0.0
  jitter_time: float = 0.5
  jitter_subpixel: bool = True

  def __post_init__(self):
    if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
      raise ValueError(f'width and height must be even and >= 16, got {self.width}x{self.height}')
    if not self.fps > 0:
      raise ValueError(f'fps must be positive, got {self.fps}')
    if not 0 <= self.signal_red <= self.signal_cycle:
      raise ValueError(f'need 0 <= signal_red <= signal_cycle, got {self.signal_red}, '
                       f'{self.signal_cycle}')
    if self.parked_vehicles < 0:
      raise ValueError(f'parked_vehicles must be >= 0, got {self.parked_vehicles}')
    lo, hi = self.parked_fraction
    if not 0 < lo <= hi <= 1:
      raise ValueError(f'parked_fraction must satisfy 0 < low <= high <= 1, got {(lo, hi)}')
    if not 0 <= self.cloud_shadow < 1:
      raise ValueError(f'cloud_shadow must be in [0, 1), got {self.cloud_shadow}')
    if not 0 < self.cloud_coverage < 1:
      raise ValueError(f'cloud_coverage must be in (0, 1), got {self.cloud_coverage}')
    if self.cloud_speed < 0 or not self.cloud_scale > 0:
      raise ValueError(f'need cloud_speed >= 0 and cloud_scale > 0, got {self.cloud_speed}, '
                       f'{self.cloud_scale}')
    if not 0 <= self.jitter <= min(self.width, self.height) / 8 or self.jitter_time < 0:
      raise ValueError(f'need 0 <= jitter <= min(width, height) / 8 and jitter_time >= 0, got '
                       f'{self.jitter}, {self.jitter_time}')


# The hard cases switched on (`dataclasses.replace(cfg, **HARD_CASES)`); the default set uses them.
# A 30 s red phase in a 50 s cycle (red from frame 0: in a 1-minute video the light is red 40 s, and
# the head of each queue stands at its stop line for most of that); two parked vehicles (one per
# curb, one leaving, one arriving), each at its spot for 60-80% of the frames; day-time cloud
# shadows darkening by up to 45% over ~30% of the ground, drifting one frame width in 12.5 s (in the
# 1-minute videos every ground pixel is shadowed for 20-40% of the frames: transient); a camera
# swaying by up to 0.5 px (sub-pixel, correlation time 0.5 s; at the default set's 160x90 that is
# 2 px of a 640x360 frame, and it already blurs a temporal median of the window grids visibly).
HARD_CASES: dict[str, Any] = dict(signal_cycle=50.0, signal_red=30.0, parked_vehicles=2,
                                  parked_fraction=(0.6, 0.8), cloud_shadow=0.45,
                                  cloud_coverage=0.3, cloud_speed=0.08, cloud_scale=0.8,
                                  jitter=0.5, jitter_time=0.5, jitter_subpixel=True)


# ---------------------------------------------------------------------------------------------
# Static scene.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Layout:
  """Rows of the scene bands (pixels) and the static maps of one camera."""

  albedo: np.ndarray  # HxWx3 linear reflectance of the background.
  emissive_night: np.ndarray  # HxWx3 light emitted at night (lit windows, lamp heads).
  lamp_light: np.ndarray  # HxWx1 light from street lamps (night), before the lamp colour.
  lanes: list[tuple[int, int]]  # (top, bottom) rows of each lane; lanes 0-1 go left, 2-3 right.
  sidewalks: list[tuple[int, int]]  # (top, bottom) rows of the upper and lower sidewalk.
  sky: np.ndarray  # HxW bool: open sky (cloud shadows fall on everything else).


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
  """Value noise in [0, 1]: a coarse random grid upsampled bilinearly (cheap texture)."""
  gh, gw = max(2, h * cells // max(h, w) + 2), max(2, w * cells // max(h, w) + 2)
  grid = rng.random((gh, gw)).astype(np.float32)
  return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR))


def _build_layout(width: int, height: int, rng: np.random.Generator) -> _Layout:
  """Renders the static background of one camera (its geometry and textures come from `rng`)."""
  h, w = height, width
  albedo = np.zeros((h, w, 3), np.float32)
  emissive = np.zeros((h, w, 3), np.float32)
  rows = lambda f: int(round(f * h))
  bld_base, walk_top, road_top, road_bot = rows(.42), rows(.42), rows(.50), rows(.88)

  # Sky: pale blue gradient (it reflects nothing, but the daylight multiplies it like the rest).
  t = np.linspace(0, 1, max(bld_base, 1), dtype=np.float32)[:, None, None]
  sky_colour = ((1 - t) * np.array([.45, .6, .85], np.float32) +
                t * np.array([.7, .78, .85])).astype(np.float32)
  albedo[:bld_base] = sky_colour

  # Buildings: a row of blocks with window grids (lit at night at random).
  x = 0
  while x < w:
    bw = int(rng.integers(max(3, w // 12), max(4, w // 5)))
    top = rows(rng.uniform(.04, .30))
    tint = rng.choice([[1, .95, .9], [.9, .9, .95], [1, .85, .7]])
    colour = rng.uniform(.2, .55) * np.array(tint)
    tex = .85 + .3 * _smooth_noise(rng, bld_base - top, min(bw, w - x), 6)[..., None]
    albedo[top:bld_base, x:x + bw] = colour * tex
    step_y, step_x = max(2, h // 30), max(2, w // 60)
    win_h, win_w = max(1, step_y // 2), max(1, step_x // 2)
    for wy in range(top + step_y // 2, bld_base - step_y, step_y):
      for wx in range(x + step_x // 2, min(x + bw, w) - win_w, step_x):
        albedo[wy:wy + win_h, wx:wx + win_w] = (.08, .1, .13)
        if rng.random() < .3:
          emissive[wy:wy + win_h, wx:wx + win_w] = rng.uniform(.25, .6) * np.array([1, .8, .5])
    x += bw + int(rng.integers(0, max(1, w // 40)))

  # Trees in front of the buildings: textured green discs on brown trunks.
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  for _ in range(int(rng.integers(3, 7))):
    cx, cy, r = rng.uniform(0, w), rng.uniform(.30, .38) * h, rng.uniform(.035, .07) * h + 1
    tw = max(1, int(r / 4))
    albedo[int(cy):bld_base, int(cx) - tw // 2:int(cx) + tw - tw // 2] = (.18, .11, .06)
    disc = (xx - cx) ** 2 + ((yy - cy) * 1.2) ** 2 < r * r
    leaves = (.3 + .7 * _smooth_noise(rng, h, w, 24))[..., None] * np.array([.06, .2, .05])
    albedo[disc] = leaves[disc]

  # Sidewalks: light grey tiles; road: dark asphalt with grain.
  lanes = []
  walks = [(walk_top, road_top), (road_bot, h)]
  for top, bot in walks:
    tile = .3 + .05 * (((xx[top:bot] // max(2, w // 80)) % 2) * 2 - 1)[..., None]
    albedo[top:bot] = tile * np.array([1, 1, .97], np.float32)
  asphalt = .08 + .04 * _smooth_noise(rng, road_bot - road_top, w, 40)
  grain = rng.normal(0, .01, (road_bot - road_top, w)).astype(np.float32)
  albedo[road_top:road_bot] = (asphalt + grain)[..., None] * np.array([1, 1, 1.03], np.float32)
  lane_h = (road_bot - road_top) / 4
  for i in range(4):
    lanes.append((road_top + int(round(i * lane_h)), road_top + int(round((i + 1) * lane_h))))
  # Lane marks: dashed white between same-direction lanes, solid yellow in the middle.
  dash = (xx[0] // max(2, w // 32)) % 2 == 0
  mark_h = max(1, h // 180)
  for i in (1, 3):
    y = lanes[i][0]
    albedo[y:y + mark_h, dash] = .75
  y = lanes[2][0] - mark_h // 2
  albedo[y:y + mark_h + (h >= 360)] = (.7, .55, .1)

  # Street lamps along the upper sidewalk: poles, heads that glow at night, light pools.
  lamp_light = np.zeros((h, w), np.float32)
  n_lamps = 4
  pole_w = max(1, w // 320)
  head_y = rows(.24)
  for i in range(n_lamps):
    lx = int((i + .5) * w / n_lamps + rng.uniform(-.05, .05) * w)
    albedo[head_y:road_top, lx:lx + pole_w] = .15
    hw = max(1, w // 120)
    albedo[head_y:head_y + max(1, h // 90), lx - hw:lx + hw] = .3
    emissive[head_y:head_y + max(1, h // 90), lx - hw:lx + hw] = (3.0, 2.4, 1.5)
    # Pool of light: a broad ellipse on the ground (sidewalk and road) centred under the lamp.
    cy = (walk_top + road_bot) / 2 - .1 * h
    pool = .5 * np.exp(-(((xx - lx) / (.11 * w)) ** 2 + ((yy - cy) / (.25 * h)) ** 2))
    pool[:walk_top] *= .25  # Facades behind the lamp catch a little of it.
    lamp_light += pool
    # Soft halo around the lamp head (scattering in the air).
    lamp_light += .3 * np.exp(-(((xx - lx) / (.03 * w)) ** 2 + ((yy - head_y) / (.05 * h)) ** 2))
  sky = np.zeros((h, w), bool)
  sky[:bld_base] = np.all(albedo[:bld_base] == sky_colour, axis=-1)  # Nothing was drawn over it.
  return _Layout(albedo=np.clip(albedo, 0, 1), emissive_night=emissive,
                 lamp_light=lamp_light[..., None], lanes=lanes, sidewalks=walks, sky=sky)


def _stop_lines(width: int) -> tuple[int, int]:
  """Columns of the two stop lines: leftward traffic stops right of the first (its left edge at or
  after it), rightward traffic left of the second; the intersection lies between them."""
  return int(round(.58 * width)), int(round(.42 * width))


def _draw_stop_lines(layout: _Layout, width: int) -> None:
  """White stop bars across the lanes of each direction (only drawn when there is a signal)."""
  bar = max(1, width // 160)
  left_x, right_x = _stop_lines(width)
  lanes = layout.lanes
  layout.albedo[lanes[0][0]:lanes[1][1], left_x - bar:left_x] = .75
  layout.albedo[lanes[2][0]:lanes[3][1], right_x:right_x + bar] = .75


_DAYLIGHT = np.array([1.0, .98, .93], np.float32)
_LAMP_COLOUR = np.array([1.0, .72, .42], np.float32)
_AMBIENT_COLOUR = np.array([.75, .85, 1.0], np.float32)
_HEADLIGHT_COLOUR = np.array([1.0, .95, .85], np.float32)


# ---------------------------------------------------------------------------------------------
# Moving objects.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Object:
  x: float  # Left edge (pixels, may be off-screen).
  y: int  # Top row.
  speed: float  # Pixels per frame, signed.
  albedo: np.ndarray  # hxwx3.
  alpha: np.ndarray  # hxw, 0 or 1 (sprites are binary: the mask is exact).
  vehicle: bool
  lane: int  # Vehicle lane or pedestrian stream.

  def __post_init__(self):
    self.solid = self.alpha[..., None] > 0.5  # hxwx1, for np.copyto(where=...).
    self.lit_day = (self.albedo * _DAYLIGHT).astype(np.float32)

  @property
  def width(self) -> int:
    return self.alpha.shape[1]


def _vehicle_sprite(rng: np.random.Generator, lane_h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """A side view: body, darker window band, wheels; trucks are longer and taller."""
  truck = rng.random() < .15
  length = max(4, int(rng.uniform(.16, .22) * w if truck else rng.uniform(.07, .12) * w))
  height = max(2, int(lane_h * (rng.uniform(.75, .85) if truck else rng.uniform(.55, .7))))
  colours = [[.8, .8, .8], [.05, .05, .05], [.6, .05, .04], [.1, .2, .5], [.5, .5, .52],
             [.8, .7, .1], [.3, .35, .3]]
  body = np.array(colours[int(rng.integers(len(colours)))], np.float32) * rng.uniform(.85, 1.1)
  albedo = np.broadcast_to(body, (height, length, 3)).copy()
  alpha = np.ones((height, length), np.float32)
  if height >= 3:
    top_h = max(1, height * 2 // 5)
    if truck:
      albedo[:top_h, int(length * .8):] = (.06, .08, .1)  # Cab window.
    else:
      albedo[:top_h, int(length * .22):int(length * .78)] = (.06, .08, .1)
      alpha[:top_h, :int(length * .15)] = 0  # Sloped bonnet and boot.
      alpha[:top_h, int(length * .85):] = 0
    wheel = max(1, height // 3)
    for cx in (int(length * .2), int(length * .8)):
      albedo[-wheel:, max(0, cx - wheel // 2):cx + wheel // 2 + 1] = .03
  return np.clip(albedo, 0, 1), alpha


def _pedestrian_sprite(rng: np.random.Generator, walk_h: int) -> tuple[np.ndarray, np.ndarray]:
  """Head, shirt and trousers in a narrow column."""
  height = max(3, int(walk_h * rng.uniform(.8, 1.0)))
  width = max(1, int(round(height * .3)))
  albedo = np.empty((height, width, 3), np.float32)
  head = max(1, height // 5)
  albedo[:head] = np.array([.7, .5, .4]) * rng.uniform(.5, 1.1)
  albedo[head:height * 3 // 5] = rng.uniform(.05, .9, 3)
  albedo[height * 3 // 5:] = rng.uniform(.03, .35) * np.array([1, 1, 1.2])
  return np.clip(albedo, 0, 1), np.ones((height, width), np.float32)


class _Traffic:
  """Poisson arrivals, car-following, exits; deterministic given the generator."""

  def __init__(self, cfg: SceneConfig, layout: _Layout, rng: np.random.Generator):
    self.cfg, self.layout, self.rng = cfg, layout, rng
    self.objects: list[_Object] = []
    dt = 1.0 / cfg.fps
    # Per stream: the probability of an arrival in a frame (rate * dt, capped).
    self.p_vehicle = min(.9, cfg.vehicle_rate * dt)
    self.p_ped = min(.9, cfg.pedestrian_rate * dt)
    self.gap = max(2, cfg.width // 60)
    # Stop positions: a leftward vehicle's left edge stays >= stop[0], a rightward vehicle's right
    # edge <= stop[1], a small gap before the bars.
    left_x, right_x = _stop_lines(cfg.width)
    margin = max(1, self.gap // 2)
    self.stop = (left_x + margin, right_x - margin)
    warmup = int(cfg.fps * 8)
    self.frame = -warmup  # The frame the current positions belong to (0 = first video frame).
    # Start mid-stream: run the simulation for the time a slow vehicle needs to cross.
    for _ in range(warmup):
      self.step()

  def red(self, frame: int) -> bool:
    """Whether the light is red at `frame` (red phases start at frame 0, every `signal_cycle` s)."""
    cfg = self.cfg
    return cfg.signal_red > 0 and (frame / cfg.fps) % cfg.signal_cycle < cfg.signal_red

  def _spawn(self, vehicle: bool, stream: int) -> None:
    cfg, w = self.cfg, self.cfg.width
    if vehicle:
      top, bot = self.layout.lanes[stream]
      albedo, alpha = _vehicle_sprite(self.rng, bot - top, w)
      speed = self.rng.uniform(.12, .3) * w / cfg.fps
      leftward = stream < 2
      y = bot - alpha.shape[0] - max(0, (bot - top - alpha.shape[0]) // 4)
    else:
      top, bot = self.layout.sidewalks[stream // 2]
      albedo, alpha = _pedestrian_sprite(self.rng, bot - top)
      speed = self.rng.uniform(.015, .035) * w / cfg.fps
      leftward = stream % 2 == 0
      y = bot - alpha.shape[0]
    x = float(w) if leftward else -float(alpha.shape[1])
    if vehicle:
      # Never spawn into the vehicle that just entered the same lane.
      for o in self.objects:
        if o.vehicle and o.lane == stream:
          if (leftward and o.x + o.width + self.gap > w) or (not leftward and o.x < self.gap):
            return
    self.objects.append(_Object(x=x, y=y, speed=-speed if leftward else speed, albedo=albedo,
                                alpha=alpha, vehicle=vehicle, lane=stream))

  def step(self) -> None:
    """Advances one frame: arrivals, motion (vehicles keep a gap to their leader), exits."""
    for lane in range(4):
      if self.rng.random() < self.p_vehicle:
        self._spawn(True, lane)
    for stream in range(4):
      if self.rng.random() < self.p_ped:
        self._spawn(False, stream)
    w = self.cfg.width
    by_lane: dict[int, list[_Object]] = {}
    for o in self.objects:
      if o.vehicle:
        by_lane.setdefault(o.lane, []).append(o)
      else:
        o.x += o.speed
    red = self.red(self.frame + 1)
    for lane, cars in by_lane.items():
      leftward = lane < 2
      # Leaders first: the one furthest along the direction of travel.
      cars.sort(key=lambda o: o.x if leftward else -o.x)
      for i, o in enumerate(cars):
        nx = o.x + o.speed
        if i:
          lead = cars[i - 1]
          nx = max(nx, lead.x + lead.width + self.gap) if leftward else min(
              nx, lead.x - o.width - self.gap)
        if red:  # Vehicles that have not passed their stop line stop before it (no amber).
          if leftward and o.x >= self.stop[0]:
            nx = max(nx, self.stop[0])
          elif not leftward and o.x + o.width <= self.stop[1]:
            nx = min(nx, self.stop[1] - o.width)
        o.x = nx
    self.objects = [o for o in self.objects if -o.width - 1 < o.x < w + 1]
    self.frame += 1


@dataclasses.dataclass
class _Parked:
  """A vehicle on a curb's parking strip: at `spot` in frames [arrive, leave), driving otherwise."""

  obj: _Object
  spot: float  # Left edge at the parking spot.
  step: float  # Signed pixels per frame while driving in or off.
  arrive: float  # First frame at the spot (-inf: there from the start).
  leave: float  # First frame driving off (+inf: stays to the end).

  def x_at(self, frame: int) -> float:
    if frame < self.arrive:
      return self.spot - self.step * (self.arrive - frame)
    if frame >= self.leave:
      return self.spot + self.step * (frame - self.leave)
    return self.spot


def _parked_vehicles(cfg: SceneConfig, layout: _Layout, rng: np.random.Generator,
                     num_frames: int) -> list[_Parked]:
  """`cfg.parked_vehicles` vehicles alternating between the upper curb (facing left, like lane 0)
  and the lower one (facing right, like lane 3), each in its own slot along the strip."""
  w = cfg.width
  lane_h = layout.lanes[0][1] - layout.lanes[0][0]
  out = []
  per_strip = [(cfg.parked_vehicles + 1 - s) // 2 for s in (0, 1)]
  for i in range(cfg.parked_vehicles):
    strip, slot = i % 2, i // 2
    albedo, alpha = _vehicle_sprite(rng, lane_h, w)
    oh, ow = alpha.shape
    top, bot = layout.sidewalks[strip]
    # Upper curb: wheels on the sidewalk's road edge; lower curb: roof at the road edge.
    y = bot - oh if strip == 0 else top
    slot_w = w / per_strip[strip]
    lo = slot * slot_w
    spot = float(int(lo + rng.uniform(0, max(0.0, slot_w - ow))))
    step = rng.uniform(.08, .15) * w / cfg.fps * (-1 if strip == 0 else 1)
    stay = int(round(rng.uniform(*cfg.parked_fraction) * num_frames))
    leaves = i % 4 in (0, 3)
    arrive, leave = (-math.inf, stay) if leaves else (num_frames - stay, math.inf)
    obj = _Object(x=spot, y=y, speed=0.0, albedo=albedo, alpha=alpha, vehicle=True, lane=-1 - strip)
    out.append(_Parked(obj=obj, spot=spot, step=step, arrive=arrive, leave=leave))
  return out


class _CloudShadows:
  """A drifting multiplicative shadow field: `factor(frame)` is HxW in (0, 1], 1 in the open sky.

  The field is a sum of plane waves (wavelengths 0.6-1.5 `cloud_scale` frame widths, directions
  within 45 degrees of the drift, equal amplitudes: smooth, low-frequency, roughly Gaussian with
  unit variance), softly thresholded at the (1 - coverage) quantile and translated at the drift
  velocity. It is evaluated on a coarse grid (cells of 1/16 of a cloud) and upsampled bilinearly,
  so a frame costs about one HxW multiply.
  """

  MODES = 12

  def __init__(self, cfg: SceneConfig, layout: _Layout, rng: np.random.Generator):
    h, w = cfg.height, cfg.width
    self.size = (w, h)
    self.strength = cfg.cloud_shadow
    cell = max(1.0, w * cfg.cloud_scale / 16)
    gw, gh = max(2, math.ceil(w / cell)), max(2, math.ceil(h / cell))
    # Fine-pixel coordinates of the coarse samples, as PIL's bilinear resize maps them.
    xs = (np.arange(gw) + .5) * w / gw - .5
    ys = (np.arange(gh) + .5) * h / gh - .5
    # Drift: mostly along the road, either way; pixels per frame.
    heading = rng.uniform(-.4, .4) + np.pi * (rng.random() < .5)
    v = cfg.cloud_speed * w / cfg.fps
    vx, vy = v * np.cos(heading), v * np.sin(heading)
    # Wave vectors within 45 degrees of the drift, so every wave moves past (a wave parallel to the
    # drift would be a shadow standing still); equal amplitudes, unit variance for random phases.
    wavelength = cfg.cloud_scale * w * rng.uniform(.6, 1.5, self.MODES)
    angle = heading + rng.uniform(-np.pi / 4, np.pi / 4, self.MODES)
    kx, ky = 2 * np.pi / wavelength * np.cos(angle), 2 * np.pi / wavelength * np.sin(angle)
    amp = np.full(self.MODES, np.sqrt(2 / self.MODES))
    phase = rng.uniform(0, 2 * np.pi, self.MODES)
    self._spatial = (kx[:, None, None] * xs[None, None, :] + ky[:, None, None] * ys[None, :, None]
                     + phase[:, None, None])  # MODES x gh x gw.
    self._omega = -(kx * vx + ky * vy)  # Phase change per frame.
    self._amp = amp[:, None, None]
    self.threshold = statistics.NormalDist().inv_cdf(1 - cfg.cloud_coverage)
    self._ground = (~layout.sky).astype(np.float32)

  def factor(self, frame: int) -> np.ndarray:
    field = np.sum(self._amp * np.cos(self._spatial + self._omega[:, None, None] * frame), axis=0)
    d = np.clip(field - self.threshold + .5, 0, 1)  # A soft edge one standard deviation wide.
    d = d * d * (3 - 2 * d)  # Smoothstep.
    dark = Image.fromarray(d.astype(np.float32) * np.float32(self.strength))
    dark = np.asarray(dark.resize(self.size, Image.Resampling.BILINEAR))
    return 1 - dark * self._ground


class _Jitter:
  """Per-frame camera offsets (dx, dy) in pixels: an Ornstein-Uhlenbeck process per axis with
  stationary std `jitter` / 2 and correlation time `jitter_time`, clipped to +-`jitter`."""

  def __init__(self, cfg: SceneConfig, rng: np.random.Generator):
    self.rng, self.amp, self.subpixel = rng, cfg.jitter, cfg.jitter_subpixel
    self.rho = math.exp(-1 / (cfg.fps * cfg.jitter_time)) if cfg.jitter_time > 0 else 0.0
    self.sigma = cfg.jitter / 2
    self.state = rng.normal(0, self.sigma, 2)

  def next(self) -> tuple[float, float]:
    """The offset of the current frame; then advances."""
    d = np.clip(self.state, -self.amp, self.amp)
    if not self.subpixel:
      d = np.round(d)
    self.state = (self.rho * self.state +
                  math.sqrt(1 - self.rho ** 2) * self.rng.normal(0, self.sigma, 2))
    return float(d[0]), float(d[1])


def _int_shift(a: np.ndarray, k: int, axis: int, out: np.ndarray) -> None:
  """out[i] = a[clip(i - k)] along `axis` (0 or 1): a shift by k pixels, edge pixels repeated."""
  n = a.shape[axis]
  k = max(-n, min(n, k))
  at = (lambda s: (s,)) if axis == 0 else (lambda s: (slice(None), s))
  if k >= 0:
    out[at(slice(k, None))] = a[at(slice(0, n - k))]
    out[at(slice(0, k))] = a[at(slice(0, 1))]
  else:
    out[at(slice(0, n + k))] = a[at(slice(-k, None))]
    out[at(slice(n + k, None))] = a[at(slice(n - 1, n))]


def _shift_axis(a: np.ndarray, d: float, axis: int) -> np.ndarray:
  """out[i] = a[i - d] along `axis`: linear interpolation for fractional d (bool arrays: OR of the
  two taps), edge pixels repeated where the shift uncovers the border."""
  if d == 0:
    return a
  i = math.floor(d)
  f = d - i
  out = np.empty_like(a)
  _int_shift(a, i, axis, out)
  if f > 0:
    other = np.empty_like(a)
    _int_shift(a, i + 1, axis, other)
    if a.dtype == bool:
      out |= other
    else:  # out + f * (other - out), in place.
      other -= out
      other *= np.asarray(f, a.dtype)
      out += other
  return out


def shift_image(a: np.ndarray, dx: float, dy: float) -> np.ndarray:
  """Translates an HxW[xC] image by (dx, dy) pixels (content moves right and down for positive
  values), the way camera jitter moves a frame; bool masks keep every pixel any tap covers."""
  return _shift_axis(_shift_axis(a, dx, 1), dy, 0)


# ---------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------


def _clip_box(x0: int, y0: int, h: int, w: int, height: int, width: int):
  """Visible part of an h x w sprite at (x0, y0): (frame slices, sprite slices) or None."""
  fx0, fy0 = max(x0, 0), max(y0, 0)
  fx1, fy1 = min(x0 + w, width), min(y0 + h, height)
  if fx0 >= fx1 or fy0 >= fy1:
    return None
  return ((slice(fy0, fy1), slice(fx0, fx1)),
          (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0)))


def _gaussian_sprite(h: int, w: int, sy: float, sx: float, cy: float, cx: float) -> np.ndarray:
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  return np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2)).astype(np.float32)


class SceneRenderer:
  """Renders the frames of one (camera, lighting) scene; frames come out as uint8 HxWx3 sRGB.

  `next_frame()` returns (frame, foreground mask); the background image is `background_uint8`.
  `num_frames` is the length of the video, which only the parked vehicles' schedule needs (their
  stays are fractions of it); None: one minute. Random streams: layout (seed, camera); traffic,
  noise, parked vehicles and jitter (seed, camera, day/night); clouds (seed, camera). Each hard case
  has its own stream, so switching one on or off leaves the others' frames as they were.
  """

  def __init__(self, cfg: SceneConfig, *, seed: int, camera: int, num_frames: int | None = None,
               daylit: bool = False):
    self.cfg = cfg
    # `daylit` (a night scene's reference): the night video's random streams (same traffic, parked vehicles and
    # jitter, frame for frame) under daylight, without headlights, clouds or sensor noise.
    self.daylit = daylit and cfg.night
    self.lit_night = cfg.night and not self.daylit
    h, w = cfg.height, cfg.width
    stream = lambda *key: np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, camera,
                                                                                       *key])))
    self.layout = _build_layout(w, h, stream(0))
    if cfg.signal_cycle > 0 and cfg.signal_red > 0:
      _draw_stop_lines(self.layout, w)
    traffic_rng = stream(1, int(cfg.night))
    self.noise_rng = stream(2, int(cfg.night))
    if self.lit_night:
      self.light = (cfg.ambient_night * _AMBIENT_COLOUR + self.layout.lamp_light * _LAMP_COLOUR)
      self.base = self.layout.albedo * self.light + self.layout.emissive_night
      self.noise = cfg.night_noise
    else:
      self.light = np.broadcast_to(_DAYLIGHT, (h, w, 3))
      self.base = self.layout.albedo * _DAYLIGHT
      self.noise = cfg.day_noise
    self.base = self.base.astype(np.float32)
    self.light = np.ascontiguousarray(self.light, dtype=np.float32)
    self.traffic = _Traffic(cfg, self.layout, traffic_rng)
    self.frame = 0
    self.num_frames = num_frames if num_frames is not None else int(round(60 * cfg.fps))
    self.parked = _parked_vehicles(cfg, self.layout, stream(3, int(cfg.night)), self.num_frames)
    self.clouds = (_CloudShadows(cfg, self.layout, stream(5))
                   if cfg.cloud_shadow > 0 and not cfg.night else None)
    self.jitter = _Jitter(cfg, stream(4, int(cfg.night))) if cfg.jitter > 0 else None
    self.offset = (0.0, 0.0)  # Camera offset (dx, dy) of the frame `next_frame` returned last.
    # Headlight beam (a long, flat ellipse on the road ahead) and glare (a small saturating blob).
    bh, bw = max(2, h // 8), max(4, w // 5)
    beam = _gaussian_sprite(bh, bw, bh / 3, bw / 2.2, bh / 2, 0)
    self._beam = beam[..., None] * _HEADLIGHT_COLOUR
    g = max(3, (w // 40) | 1)
    self._glare = (_gaussian_sprite(g, g, g / 4, g / 4, g // 2, g // 2)[..., None] * 4.0 *
                   _HEADLIGHT_COLOUR)
    t = max(3, (w // 80) | 1)
    self._tail = _gaussian_sprite(t, t, t / 3, t / 3, t // 2, t // 2)[..., None] * np.array(
        [1.5, .08, .05], np.float32)

  @property
  def background_uint8(self) -> np.ndarray:
    """The static background under this scene's base lighting, as uint8 sRGB: the ground truth.

    No foreground (moving, stopped or parked), no cloud shadows, no camera jitter, no noise.
    """
    return _to_uint8(self.base)

  def _paint(self, img: np.ndarray, mask: np.ndarray, o: _Object, x0: int) -> bool:
    """Draws object `o` with its left edge at column x0 and marks it in `mask`; False if unseen."""
    h, w = mask.shape
    box = _clip_box(x0, o.y, o.alpha.shape[0], o.alpha.shape[1], h, w)
    if box is None:
      return False
    (fy, fx), (sy, sx) = box
    solid = o.solid[sy, sx]
    lit = o.albedo[sy, sx] * self.light[fy, fx] if self.lit_night else o.lit_day[sy, sx]
    np.copyto(img[fy, fx], lit, where=solid)
    mask[fy, fx] |= solid[..., 0]
    return True

  def _add(self, img: np.ndarray, sprite: np.ndarray, x0: int, y0: int,
           albedo: np.ndarray | None = None) -> None:
    """Adds light (`sprite`), optionally reflected by `albedo` (the surface it falls on)."""
    h, w = img.shape[:2]
    box = _clip_box(x0, y0, sprite.shape[0], sprite.shape[1], h, w)
    if box is None:
      return
    (fy, fx), (sy, sx) = box
    light = sprite[sy, sx]
    img[fy, fx] += light * albedo[fy, fx] if albedo is not None else light

  def next_frame(self) -> tuple[np.ndarray, np.ndarray]:
    """Renders the current frame and advances the traffic: (uint8 HxWx3 frame, bool HxW mask)."""
    cfg = self.cfg
    h, w = cfg.height, cfg.width
    img = self.base.copy()
    mask = np.zeros((h, w), bool)
    for p in self.parked:  # Behind the pedestrians on the sidewalks; lights off.
      self._paint(img, mask, p.obj, int(round(p.x_at(self.frame))))
    beams = []
    for o in self.traffic.objects:
      x0 = int(round(o.x))
      if self._paint(img, mask, o, x0) and self.lit_night and o.vehicle:
        beams.append((o, x0))
    for o, x0 in beams:
      oh, ow = o.alpha.shape
      leftward = o.speed < 0
      lamp_y = o.y + oh // 2
      front = x0 if leftward else x0 + ow
      back = x0 + ow if leftward else x0
      beam = self._beam[:, ::-1] if leftward else self._beam
      bx = front - beam.shape[1] if leftward else front
      # The beam lights the road surface (it reflects with the background's albedo) ...
      self._add(img, beam, bx, o.y + oh - beam.shape[0] // 2, self.layout.albedo)
      # ... and the lamps themselves glare straight into the camera; tail lights glow red.
      g = self._glare.shape[0]
      self._add(img, self._glare, front - g // 2, lamp_y - g // 2)
      t = self._tail.shape[0]
      self._add(img, self._tail, back - t // 2, lamp_y - t // 2)
    if self.clouds is not None:  # Shadows fall on the scene (foreground included), not the masks.
      img *= self.clouds.factor(self.frame)[..., None]
    if self.jitter is not None:  # The camera moves: everything in the frame, masks alike.
      self.offset = self.jitter.next()
      img = shift_image(img, *self.offset)
      mask = shift_image(mask, *self.offset)
    self.traffic.step()
    self.frame += 1
    if not self.daylit:
      a, b = self.noise
      noise = self.noise_rng.standard_normal(img.shape, dtype=np.float32)
      img += np.sqrt(a * np.clip(img, 0, None) + b) * noise
    return _to_uint8(img), mask


def _to_uint8(linear: np.ndarray) -> np.ndarray:
  """Linear light -> display (1/2.2 power, clipped) -> uint8."""
  out = np.power(np.clip(linear, 0.0, 1.0), 1 / 2.2)
  return (out * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Mask archive.
# ---------------------------------------------------------------------------------------------


class MaskWriter:
  """Streams per-frame boolean masks into a `.npz` (a zip of `.npy` members), chunk by chunk.

  Format (readable with plain `np.load`): `shape.npy` = int64 [T, H, W]; `chunk.npy` = int64
  frames per chunk; `masks_{k:06d}.npy` = uint8 [n_k, H, ceil(W / 8)] holding frames k*chunk to
  k*chunk + n_k - 1, bits packed along the width with `np.packbits(mask, axis=-1)` (big-endian
  bit order). Members are deflate-compressed; random access to a frame decompresses one chunk.
  `read_masks` unpacks; 1 = foreground (vehicle or pedestrian).
  """

  def __init__(self, path: str | os.PathLike, height: int, width: int, chunk: int = MASK_CHUNK):
    self.path = pathlib.Path(path)
    self.height, self.width, self.chunk = height, width, chunk
    self._zip = zipfile.ZipFile(self.path, 'w', compression=zipfile.ZIP_DEFLATED, compresslevel=6)
    self._buffer: list[np.ndarray] = []
    self._count = 0
    self._chunks = 0

  def add(self, mask: np.ndarray) -> None:
    if mask.shape != (self.height, self.width):
      raise ValueError(f'mask shape {mask.shape} != {(self.height, self.width)}')
    self._buffer.append(np.packbits(mask.astype(bool), axis=-1))
    self._count += 1
    if len(self._buffer) == self.chunk:
      self._flush()

  def _write(self, name: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    self._zip.writestr(name, buf.getvalue())

  def _flush(self) -> None:
    if self._buffer:
      self._write(f'masks_{self._chunks:06d}.npy', np.stack(self._buffer))
      self._chunks += 1
      self._buffer = []

  def close(self) -> None:
    self._flush()
    self._write('shape.npy', np.array([self._count, self.height, self.width], np.int64))
    self._write('chunk.npy', np.array(self.chunk, np.int64))
    self._zip.close()


def read_masks(path: str | os.PathLike, frames: Sequence[int] | slice | None = None) -> np.ndarray:
  """Foreground masks of a `MaskWriter` archive: bool [N, H, W] (all frames if `frames` is None)."""
  with np.load(path) as z:
    t, h, w = (int(v) for v in z['shape'])
    chunk = int(np.asarray(z['chunk']).reshape(-1)[0])
    if frames is None:
      frames = range(t)
    elif isinstance(frames, slice):
      frames = range(*frames.indices(t))
    frames = [int(f) for f in frames]
    out = np.empty((len(frames), h, w), bool)
    cache: dict[int, np.ndarray] = {}
    for i, f in enumerate(frames):
      if not 0 <= f < t:
        raise IndexError(f'frame {f} out of range [0, {t}) in {os.fspath(path)!r}')
      k = f // chunk
      if k not in cache:
        cache.clear()  # Frames are usually asked for in order: keep one chunk.
        cache[k] = z[f'masks_{k:06d}']
      out[i] = np.unpackbits(cache[k][f - k * chunk], axis=-1, count=w).astype(bool)
  return out


# ---------------------------------------------------------------------------------------------
# Writing videos.
# ---------------------------------------------------------------------------------------------


def video_stem(camera: int, night: bool) -> str:
  """`cam{camera:02d}_{timestamp}`; the timestamp (day 12:00, night 22:00) drives the day/night
  split of `video.py`."""
  start = (NIGHT_START if night else DAY_START) + datetime.timedelta(minutes=camera)
  return f'cam{camera:02d}_{start.strftime(TIMESTAMP_FORMAT)}'


def _pick_codec() -> str:
  return 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'


@dataclasses.dataclass(frozen=True)
class WrittenVideo:
  """Paths written by `write_video`."""

  video: pathlib.Path
  background: pathlib.Path
  masks: pathlib.Path
  num_frames: int
  camera: int
  night: bool


def write_video(out_dir: str | os.PathLike, cfg: SceneConfig, *, num_frames: int, seed: int = 0,
                camera: int = 0, keyframe_seconds: float = 2.0, crf: int = 23,
                preset: str = 'veryfast') -> WrittenVideo:
  """Renders `num_frames` frames of camera `camera` and writes the MP4, background PNG and masks.

  Streaming: one frame at a time is rendered, encoded and dropped. Files appear atomically (written
  under temporary names in `out_dir`, then renamed), so a crash never leaves a half-written video.

  Args:
    out_dir: destination folder (created if missing).
    cfg: scene size, frame rate, day or night, hard cases.
    num_frames: length of the video in frames (parked vehicles stay for fractions of it).
    seed, camera: the scene geometry depends on (seed, camera); traffic and noise also on day/night.
    keyframe_seconds: GOP length. Short GOPs make the random access of `video.py` cheap (a seek
      decodes at most one GOP) at a small cost in file size.
    crf, preset: libx264 quality (lower is better) and speed preset.
  """
  if num_frames <= 0:
    raise ValueError(f'num_frames must be positive, got {num_frames}')
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  stem = video_stem(camera, cfg.night)
  paths = WrittenVideo(video=out_dir / f'{stem}.mp4', background=out_dir / f'{stem}_background.png',
                       masks=out_dir / f'{stem}_masks.npz', num_frames=num_frames, camera=camera,
                       night=cfg.night)
  renderer = SceneRenderer(cfg, seed=seed, camera=camera, num_frames=num_frames)
  imageio.write_png_atomic(paths.background, renderer.background_uint8)

  tmp_video = out_dir / f'.{stem}.mp4.tmp'
  tmp_masks = out_dir / f'.{stem}_masks.npz.tmp'
  rate = fractions.Fraction(cfg.fps).limit_denominator(1001)
  codec = _pick_codec()
  try:
    masks = MaskWriter(tmp_masks, cfg.height, cfg.width)
    with av.open(os.fspath(tmp_video), 'w', format='mp4') as container:
      start = (NIGHT_START if cfg.night else DAY_START) + datetime.timedelta(minutes=camera)
      container.metadata['creation_time'] = start.strftime('%Y-%m-%dT%H:%M:%S.000000Z')
      comment = dict(generator='lowlight-jax synthetic_video', seed=seed, camera=camera,
                     night=cfg.night)
      if scene := _scene_overrides(cfg):
        comment['scene'] = scene
      container.metadata['comment'] = json.dumps(comment)
      stream = container.add_stream(codec, rate=rate)
      stream.width, stream.height, stream.pix_fmt = cfg.width, cfg.height, 'yuv420p'
      gop = max(1, int(round(keyframe_seconds * cfg.fps)))
      if codec == 'libx264':
        # Fixed GOP without scene-cut keyframes: segment boundaries of video.py land on keyframes.
        stream.options = {'preset': preset, 'crf': str(crf), 'g': str(gop), 'keyint_min': str(gop),
                          'sc_threshold': '0', 'bf': '0'}
      else:
        stream.options = {'g': str(gop), 'qscale': '3'}
        stream.codec_context.qscale = 3
      stream.codec_context.thread_count = 1
      for _ in range(num_frames):
        frame, mask = renderer.next_frame()
        masks.add(mask)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
    masks.close()
    os.replace(tmp_masks, paths.masks)
    os.replace(tmp_video, paths.video)
  finally:
    for tmp in (tmp_video, tmp_masks):
      if tmp.exists():
        tmp.unlink()
  return paths


def _scene_overrides(cfg: SceneConfig) -> dict[str, Any]:
  """The fields of `cfg` that differ from the defaults, except size, rate and lighting (JSON)."""
  default = SceneConfig(width=cfg.width, height=cfg.height, fps=cfg.fps, night=cfg.night)
  return {f.name: (list(v) if isinstance(v, tuple) else v) for f in dataclasses.fields(cfg)
          if (v := getattr(cfg, f.name)) != getattr(default, f.name)}


def write_videos(out_dir: str | os.PathLike, *, minutes: float, fps: float, width: int, height: int,
                 night: Sequence[bool] = (False,), seed: int = 0, cameras: int = 1,
                 scene: Mapping[str, Any] | None = None, **kwargs) -> list[WrittenVideo]:
  """`write_video` for every camera and lighting; also writes `manifest.json` describing the set.

  `scene`: further `SceneConfig` fields for every video (e.g. `HARD_CASES`); None: the defaults.
  """
  num_frames = max(1, int(round(minutes * 60 * fps)))
  scene = dict(scene or {})
  written = []
  for camera in range(cameras):
    for is_night in night:
      cfg = SceneConfig(width=width, height=height, fps=fps, night=is_night, **scene)
      written.append(write_video(out_dir, cfg, num_frames=num_frames, seed=seed, camera=camera,
                                 **kwargs))
  manifest = dict(seed=seed, fps=fps, width=width, height=height, num_frames=num_frames,
                  scene={k: list(v) if isinstance(v, tuple) else v for k, v in scene.items()},
                  videos=[dict(video=v.video.name, background=v.background.name, masks=v.masks.name,
                               camera=v.camera, night=v.night) for v in written])
  atomic_io.write_text_atomic(pathlib.Path(out_dir) / 'manifest.json', json.dumps(manifest, indent=2))
  return written


# The embedded default: small day + night videos of two cameras, generated on first use, with the
# hard cases on (stopped and parked vehicles, cloud shadows by day, camera jitter).
DEFAULT_SET = dict(minutes=1.0, fps=10.0, width=160, height=90, night=(False, True), seed=0,
                   cameras=2, scene=HARD_CASES)
# Bump when the rendering of an unchanged DEFAULT_SET changes, so stale caches are not reused.
RENDER_VERSION = 2


def default_video_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Folder of the embedded default videos (`DEFAULT_SET`), rendering them on first use (~seconds).

  Lives under `cache_dir`, else `$LOWLIGHT_JAX_CACHE`, else `~/.cache/lowlight_jax`, in a folder
  named after `RENDER_VERSION`, the main settings and a hash of all of `DEFAULT_SET` (its scene
  included).
  Rendered into a temporary folder and renamed, so concurrent first uses never see a partial set.
  """
  base = pathlib.Path(cache_dir or os.environ.get('LOWLIGHT_JAX_CACHE')
                      or pathlib.Path.home() / '.cache' / 'lowlight_jax')
  digest = hashlib.sha256(json.dumps(DEFAULT_SET, sort_keys=True, default=repr).encode())
  tag = (f'synthetic_video_v{RENDER_VERSION}_' +
         '_'.join(f'{k}{v}' for k, v in sorted(DEFAULT_SET.items()) if k not in ('night', 'scene'))
         .replace('.', 'p') + f'_{digest.hexdigest()[:10]}')
  target = base / tag
  if (target / 'manifest.json').is_file():
    return target
  base.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=base, prefix=f'.{tag}.'))
  log.info('rendering the default synthetic videos into %s', target)
  write_videos(tmp, **DEFAULT_SET)
  try:
    os.replace(tmp, target)
  except OSError:  # Another process finished first: keep theirs.
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def render_frames(cfg: SceneConfig, num_frames: int, seed: int = 0, camera: int = 0, *,
                  daylit: bool = False, video_frames: int | None = None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The (frame, mask) stream `write_video` encodes, without encoding (for tests and notebooks).

  `daylit` renders a night scene's day-lit reference (`SceneRenderer`); `video_frames` is the length of the video
  the frames belong to (the parked vehicles' schedule; default `num_frames`).
  """
  renderer = SceneRenderer(cfg, seed=seed, camera=camera, num_frames=video_frames or num_frames, daylit=daylit)
  for _ in range(num_frames):
    yield renderer.next_frame()


def generator_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
  """What `write_video` stored in an MP4's `comment` tag ({'seed', 'camera', 'night', 'scene'?} plus the stream's
  width, height, fps and num_frames), or None for a video this generator did not write."""
  try:
    with av.open(os.fspath(path)) as container:
      comment = container.metadata.get('comment')
      stream = container.streams.video[0]
      size = dict(width=stream.codec_context.width, height=stream.codec_context.height,
                  fps=float(stream.average_rate or stream.base_rate), num_frames=int(stream.frames))
  except (av.error.FFmpegError, IndexError, OSError):
    return None
  try:
    meta = json.loads(comment) if comment else None
  except json.JSONDecodeError:
    return None
  if not isinstance(meta, dict) or meta.get('generator') != 'lowlight-jax synthetic_video':
    return None
  return {**meta, **size}


def daylit_reference(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray | None:
  """Frames `indices` of a synthetic NIGHT video re-rendered under daylight (`SceneRenderer(daylit=True)`: the
  same vehicles, pedestrians and camera offsets, frame for frame, lit by day, clean): uint8 (N, H, W, 3), the
  reference a night-to-day enhancement of those frames is scored against. None for a day video or a video this
  generator did not write (no reference exists)."""
  meta = generator_metadata(path)
  if meta is None or not meta.get('night'):
    return None
  scene = {k: tuple(v) if isinstance(v, list) else v for k, v in (meta.get('scene') or {}).items()}
  cfg = SceneConfig(width=meta['width'], height=meta['height'], fps=meta['fps'], night=True, **scene)
  wanted = {int(i): None for i in indices}
  if not wanted:
    return np.zeros((0, cfg.height, cfg.width, 3), np.uint8)
  if min(wanted) < 0 or max(wanted) >= meta['num_frames']:
    raise IndexError(f'frames {sorted(wanted)} out of range [0, {meta["num_frames"]}) in {os.fspath(path)!r}')
  frames = render_frames(cfg, max(wanted) + 1, seed=meta['seed'], camera=meta['camera'], daylit=True,
                         video_frames=meta['num_frames'])
  for i, (frame, _) in enumerate(frames):
    if i in wanted:
      wanted[i] = frame
  return np.stack([wanted[int(i)] for i in indices])
