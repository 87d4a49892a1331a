"""SCUF training (configs/scuf.py:smoke) through `launch.train` on a tiny EnlightenGAN-layout folder with caption
CSVs: every generator and discriminator term finite and logged, checkpoints, a bitwise resume from the step-2
checkpoint, the export in the authors' layout (read back by our loader: the same merged weights), and enhancing
with the run. The training runs on one CPU device (the step's compile on the smoke's 8-device FSDP mesh takes
several times longer than CI affords); the FSDP plan of that mesh is checked on abstract shapes. Plus the cheap
checks: prompt / caption input errors and the released skip-kernel switch."""

import csv
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from configs import scuf as scuf_config
from lowlight_jax.io import imageio
from lowlight_jax.methods import base
from lowlight_jax.methods import scuf as scuf_method
from lowlight_jax.train import checkpoint as ckpt_lib
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import trainer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATOR_TERMS = ["cycle_a", "cycle_b", "identity", "gan_a", "gan_b", "grad_norm"] + [
    f"{kind}_{k}" for kind in ("cycle_a", "cycle_b") for k in ("l1", "lpips", "reflectance", "caption")] + [
    f"idt_{k}" for k in ("l1", "lpips", "reflectance", "caption")]
DISCRIMINATOR_TERMS = ["disc_a", "disc_b", "fake", "real", "grad_norm"]


def _write_folder(root):
  """trainA (low) / trainB (normal) PNGs of different sizes and the two caption CSVs (GEFU's format)."""
  rng = np.random.default_rng(0)
  rows = {}
  for sub, (lo, hi), n in (("trainA", (0.0, 0.3), 3), ("trainB", (0.3, 1.0), 2)):
    (root / sub).mkdir(parents=True)
    rows[sub] = []
    for i in range(n):
      h, w = 64 + 8 * i, 72 + 4 * i
      imageio.write_png_atomic(root / sub / f"{sub}_{i}.png",
                               (rng.uniform(lo, hi, (h, w, 3)) * 255).astype(np.uint8))
      rows[sub].append((f"data/unpaired_data/{sub}/{sub}_{i}.png", f"there is a {'dark' if lo == 0 else 'bright'} "
                                                                    f"room, number {i}"))
  for sub, name in (("trainA", "enlight_low.csv"), ("trainB", "enlight_high.csv")):
    with open(root / name, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f, delimiter="\t")
      writer.writerow(["filepath", "title"])
      writer.writerows(rows[sub])
  return root


def _config(root, cache):
  c = scuf_config.get_config("smoke,steps=4")
  c.weights_cache = str(cache)
  c.checkpoint_every = 2
  c.eval.every = 0
  c.data.source = "unpaired_captions"
  c.data.root = str(root)
  c.data.resize = 0
  c.data.crop = 64
  c.data.captions_low = str(root / "enlight_low.csv")
  c.data.captions_high = str(root / "enlight_high.csv")
  c.data.tokenizer = scuf_method.sd_turbo_folder(c) + "/tokenizer"
  return c


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
  base_dir = tmp_path_factory.mktemp("scuf")
  root = _write_folder(base_dir / "unpaired_data")
  return root, base_dir / "cache"


