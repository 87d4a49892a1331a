"""SCUF training on the smoke config and a tiny EnlightenGAN-layout folder with caption CSVs: the FSDP plan of the
smoke's (data 2, fsdp 4) mesh on abstract shapes (towers, trained params and their optimizer state sharded),
prompt-file and caption input handling, the released skip-kernel switch, what the remat keeps, what makes gradient
accumulation (`microbatches`) exact, and the end-to-end smoke run on the 8 fake devices (every term logged, bitwise
resume, export, enhance)."""

import csv
import re
import shutil

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


def _forward_conv_batches(hlo_text):
  """{tower: the largest batch of its forward NHWC convolutions} in a compiled (per-device) program."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.search(r"= [a-z0-9]+\[(\d+),[\d,]+\][^ ]* convolution\(.*dim_labels=b01f_01io->b01f.*op_name=\"([^\"]*)\"",
                  line)
    if m and "transpose(" not in m.group(2):
      for tower in ("RetinexNet", "LPIPS", "VisionTransformer"):
        if f"/{tower}/" in m.group(2):
          out[tower] = max(out.get(tower, 0), int(m.group(1)))
  return out


def test_frozen_towers_and_lpips_keep_the_batch_split_over_the_mesh(setting):
  """The smoke's batch of 8 on the (data 2, fsdp 4) mesh: the compiled per-device program runs DecomNet on the
  prepared (low, normal) pairs and LPIPS on its (x, y) pairs with 2 images per device, and CLIP on 4 prompt
  images per device (4 per example). XLA's partitioner had replicated them after a (2, B) -> (2B) merge: DecomNet
  saw 16 images and CLIP 32 on every device, 8x the work and memory."""
  config = _config(*setting)
  method = base.load_method(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  _, _, abstract, _, _ = trainer.abstract_setup(config, method, mesh)
  batch = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:], v.dtype,
                                   sharding=sharding_lib.batch_sharding(mesh))
           for k, v in method.example_batch().items()}
  assert config.batch_size == mesh.devices.size == 8

  def prepare_and_lpips(frozen, batch):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # as trainer.make_train_step traces
      data = method._prepare(frozen, batch)  # pylint: disable=protected-access
      return data, method._lpips(frozen, data["x"][0], data["x"][1])  # pylint: disable=protected-access

  text = jax.jit(prepare_and_lpips).lower(abstract["frozen"], batch).compile().as_text()
  assert _forward_conv_batches(text) == {"RetinexNet": 2, "LPIPS": 2, "VisionTransformer": 4}


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


def _abstract_cycle_loss(config, size):
  """`(prepare, loss, params, frozen, batch)`: `prepare(frozen, batch)` -> data and `loss(params, frozen, data)`,
  the cycle loss, with abstract generator params, frozen towers and batch (`trainer.abstract_setup` on one device;
  batch 2 at `size`)."""
  method = base.load_method(config)
  mesh = sharding_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
  _, _, abstract, _, _ = trainer.abstract_setup(config, method, mesh)
  state, frozen = abstract["state"], abstract["frozen"]
  batch = {k: jax.ShapeDtypeStruct((2,) + v.shape[1:], v.dtype) for k, v in method.example_batch().items()}
  batch.update({k: jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32) for k in ("low", "high")})

  prepare = method._prepare  # pylint: disable=protected-access
  loss = lambda params, frozen, data: method._cycle_loss(params, frozen, state.model_state, data, 0,  # pylint: disable=protected-access
                                                         jax.random.key(0))[0]
  return prepare, loss, state.params["generator"], frozen, batch


def _cycle_residual_bytes(config, capsys):
  """Bytes the cycle loss's gradient keeps for its backward pass (`jax.ad_checkpoint.print_saved_residuals`,
  traced on abstract shapes), and the parameters' own share of them."""
  import re  # pylint: disable=g-import-not-at-top
  from jax import ad_checkpoint  # pylint: disable=g-import-not-at-top
  prepare, loss, params, frozen, batch = _abstract_cycle_loss(config, config.data.crop)
  capsys.readouterr()

  def outer(frozen, batch):  # Frozen towers and data as tracers; the residuals of the gradient w.r.t. the params.
    data = prepare(frozen, batch)
    ad_checkpoint.print_saved_residuals(lambda p: loss(p, frozen, data), params)
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


def test_sequential_decoders_switch_pairs_the_two_decoders(setting):
  """`model.sequential_decoders` (with remat and the reflectance term): the output and reflectance decoders run as
  one `policy.sequential_pair` (its values and gradients: tests/models/test_policy.py); False or remat 'none': two
  separate calls."""
  def cycle_loss_jaxpr(**changes):
    config = _config(*setting)
    config.remat = changes.pop("remat", "full")
    config.model.update(changes)
    prepare, loss, params, frozen, batch = _abstract_cycle_loss(config, 32)
    return str(jax.make_jaxpr(lambda p, f, b: loss(p, f, prepare(f, b)))(params, frozen, batch))

  assert "name=pair" in cycle_loss_jaxpr()
  assert "name=pair" not in cycle_loss_jaxpr(sequential_decoders=False)
  assert "name=pair" not in cycle_loss_jaxpr(remat="none")


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


