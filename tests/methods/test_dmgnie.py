"""DMGNIE stage 2 through launch.train's loop (`trainer.train_and_evaluate`) on its smoke config, 8 fake devices:
every Eq. 10 term and both discriminator terms logged at every logged step, checkpoints, a resume from the step-2
checkpoint that ends bitwise equal to the uninterrupted run, every trained part changing; inference with a camera's
background; the background store's one-line errors; the day/night source; the paired crop."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dmgnie as dmgnie_config
from data_pipelines import pipeline
from lowlight_jax import errors
from lowlight_jax.io import backgrounds
from lowlight_jax.methods import dmgnie
from lowlight_jax.train import trainer

TERMS = ("generator/loss", "generator/loss_gan_g", "generator/loss_gan_f", "generator/loss_cycle",
         "generator/loss_cycle_x", "generator/loss_cycle_y", "generator/loss_fgmap", "generator/fgmap_kl",
         "generator/fgmap_entropy_proj", "generator/fgmap_entropy_self_y", "generator/fgmap_entropy_self_bg",
         "generator/fgmap_tv", "generator/loss_nce", *(f"generator/loss_nce_l{i}" for i in range(5)),
         "generator/grad_norm", "discriminator/loss", "discriminator/loss_d_g", "discriminator/loss_d_f",
         "discriminator/grad_norm")


def _config(arg="enhance,smoke,steps=4"):
  config = dmgnie_config.get_config(arg)
  config.checkpoint_every = 2
  config.progress_bar = False
  return config


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """The uninterrupted 4-step smoke run (checkpoints at steps 2 and 4)."""
  workdir = tmp_path_factory.mktemp("dmgnie") / "full"
  trainer.train_and_evaluate(_config(), str(workdir))
  return workdir


def test_smoke_run_logs_every_term_checkpoints_and_resumes_bitwise(smoke_run, tmp_path, run_checks):
  a, mid = run_checks.resume_from_checkpoint(_config, smoke_run, tmp_path)  # tests/methods/conftest.py
  assert set(a.params) == {"generator", "discriminator"}
  # Every trained part moved between the checkpoints: G and F (GAN, cycle, NCE), the projectors f / f_BG (Eq. 4),
  # the PatchNCE MLPs (Eqs. 5-8), both discriminators.
  parts = [("generator", k) for k in ("G", "F", "localizer", "projector")] + [("discriminator", "D_G"),
                                                                            ("discriminator", "D_F")]
  for group, part in parts:
    assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(mid.params[group][part]),
                                              jax.tree.leaves(a.params[group][part]))), (group, part)
  values = run_checks.logged_terms(smoke_run, TERMS)  # Logged at steps 2 and 4.
  first = lambda term: values[term][0]
  # Near-chance discriminators at the start (log-GAN: ln 2 ~ 0.69 per D); the InfoNCE of unit vectors lies in
  # (0, ln(1 + N e^(2 / tau))) (N = 16 negatives, tau = 0.07).
  assert 0.3 < first("discriminator/loss_d_g") < 1.2 and 0.3 < first("discriminator/loss_d_f") < 1.2
  assert 0.0 < first("generator/loss_nce") < np.log1p(16 * np.exp(2 / 0.07))


def test_inference_uses_the_cameras_background(smoke_run):
  config = _config()
  config.inference.camera = "cam00"  # Inference mode: that camera's background only (the median fallback here).
  setup = trainer.restore_for_inference(config, str(smoke_run))
  assert set(setup.frozen) == {"backgrounds"} and setup.frozen["backgrounds"]["images"].shape == (1, 48, 64, 3)
  enhance = trainer.make_enhance_fn(setup)(setup.state, setup.frozen)
  night = np.random.default_rng(0).random((2, 48, 64, 3)).astype(np.float32) * 0.2
  out = np.asarray(enhance(night)["enhanced"])
  assert out.shape == night.shape and np.all((out >= 0) & (out <= 1))
  method = setup.method
  with pytest.raises(errors.InputError, match=r"camera 'cam00': its background is 48x64 \(HxW\) but the image is "
                                              r"46x62; .*inference\.resize_background=True"):
    jax.eval_shape(method.enhance, setup.state.params, {}, setup.frozen, jnp.zeros((1, 46, 62, 3)))
  config.inference.resize_background = True  # Resized to the image; odd sizes are padded to multiples of 4.
  got = jax.eval_shape(method.enhance, setup.state.params, {}, setup.frozen, jnp.zeros((1, 46, 62, 3)))
  assert got["enhanced"].shape == (1, 46, 62, 3)
  with pytest.raises(errors.ConfigError, match=r"set inference\.camera to one of cam00, cam01"):
    jax.eval_shape(dmgnie.Method(_config()).enhance, setup.state.params, {}, setup.frozen, jnp.zeros((1, 48, 64, 3)))


def test_gradients_reach_only_the_parts_each_term_trains():
  """Eq. 4 trains f / f_BG only (Y' detached); the InfoNCE trains G's encoder and the PatchNCE MLPs, never f / f_BG
  (D_X is stop-gradient)."""
  method = dmgnie.Method(_config())
  variables = method.init(jax.random.key(0), method.example_batch())
  gp, dp, frozen = variables["params"]["generator"], variables["params"]["discriminator"], variables["frozen"]
  rng = np.random.default_rng(0)
  x, bg, y = (jnp.asarray(rng.random((2, 32, 32, 3)), jnp.float32) for _ in range(3))

  loss = method._generator_loss  # pylint: disable=protected-access

  @jax.jit
  def grads(p):
    term = lambda name: jax.grad(lambda q: loss(q, dp, frozen, x, bg, y, bg, jax.random.key(1))[1][0][name])(p)
    return term("loss_fgmap"), term("loss_nce")

  norms = lambda tree: {k: float(sum(jnp.sum(jnp.abs(v)) for v in jax.tree.leaves(tree[k]))) for k in tree}
  fgmap, nce = (norms(g) for g in grads(gp))
  assert fgmap["localizer"] > 0 and fgmap["G"] == fgmap["F"] == fgmap["projector"] == 0, fgmap
  assert nce["G"] > 0 and nce["projector"] > 0 and nce["F"] == nce["localizer"] == 0, nce


def test_ablation_sweep_variants_build_what_they_ablate():
  """configs/sweeps/dmgnie_ablation.py on the smoke config: every field exists, and each variant's networks and
  Eq. 10 terms are the ablated ones (traced, not compiled)."""
  from launch import _config as launch_config  # Not launch.sweep: its absl flags would clash in this process.
  variants = launch_config.load_sweep("dmgnie_ablation", flag="--sweep")
  assert len(variants) == 8 and variants[0] == {}
  base_config = launch_config.load_config("configs/dmgnie.py:enhance,smoke", flag="--config")
  assert not [f for v in variants for f in v if launch_config.field_problem(base_config, f)]
  d_proj = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 6)), jnp.float32)
  for overrides in variants:
    config = _config()
    for field, value in overrides.items():
      group, name = field.split(".")
      config[group][name] = value
    method = dmgnie.Method(config)
    params = jax.eval_shape(lambda k, m=method: m.init(k, m.example_batch())["params"], jax.random.key(0))
    frozen = jax.eval_shape(lambda k, m=method: m.init(k, m.example_batch())["frozen"], jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    _, (metrics, _) = jax.eval_shape(
        lambda p, f, x, m=method: m._generator_loss(p["generator"], p["discriminator"], f, x, x, x, x,  # pylint: disable=protected-access
                                                    jax.random.key(1)), params, frozen, x)
    scales = overrides.get("flgcl.num_scales", 5)
    g_in = params["generator"]["G"]["model"]["1"]["kernel"].shape[2]
    assert g_in == (3 if overrides.get("model.background_prior") is False else 6), (overrides, g_in)
    assert len(params["generator"]["projector"]) == scales
    assert sorted(k for k in metrics if k.startswith("loss_nce_l")) == [f"loss_nce_l{i}" for i in range(scales)]
    anchors = np.asarray(method.anchor_distribution(d_proj))
    np.testing.assert_allclose(anchors.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert np.ptp(anchors) == 0 if overrides.get("flgcl.anchors") == "uniform" else np.ptp(anchors) > 0.01
  config = _config()
  config.flgcl.num_scales = 6
  with pytest.raises(errors.ConfigError, match=r"^flgcl\.num_scales=6"):
    dmgnie.Method(config)


def _store_source(config):
  method = dmgnie.Method(config)
  (source,) = [s for s in method.weight_sources() if s.target == ("frozen", "backgrounds")]
  return method, source


def test_backgrounds_come_from_the_store_in_camera_order(tmp_path):
  config = _config()
  config.backgrounds.store = str(tmp_path / "store")
  config.backgrounds.fallback = "none"
  rng = np.random.default_rng(1)
  images = {cam: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for cam in ("cam01", "cam00")}
  for cam, image in images.items():
    backgrounds.save(config.backgrounds.store, cam, image)
  method, source = _store_source(config)
  assert method.cameras == ("cam00", "cam01")  # The video index's sorted camera names = the batches' camera ids.
  got = source.convert(None)["images"]
  np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8), np.stack([images["cam00"], images["cam01"]]))
  # Inference on a camera the run never saw (the paper tests on other intersections): at its stored size.
  backgrounds.save(config.backgrounds.store, "cam07", np.zeros((40, 52, 3), np.uint8))
  config.inference.camera = "cam07"
  method, source = _store_source(config)
  assert method.background_shape() == (1, 40, 52, 3) and source.convert(None)["images"].shape == (1, 40, 52, 3)
  assert all(s.target != ("frozen", "vgg") for s in method.weight_sources())  # Inference reads no VGG.


def test_missing_camera_background_is_one_line_naming_camera_and_store(tmp_path):
  config = _config()
  store = tmp_path / "store"
  config.backgrounds.store = str(store)
  backgrounds.save(store, "cam00", np.zeros((48, 64, 3), np.uint8))
  _, source = _store_source(config)
  with pytest.raises(backgrounds.BackgroundStoreError,
                     match=rf"^no background for camera 'cam01' in store {store} \(it has cam00\)") as raised:
    source.convert(None)
  assert "\n" not in str(raised.value)


def test_wrong_size_background_is_one_line_naming_file_and_sizes(tmp_path):
  config = _config()
  store = tmp_path / "store"
  config.backgrounds.store = str(store)
  for cam in ("cam00", "cam01"):
    backgrounds.save(store, cam, np.zeros((40, 40, 3), np.uint8))
  _, source = _store_source(config)
  with pytest.raises(backgrounds.BackgroundStoreError,
                     match=rf"^background {store}/cam00\.png is 40x40 \(HxW\) but 48x64 is needed") as raised:
    source.convert(None)
  assert "\n" not in str(raised.value)


def test_config_errors_name_the_field(tmp_path, monkeypatch):
  config = _config()
  config.backgrounds.fallback = "none"  # No store and no fallback: a real run refuses to start.
  _, source = _store_source(config)
  with pytest.raises(errors.ConfigError, match=r"^backgrounds\.store is not set") as raised:
    source.convert(None)
  assert "\n" not in str(raised.value)
  # No VGG-16 weights anywhere and random weights not allowed.
  monkeypatch.setenv("LOWLIGHT_ASSETS", str(tmp_path / "empty_assets"))
  config = _config()
  config.localizer.allow_random_weights = False
  with pytest.raises(errors.ConfigError, match=r"^localizer\.weights is not set .*launch\.assets fetch") as raised:
    dmgnie.Method(config).weight_sources()
  assert "\n" not in str(raised.value)
  config.localizer.allow_random_weights = True  # Smoke: the tower stays random.
  assert [s.target for s in dmgnie.Method(config).weight_sources()] == [("frozen", "backgrounds")]
  config = _config()
  config.data.video.height = 0
  with pytest.raises(errors.ConfigError, match=r"^data\.video\.height/width are 0"):
    dmgnie.Method(config).background_shape()


def test_day_night_source_zips_night_and_day_frames_and_restores():
  config = _config()
  loader = pipeline.make_train_loader(config.data, batch_size=4, seed=0, shard_index=0, shard_count=1)
  it = iter(loader)
  batch = next(it)
  assert set(batch) == {"low", "low_camera", "high", "high_camera"}
  assert batch["low"].shape == batch["high"].shape == (4, 48, 64, 3) and batch["low_camera"].dtype == np.int32
  assert batch["low"].mean() < 0.5 * batch["high"].mean()  # Night frames are dark, day frames are not.
  state = it.get_state()
  want = next(it)
  it.set_state(state)
  got = next(it)
  for key in want:
    np.testing.assert_array_equal(want[key], got[key])


def test_crop_and_flip_keep_frame_and_background_aligned():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((6, 12, 16, 3)), jnp.float32)
  bgs = images + 10.0  # Any misalignment would break the constant difference.
  x, bg = dmgnie.crop_and_flip(jax.random.key(3), images, bgs, (8, 8), True)
  assert x.shape == bg.shape == (6, 8, 8, 3)
  np.testing.assert_allclose(np.asarray(bg - x), 10.0, atol=1e-5)
  # Windows and flips vary over the batch, and every window is a crop of its own image.
  crops = {np.asarray(x[i]).tobytes() for i in range(6)}
  assert len(crops) > 1
  for i in range(6):
    src = np.asarray(images[i])
    found = any(np.array_equal(np.asarray(x[i]), w) for oy in range(5) for ox in range(9)
                for w in (src[oy:oy + 8, ox:ox + 8], src[oy:oy + 8, ox:ox + 8][:, ::-1]))
    assert found, i


def test_config_stages():
  assert dmgnie_config.get_config("enhance").method == "dmgnie"
  assert dmgnie_config.get_config().method == "dmgnie_segbmn"  # Stage 1 stays the default.
  c = dmgnie_config.get_config("enhance")
  assert (c.loss.cycle, c.loss.fgmap, c.loss.nce, c.loss.gan_mode) == (10.0, 1.0, 1.0, "log")
  assert (c.optim.generator.lr, c.optim.generator.b1, c.optim.generator.b2) == (2e-4, 0.5, 0.999)
  assert c.backgrounds.fallback == "none" and c.augment.crop == 256
  with pytest.raises(ValueError, match="one stage"):
    dmgnie_config.get_config("segbmn,enhance")


def test_launch_enhance_finds_each_inputs_camera_background(smoke_run, tmp_path, run_module):
  """`launch.enhance --workdir` on night frames named by the video convention: each input is enhanced with its own
  camera's background (one restored enhancer per camera); `--camera` forces one camera for every input."""
  from lowlight_jax.io import imageio  # pylint: disable=g-import-not-at-top
  inputs = tmp_path / "night"
  inputs.mkdir()
  rng = np.random.default_rng(0)
  for name in ("cam00_20240601T220000.png", "cam01_20240601T220100.png"):
    imageio.write_png_atomic(inputs / name, (rng.random((48, 64, 3)) * 50).astype(np.uint8))
  own, forced = tmp_path / "own", tmp_path / "forced"
  result = run_module(["launch.enhance", "--workdir", str(smoke_run), "--input", str(inputs), "--output", str(own),
                       "--noprogress"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "camera cam00: 1 input(s)" in result.stdout and "camera cam01: 1 input(s)" in result.stdout
  assert "wrote 2 image(s)" in result.stdout
  result = run_module(["launch.enhance", "--workdir", str(smoke_run), "--input", str(inputs), "--output", str(forced),
                       "--camera", "cam00", "--noprogress"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "camera cam00: 2 input(s)" in result.stdout
  name = "cam00_20240601T220000.png"
  np.testing.assert_array_equal(imageio.read_image(own / name), imageio.read_image(forced / name))
  other = "cam01_20240601T220100.png"  # The same night frame with the other camera's background differs.
  assert not np.array_equal(imageio.read_image(own / other), imageio.read_image(forced / other))


def test_launch_evaluate_scores_night_frames_against_their_daylit_references(smoke_run, tmp_path, run_module):
  """`launch.evaluate --data night_videos`: frames of every night video, each enhanced with its camera's background,
  scored against the day-lit re-rendering of the same frame; day frames of the same cameras kept for FID."""
  import json  # pylint: disable=g-import-not-at-top
  from data_pipelines import synthetic_video  # pylint: disable=g-import-not-at-top
  from lowlight_jax.io import imageio  # pylint: disable=g-import-not-at-top
  out, keep = tmp_path / "report.json", tmp_path / "images"
  result = run_module(["launch.evaluate", "--workdir", str(smoke_run), "--data", "night_videos", "--frames", "2",
                       "--metrics", "psnr,ssim", "--out", str(out), "--out_dir", str(keep), "--noprogress"],
                      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  names = sorted(report["images"])
  assert len(names) == 4 and {n[:5] for n in names} == {"cam00", "cam01"}, names  # 2 cameras x 2 frames.
  assert all(report["images"][n]["psnr"] is not None for n in names) and report["count"]["psnr"] == 4
  assert len(os.listdir(keep / "day")) == 4
  # The reference of cam00's first frame is the day-lit re-rendering of that frame at the run's frame size.
  name = names[0]
  stem, index = name.rsplit("_f", 1)
  video = synthetic_video.default_video_dir() / f"{stem}.mp4"
  want = dmgnie._resize_area(synthetic_video.daylit_reference(video, [int(index)])[0], (48, 64))  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.round(imageio.read_image(keep / "reference" / f"{name}.png") * 255), want)
  night = imageio.read_image(keep / "input" / f"{name}.png")
  assert night.shape == (48, 64, 3) and night.mean() < 0.5 * want.mean() / 255
  # A run of another method is refused by name (before any checkpoint is read).
  other = tmp_path / "segbmn_run"
  other.mkdir()
  (other / "config.json").write_text(dmgnie_config.get_config("segbmn,smoke").to_json())
  result = run_module(["launch.evaluate", "--workdir", str(other), "--data", "night_videos", "--out",
                       str(tmp_path / "r.json")], timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert f"{other} is a dmgnie_segbmn run" in result.stderr.strip().splitlines()[-1]