def test_fsdp_rules_shard_towers_and_trained_params(setting):
  config = _config(*setting)
  method = base.load_method(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  _, _, abstract, _, _ = trainer.abstract_setup(config, method, mesh)
  def sharded(tree):
    return [s for s in jax.tree.leaves(jax.tree.map(lambda a: a.sharding.spec, tree)) if "fsdp" in tuple(s)]
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  for tower in ("unet", "vae", "text_encoder", "clip", "lpips"):
    assert sharded(abstract["frozen"][tower]), tower
  assert sharded(abstract["state"].params["generator"])  # e.g. the ProjModel kernel
  # The optimizer state of the generator is one flat vector per moment, split over fsdp too.
  assert sharded(abstract["state"].opt_state["generator"])


def _train_cli(config, workdir, timeout=1500):
  """launch.train on ONE CPU device (the CI budget: XLA's compile of this step on an 8-device mesh takes ~4x the
  1-device compile; the 8-device smoke is the `configs/scuf.py:smoke` default, run by hand, see the config), with
  LLVM optimisation off (it halves nothing that matters for 4 steps of a tiny model)."""
  import os
  import subprocess
  import sys
  overrides = [f"--config.{k}={v}" for k, v in (
      ("weights_cache", config.weights_cache), ("checkpoint_every", 2), ("eval.every", 0),
      ("mesh.data", 1), ("mesh.fsdp", 1), ("batch_size", 2), ("data.source", "unpaired_captions"),
      ("data.root", config.data.root), ("data.resize", 0), ("data.crop", 64),
      ("data.captions_low", config.data.captions_low), ("data.captions_high", config.data.captions_high),
      ("data.tokenizer", config.data.tokenizer), ("progress_bar", False))]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
  proc = subprocess.run([sys.executable, "-m", "launch.train", "--config", "configs/scuf.py:smoke,steps=4",
                         "--workdir", str(workdir), *overrides], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _one_device(config):
  config.mesh = {"data": 1, "fsdp": 1}
  config.batch_size = 2
  config.checkpoint_every = 2
  config.eval.every = 0
  return config


def test_smoke_trains_logs_every_term_resumes_bitwise_exports_and_enhances(setting, tmp_path):
  config = _one_device(_config(*setting))
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  _train_cli(config, full)
  checkpointer = ckpt_lib.Checkpointer(str(full))
  assert checkpointer.all_steps() == [2, 4]
  checkpointer.close()
  assert sorted(p.name for p in (full / "export").iterdir()) == ["model_2.pkl", "model_4.pkl"]

  events = event_accumulator.EventAccumulator(str(full))
  events.Reload()
  for term in [f"generator/{t}" for t in GENERATOR_TERMS] + [f"discriminator/{t}" for t in DISCRIMINATOR_TERMS]:
    values = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(f"train/{term}")]
    assert len(values) == 2 and all(np.isfinite(values)), term

  # The same run interrupted after its step-2 checkpoint, then resumed: bitwise the uninterrupted run.
  shutil.copytree(full, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  shutil.rmtree(resumed / "export")
  _train_cli(config, resumed)
  a, b = (jax.device_get(trainer.restore_train_state(config, str(d))) for d in (full, resumed))
  mid = jax.device_get(trainer.restore_train_state(config, str(full), 2))
  assert int(a.step) == int(b.step) == 4
  for group in ("generator", "discriminator"):
    assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(mid.params[group]), jax.tree.leaves(a.params[group])))
  for x, y in zip(jax.tree.leaves((a.params, a.opt_state, a.model_state)),
                  jax.tree.leaves((b.params, b.opt_state, b.model_state))):
    np.testing.assert_array_equal(x, y)

  # The export is the authors' layout of these weights: our reader of their checkpoints merges the same VAE.
  from lowlight_jax.convert import scuf as convert_scuf
  from lowlight_jax.convert import sd_turbo
  method = base.load_method(config)
  _, params = convert_scuf.load_scuf(full / "export" / "model_4.pkl", method.folder)
  frozen_vae = {"vae": jax.tree.map(jnp.asarray, sd_turbo.load_vae(method.folder).params)}
  merged = method._merge_vae(frozen_vae, a.params["generator"]["lora_a2b"])
  for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params["vae_a2b"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
  kernels = method._skip_kernels(a.params["generator"]["skip_b2a"])
  for k, name in zip(kernels, sorted(params["skip_convs_b2a"])):
    np.testing.assert_allclose(np.asarray(k), params["skip_convs_b2a"][name]["kernel"][0, 0], atol=1e-6)

  # Enhancing with the run: any size (not a multiple of 8), [0, 1], finite.
  setup = trainer.restore_for_inference(config, str(full))
  image = jnp.asarray(np.random.default_rng(3).uniform(0, 0.3, (1, 44, 52, 3)), jnp.float32)
  out = jax.jit(setup.method.enhance)(setup.state.params, setup.state.model_state, setup.frozen, image)["enhanced"]
  assert out.shape == image.shape and bool(jnp.all(jnp.isfinite(out)))
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_prompt_files_and_missing_captions(setting, tmp_path, caplog):
  root, cache = setting
  config = _config(root, cache)
  config.prompts.low_file = str(tmp_path / "fixed_prompt_a.txt")
  with pytest.raises(FileNotFoundError, match="fixed_prompt_a.txt"):
    base.load_method(config)
  (tmp_path / "fixed_prompt_a.txt").write_text("   \n")
  with pytest.raises(Exception, match="fixed_prompt_a.txt"):
    base.load_method(config)
  (tmp_path / "fixed_prompt_a.txt").write_text("a very dark photo\n")
  method = base.load_method(config)
  assert method.use_captions
  assert not np.array_equal(method.prompt_ids["b2a"], base.load_method(_config(root, cache)).prompt_ids["b2a"])
  config = _config(root, cache)
  config.data.captions_low = None
  config.data.captions_high = None
  with caplog.at_level("WARNING"):
    method = base.load_method(config)
  assert not method.use_captions and "caption-consistency term is off" in caplog.text


def test_released_reflectance_skip_kernels_switch(setting):
  config = _config(*setting)
  example = {"low": jnp.zeros((1, 64, 64, 3)), "high": jnp.zeros((1, 64, 64, 3))}
  shapes = lambda c: jax.eval_shape(lambda r: dict(base.load_method(c).init(r, example)), jax.random.key(0))
  fixed = shapes(config)
  assert all("kernel" in v for v in fixed["params"]["generator"]["skip_ref"].values())
  assert "skip_ref_kernels" not in fixed["model_state"]
  config.loss.released_ref_skip_frozen = True
  released = shapes(config)
  assert all("kernel" not in v for v in released["params"]["generator"]["skip_ref"].values())
  assert set(released["model_state"]["skip_ref_kernels"]) == set(fixed["params"]["generator"]["skip_ref"])