#: Every term the SCUF step logs (`train/<term>` in TensorBoard): the released order's four generator updates and
#: two discriminator updates, with the caption CSVs (so the caption term is on).
TERMS = tuple(f"generator/cycle_{s}_{t}" for s in "ab" for t in ("l1", "lpips", "reflectance", "caption")) + (
    "generator/cycle_a", "generator/cycle_b", "generator/gan_a", "generator/gan_b",
    "generator/idt_l1", "generator/idt_lpips", "generator/idt_reflectance", "generator/idt_caption",
    "generator/identity", "generator/grad_norm", "discriminator/disc_a", "discriminator/disc_b",
    "discriminator/fake", "discriminator/real", "discriminator/grad_norm")


def test_smoke_run_on_8_devices_logs_resumes_bitwise_exports_and_enhances(setting, tmp_path, run_checks,
                                                                          run_module):
  """configs/scuf.py:smoke with the caption CSVs, through launch.train's loop on its (data 2, fsdp 4) mesh of the 8
  fake devices with the FSDP rules active: two steps, a checkpoint and an export in the authors' layout after each.
  Every generator and discriminator term is logged and finite at both steps; a resume from the step-1 checkpoint
  ends bitwise equal and writes the same export bytes; the export reads back to the trained generator; and
  `launch.enhance --workdir` enhances with the run on one device (a run of a pod's mesh on a workstation)."""
  from lowlight_jax.convert import scuf_export  # pylint: disable=g-import-not-at-top
  root, cache = setting

  def make_config():
    c = _config(root, cache)
    c.total_steps, c.checkpoint_every, c.log_every = 2, 1, 1
    return c

  full = tmp_path / "full"
  trainer.train_and_evaluate(make_config(), str(full))
  a, mid = run_checks.resume_from_checkpoint(make_config, full, tmp_path, at=1, last=2)
  run_checks.logged_terms(full, TERMS, count=2)
  assert dict(sharding_lib.make_mesh(make_config().mesh).shape) == {"data": 2, "fsdp": 4}
  for group in ("generator", "discriminator"):  # both trained between the checkpoints
    assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(mid.params[group]), jax.tree.leaves(a.params[group])))
  counts = lambda tree: {int(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0] if "count" in str(k[-1])}
  # The released order: four generator updates (cycle a, cycle b, GAN, identity) and two discriminator updates a step.
  assert counts(a.opt_state["generator"]) == {8} and counts(a.opt_state["discriminator"]) == {4}

  export = full / "export" / "model_2.pkl"
  assert export.read_bytes() == (tmp_path / "resumed" / "export" / "model_2.pkl").read_bytes()
  method = base.load_method(make_config())
  back = scuf_export.trainable_from_checkpoint(
      str(export), vae_params=method.vae_spec.target, unet_config=method.unet_spec.config,
      unet_params=method.unet_spec.target, lora_alpha=float(make_config().model.lora_alpha))
  trained = dict(jax.tree_util.tree_flatten_with_path(a.params["generator"])[0])
  read = dict(jax.tree_util.tree_flatten_with_path(back)[0])
  assert read and set(read) <= set(trained), set(read) - set(trained)
  for path, value in read.items():
    np.testing.assert_allclose(np.asarray(value), trained[path], rtol=1e-6, atol=1e-7, err_msg=str(path))

  # One image (72x76: not a multiple of the VAE's factor 8 in width) compiles the enhancer once; the released-weights
  # CLI test (tests/launch/test_enhance_scuf.py) covers a folder of several sizes.
  single = tmp_path / "single"
  single.mkdir()
  shutil.copy(root / "trainA" / "trainA_1.png", single)
  out = tmp_path / "enhanced"
  result = run_module(["launch.enhance", "--workdir", str(full), "--input", str(single), "--output", str(out),
                       "--noprogress"], timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in out.iterdir()) == ["trainA_1.png"]
  image = imageio.read_image(out / "trainA_1.png")
  assert image.shape[:2] == (72, 76) and 0 < image.std()


def test_loop_and_convolution_gradient_switches(setting):
  """`model.pair_loops` ('scan': the pairs as loop bodies, 'unrolled') and `model.conv_gradients` ('auto':
  canonical-form convolution gradients on CPU, ops/conv.py); both loop forms compute the same."""
  config = _config(*setting)
  default = base.load_method(config)
  assert not default.unroll and default.canonical_convs == (jax.default_backend() == "cpu")
  config.model.conv_gradients = "lax"
  assert not base.load_method(config).canonical_convs
  config.model.pair_loops = "unrolled"
  unrolled = base.load_method(config)
  assert unrolled.unroll
  xs = (jnp.arange(2), jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32))
  body = lambda c, x: (c * 2.0 + x[1].sum() * x[0], (jnp.tanh(x[1] @ x[1].T), x[0] + c))
  for m in (default, unrolled):
    for got, want in zip(jax.tree.leaves(jax.jit(lambda t, m=m: m._scan(body, 1.0, t))(xs)),  # pylint: disable=protected-access
                         jax.tree.leaves(jax.lax.scan(body, 1.0, xs))):
      np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda t, m=m: m._map(jnp.sin, t))(xs[1]), jnp.sin(xs[1]), rtol=1e-6)  # pylint: disable=protected-access
  text = lambda m: jax.jit(lambda t: m._scan(body, 1.0, t)).lower(xs).as_text()  # pylint: disable=protected-access
  assert "while" in text(default) and "while" not in text(unrolled)
  for field, value in (("pair_loops", "sometimes"), ("conv_gradients", "fast")):
    bad = _config(*setting)
    bad.model[field] = value
    with pytest.raises(Exception, match=f"model.{field}: '{value}'"):
      base.load_method(bad)
