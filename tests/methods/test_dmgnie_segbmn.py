"""DMGNIE stage 1 (SegBMN) through launch.train's loop (`trainer.train_and_evaluate`) on its smoke config, 8 fake
devices: both Eq. 3 terms logged at every logged step, checkpoints, a resume from the step-2 checkpoint that ends
bitwise equal to the uninterrupted run; the three mask sources; per-video evaluation against the ground truth."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dmgnie
from lowlight_jax import errors
from lowlight_jax.methods import dmgnie_segbmn
from lowlight_jax.ops import background as background_ops
from lowlight_jax.train import trainer

TERMS = ("segbmn/loss", "segbmn/loss_background", "segbmn/loss_identity", "segbmn/background_fraction",
         "segbmn/grad_norm")


def _config():
  config = dmgnie.get_config("segbmn,smoke,steps=4")
  config.checkpoint_every = 2
  return config


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """The uninterrupted 4-step smoke run (checkpoints at steps 2 and 4)."""
  workdir = tmp_path_factory.mktemp("segbmn") / "full"
  trainer.train_and_evaluate(_config(), str(workdir))
  return workdir


def test_smoke_run_logs_both_terms_checkpoints_and_resumes_bitwise(smoke_run, tmp_path, run_checks):
  a, mid = run_checks.resume_from_checkpoint(_config, smoke_run, tmp_path)  # tests/methods/conftest.py
  assert set(a.params) == {"segbmn"}
  assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(mid.params), jax.tree.leaves(a.params)))
  fraction = run_checks.logged_terms(smoke_run, TERMS)["segbmn/background_fraction"]  # Logged at steps 2 and 4.
  assert all(0.2 < f < 1.0 for f in fraction), fraction  # Motion masks: most, not all, pixels are background.


def test_evaluation_scores_the_run_and_the_median_against_the_ground_truth(smoke_run):
  config = _config()
  setup = trainer.restore_for_inference(config, str(smoke_run))
  videos = dmgnie_segbmn.day_videos(config)
  assert len(videos) == 2 and all("T12" in v for v in videos)  # The two cameras' day videos, no night ones.
  result = dmgnie_segbmn.evaluate_videos(setup.method, setup.state.params, setup.frozen, videos, num_frames=6)
  assert len(result["videos"]) == 2
  for key in ("psnr", "ssim", "median_psnr", "median_ssim"):
    assert np.isfinite(result[key]), key
  assert result["median_psnr"] > 18.0  # The temporal median of 6 frames is a real background ...
  assert result["psnr"] < result["median_psnr"]  # ... that 4 smoke steps of SegBMN do not reach.
  # Inference: N frames are one clip; 'enhanced' repeats its background for every frame.
  out = jax.eval_shape(setup.method.enhance, setup.state.params, {}, setup.frozen, jnp.zeros((3, 20, 28, 3)))
  assert out["enhanced"].shape == (3, 20, 28, 3) and out["background"].shape == (1, 20, 28, 3)
  clips = jax.eval_shape(setup.method.enhance, setup.state.params, {}, setup.frozen, jnp.zeros((2, 3, 20, 28, 3)))
  assert clips["enhanced"].shape == (2, 20, 28, 3)


def test_motion_masks_in_the_step_match_the_numpy_reference():
  rng = np.random.default_rng(0)
  frames = rng.random((2, 5, 12, 17, 3)).astype(np.float32) * 0.2 + 0.4
  frames[0, 1, 3:6, 4:9] = 0.95  # An object in one frame of the first clip.
  for kwargs in (dict(), dict(dilate=0, statistic="mean", reduce="luma", threshold=0.05)):
    want = np.stack([background_ops.motion_masks(f, **kwargs) for f in frames])
    got = dmgnie_segbmn.motion_masks(jnp.asarray(frames), **{("dilate_radius" if k == "dilate" else k): v
                                                             for k, v in kwargs.items()})
    np.testing.assert_array_equal(np.asarray(got), want)
  assert want[0, 1, 4, 6, 0] == 0 and want[1].mean() > 0.5


class _StubSegmenter:
  """Stands in for the frozen DeepLabV3+ in value checks: class = 13 (car) where the red channel is bright, else 0
  (road)."""

  def apply(self, variables, x):
    del variables
    return {"logits": jnp.stack([1.0 - x[..., 0]] + [jnp.zeros_like(x[..., 0])] * 12 + [x[..., 0]], -1)}


def test_ground_truth_and_segmenter_mask_sources():
  config = dmgnie.get_config("smoke")
  config.masks.source = "ground_truth"
  with pytest.raises(errors.ConfigError, match="data.video.with_masks"):
    dmgnie_segbmn.Method(config)
  config.data.video.with_masks = True
  method = dmgnie_segbmn.Method(config)
  frames = jnp.full((1, 2, 16, 24, 3), 0.5)
  fg = np.zeros((1, 2, 16, 24), bool)
  fg[0, 1, 2:5, 3:7] = True  # The synthetic masks mark FOREGROUND; SegBMN's M is 1 = background.
  np.testing.assert_array_equal(np.asarray(method.masks({}, frames, jnp.asarray(fg))), (~fg)[..., None])

  config = dmgnie.get_config("smoke")
  config.masks.source = "segmenter"
  method = dmgnie_segbmn.Method(config)
  assert method.inference_towers == ("segmenter",) and method.weight_sources() == []  # Smoke: random allowed.
  # The real (tiny, random) DeepLabV3+ in the frozen tree, traced for shapes only.
  variables = jax.eval_shape(lambda r: dict(method.init(r, method.example_batch())), jax.random.PRNGKey(1))
  clips = np.full((1, 2, 64, 48, 3), 0.2, np.float32)
  masks = jax.eval_shape(method.masks, variables["frozen"], clips)
  assert masks.shape == (1, 2, 64, 48, 1) and masks.dtype == jnp.float32
  # The class mapping: a car (Cityscapes 13) is foreground (M = 0), dilated by segmenter.dilate.
  clips[0, 1, 10:20, 5:15, 0] = 0.9
  method.segmenter = _StubSegmenter()
  config.segmenter.dilate = 1
  want = np.ones((1, 2, 64, 48, 1), np.float32)
  want[0, 1, 9:21, 4:16] = 0
  np.testing.assert_array_equal(np.asarray(method.masks({"segmenter": {}}, jnp.asarray(clips))), want)
  config.segmenter.allow_random_weights = False  # A real run without the user's weights: one line naming the field.
  with pytest.raises(errors.ConfigError, match=r"^segmenter\.weights is not set") as raised:
    dmgnie_segbmn.Method(config).weight_sources()
  assert "\n" not in str(raised.value)


def test_config_stages():
  assert dmgnie.get_config().method == dmgnie.get_config("segbmn").method == "dmgnie_segbmn"
  assert dmgnie.get_config().masks.source == "segmenter"  # The paper's M = fseg(Y).
  assert dmgnie.get_config("enhance").method == "dmgnie"
