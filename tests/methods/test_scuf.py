"""SCUF training's cheap checks on the smoke config and a tiny EnlightenGAN-layout folder with caption CSVs: the
FSDP plan of the smoke's (data 2, fsdp 4) mesh on abstract shapes (towers, trained params and their optimizer
state sharded), prompt-file and caption input handling, the released skip-kernel switch, what the remat keeps, and
what makes gradient accumulation (`microbatches`) exact. The end-to-end smoke run (every term logged, resume,
export, enhance) is not here: on 2 CPU cores its 8-device step compiles in 10-16 min and runs ~3 min a step, beyond
the CI budget (issue 14's notes; the test is kept on the branch wip/scuf-e2e-2)."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scuf as scuf_config
from lowlight_jax.io import imageio
from lowlight_jax.methods import base
from lowlight_jax.methods import scuf as scuf_method
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import trainer

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
  # The generator's AdamW moments follow their params' FSDP split.
  assert sharded(abstract["state"].opt_state["generator"])


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


def _cycle_residual_bytes(config, capsys):
  """Bytes the cycle loss's gradient keeps for its backward pass (`jax.ad_checkpoint.print_saved_residuals`,
  traced on abstract shapes), and the parameters' own share of them."""
  import re  # pylint: disable=g-import-not-at-top
  from jax import ad_checkpoint  # pylint: disable=g-import-not-at-top
  method = base.load_method(config)
  mesh = sharding_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
  _, _, abstract, _, _ = trainer.abstract_setup(config, method, mesh)
  state, frozen = abstract["state"], abstract["frozen"]
  b, s = 2, config.data.crop
  batch = {k: jax.ShapeDtypeStruct((b,) + v.shape[1:], v.dtype) for k, v in method.example_batch().items()}
  batch.update({k: jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32) for k in ("low", "high")})
  capsys.readouterr()

  def outer(frozen, batch):  # Frozen towers and data as tracers; the residuals of the gradient w.r.t. the params.
    data = method._prepare(frozen, batch)  # pylint: disable=protected-access
    loss = lambda g: method._cycle_loss(g, frozen, state.model_state, data, 0, jax.random.key(0))[0]  # pylint: disable=protected-access
    ad_checkpoint.print_saved_residuals(loss, state.params["generator"])
    return 0

  jax.make_jaxpr(outer)(frozen, batch)
  sizes = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "i32": 4, "bool": 1, "pred": 1}
  total = 0
  for line in capsys.readouterr().out.splitlines():
    m = re.match(r"\s*(\w+)\[([\d,]*)\]", line)
    if m and "from the argument" not in line:
      total += sizes.get(m.group(1), 4) * int(np.prod([int(d) for d in m.group(2).split(",") if d]))
  return total


def test_remat_keeps_the_vae_internals_out_of_the_saved_residuals(setting, capsys):
  """remat='full' recomputes the VAE encoder and decoders whole (and the UNet / VAE blocks inside them) in the
  backward pass: the cycle loss keeps a small fraction of what it keeps without remat. Measured here (batch 2, the
  smoke family at 64x64): 601.7 MB without remat, 133.9 MB with the blocks alone rematerialised (0.22), 95.3 MB with
  the whole encoder / decoders too (0.16); at the real SD-Turbo sizes, batch 8 at 512x512, blocks alone 37.2 GB,
  whole encoder / decoders 5.6 GB."""
  plain = _config(*setting)
  plain.remat = "none"
  full = _config(*setting)
  full.remat = "full"
  without, with_remat = (_cycle_residual_bytes(c, capsys) for c in (plain, full))
  assert without > 0 and with_remat < 0.19 * without, (without, with_remat)


def test_every_generator_term_is_a_mean_over_examples():
  """What makes `microbatches` exact: each SCUF term is a mean over the batch's examples (equal-size images), so
  its mean over the strided slices is the batch's value. (The discriminator's spectral-norm state does not depend
  on the batch; LPIPS is a mean of per-image distances.)"""
  from lowlight_jax.losses import scuf as scuf_losses  # pylint: disable=g-import-not-at-top
  from lowlight_jax.models import vision_aided  # pylint: disable=g-import-not-at-top
  from lowlight_jax.train import microbatch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  u = lambda *shape: jnp.asarray(rng.uniform(0.05, 0.95, shape), jnp.float32)
  data = {"x": u(4, 3, 24, 24) * 2 - 1, "y": u(4, 3, 24, 24) * 2 - 1, "r": u(4, 24, 24, 3), "t": u(4, 24, 24, 3),
          "la": u(4, 4, 3, 3) - 0.5, "lb": u(4, 4, 3, 3) - 0.5, "l1": u(4, 5, 5, 1) * 4 - 2, "l2": u(4, 1) * 4 - 2}
  terms = {
      "l1": lambda d: scuf_losses.l1(d["x"], d["y"]),
      "reflectance": lambda d: scuf_losses.reflectance(d["r"], d["t"]),
      "cross_direction": lambda d: scuf_losses.cross_direction_reflectance(d["r"], d["t"]),
      "caption": lambda d: scuf_losses.caption_consistency(d["la"], d["lb"]),
      "gan": lambda d: jnp.mean(vision_aided.multilevel_sigmoid_loss([d["l1"], d["l2"]], True)),
  }
  slices = microbatch.split(data, 2)
  for name, fn in terms.items():
    halves = [fn(jax.tree.map(lambda t, j=j: t[j], slices)) for j in range(2)]
    np.testing.assert_allclose(np.mean(halves), fn(data), rtol=1e-5, err_msg=name)
    assert abs(float(halves[0]) - float(halves[1])) > 1e-4, name  # the halves differ: the check can fail


def test_microbatches_must_split_the_batch(setting):
  config = _config(*setting)
  config.microbatches = 3
  with pytest.raises(Exception, match="microbatches: 3 does not split batch_size 8"):
    base.load_method(config)
  config.microbatches = 2
  assert base.load_method(config).microbatches == 2
