"""SKF SA losses: the released values (eval and train mode), and each fixed defect."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.convert import skf_discriminator as convert
from lowlight_jax.losses import skf_adversarial as sa
from lowlight_jax.models.skf_discriminator import SKFDiscriminator

RELEASED = dict(released_mask_aliasing=True, released_global_without_semantics=True)


@pytest.fixture(scope="module")
def setup(conformance_dir):
  d = conformance_dir / "fixtures"
  io = np.load(d / "skf_dnet_io.npz")
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))  # noqa: E731
  variables = convert.convert_skf_discriminator(dict(np.load(d / "skf_dnet_weights.npz")))
  model = SKFDiscriminator()

  def d_apply(mode, params=None):
    v = dict(variables, params=params) if params is not None else variables
    if mode == "eval":
      return lambda x: model.apply(v, x)
    return lambda x: model.apply(v, x, train=True, mutable=["batch_stats"])[0]

  return {"real": nhwc(io["real"]), "fake": nhwc(io["fake"]), "seg": nhwc(io["seg"]),
          "ref": json.loads((d / "skf_dnet_losses.json").read_text())["results"],
          "d_apply": d_apply, "params": variables["params"]}


def _rel(ours, ref, tol=1e-5):
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=tol,
                             atol=tol * np.abs(np.asarray(ref)).max())


def test_top_classes_by_mass(setup):
  ref = setup["ref"]
  maps, classes = sa.top_class_maps(setup["seg"])
  np.testing.assert_array_equal(classes, np.stack([ref["top1_class_per_image"],
                                                   ref["top2_class_per_image"]], 1))
  _rel(jnp.sum(setup["seg"], axis=(1, 2))[jnp.arange(2), classes[:, 0]], ref["class_mass_top1"])
  np.testing.assert_array_equal(maps[0, ..., 0], setup["seg"][0, ..., 17])
  _, aliased = sa.top_class_maps(setup["seg"], released_mask_aliasing=True)
  np.testing.assert_array_equal(aliased, np.stack([ref["top2_class_per_image"]] * 2, 1))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_released_values(setup, mode):
  ref, d = setup["ref"], setup["d_apply"](mode)
  args = (d, setup["real"], setup["fake"], setup["seg"])
  loss, aux = sa.discriminator_loss(*args, with_aux=True, **RELEASED)
  assert loss.shape == (2,)
  _rel(loss.mean(), ref[f"drbn_{mode}_mode"]["loss_D"])
  s = aux["scores"]
  calls = [s["fake"], s["real"], s["fake_regions"][:, 0], s["fake_regions"][:, 1],
           s["real_regions"][:, 0], s["real_regions"][:, 1]]
  _rel(np.stack([np.asarray(c).ravel() for c in calls]),
       ref[f"drbn_{mode}_mode"]["D_calls_in_order"])
  snr = sa.discriminator_loss(*args, region_reduction="mean", **RELEASED)
  _rel(snr.mean(), ref[f"snr_{mode}_mode"]["loss_D"])
  g = sa.generator_loss(d, setup["fake"], setup["seg"])
  _rel(g.mean(), ref[f"drbn_{mode}_mode"]["loss_G"])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fixed_masks_use_both_top_classes(setup, mode):
  # Defect (a) alone: the regions are now top-1 and top-2; their terms are the fixture's
  # NOT_AUTHORS_intended_no_alias terms, and the SNR mean over regions its value.
  ref, d = setup["ref"][f"NOT_AUTHORS_intended_no_alias_{mode}_mode"], setup["d_apply"](mode)
  args = (d, setup["real"], setup["fake"], setup["seg"])
  loss, aux = sa.discriminator_loss(*args, with_aux=True, released_global_without_semantics=True)
  t = ref["terms"]
  _rel(aux["region_fake"].mean(0), [t["fake_top1"], t["fake_top2"]])
  _rel(aux["region_real"].mean(0), [t["real_top1"], t["real_top2"]])
  _rel(aux["global_fake"].mean(), t["fake"])
  snr = sa.discriminator_loss(*args, region_reduction="mean",
                              released_global_without_semantics=True)
  _rel(snr.mean(), ref["snr_style_mean_of_regions"])
  # Per example, the worst region of each term.
  worst = (0.9 * (aux["global_fake"] + aux["global_real"]) / 2
           + 0.1 * (aux["region_fake"].max(1) + aux["region_real"].max(1)) / 2)
  _rel(loss, worst, 1e-6)
  released = sa.discriminator_loss(*args, **RELEASED)
  assert float(jnp.abs(loss - released).max()) > 1e-4  # the top-1 class now matters
  # Where aliasing cannot matter (one region), both modes agree exactly.
  one = [sa.discriminator_loss(*args, num_regions=1, released_global_without_semantics=True,
                               released_mask_aliasing=a) for a in (False, True)]
  np.testing.assert_array_equal(one[0], one[1])


def _toy_d(params):
  """A two-stem stand-in for D (dispatch on channels as released): cheap to differentiate."""
  def d_apply(x):
    w = params["conv1"] if x.shape[-1] == 3 else params["conv0"]
    return jax.nn.sigmoid(jnp.mean(x @ w, axis=(1, 2)))[:, None]
  return d_apply


def test_fixed_global_term_trains_the_generator_stem(setup):
  # Defect (b): released, the D update never touches conv0, which the generator term goes through.
  real, fake, seg = setup["real"], setup["fake"], setup["seg"]
  rng = np.random.default_rng(0)
  params = {"conv0": jnp.asarray(rng.normal(size=(62,)), jnp.float32),
            "conv1": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}

  def d_loss(p, **kw):
    return sa.discriminator_loss(_toy_d(p), real, fake, seg, **kw).mean()

  def terms(p, **kw):
    return sa.discriminator_loss(_toy_d(p), real, fake, seg, with_aux=True, **kw)[1]

  g_released = jax.grad(lambda p: d_loss(p, **RELEASED))(params)
  g_fixed = jax.grad(d_loss)(params)
  g_gen = jax.grad(lambda p: sa.generator_loss(_toy_d(p), fake, seg).mean())(params)
  assert float(jnp.abs(g_released["conv0"]).max()) == 0.0
  assert float(jnp.abs(g_gen["conv0"]).max()) > 0 and float(jnp.abs(g_gen["conv1"]).max()) == 0
  assert float(jnp.abs(g_fixed["conv0"]).max()) > 0
  assert float(jnp.abs(g_fixed["conv1"]).max()) > 0  # the regions still go through conv1
  # Only the global terms change; the regions and the generator loss are the same in both modes.
  fixed, released = terms(params, released_mask_aliasing=True), terms(params, **RELEASED)
  for k in ("region_fake", "region_real"):
    np.testing.assert_array_equal(fixed[k], released[k])
  assert float(jnp.abs(fixed["global_fake"] - released["global_fake"]).max()) > 1e-4
  # With the real D: the fixed global terms take the conv0 stem, the released ones conv1.
  d = setup["d_apply"]("eval")
  fixed = sa.discriminator_loss(d, real, fake, seg, with_aux=True)[1]["scores"]["fake"]
  np.testing.assert_array_equal(fixed, d(jnp.concatenate([fake, seg], -1)))
  # The real image's global input carries a map of its own when given.
  other = terms(params, real_seg_map=jnp.roll(seg, 1, axis=-1))
  base = terms(params)
  assert float(jnp.abs(other["global_real"] - base["global_real"]).max()) > 0
  np.testing.assert_array_equal(other["global_fake"], base["global_fake"])


def test_generator_gradient_and_checks(setup):
  d = _toy_d({"conv0": jnp.linspace(-1, 1, 62), "conv1": jnp.ones((3,))})
  g = jax.grad(lambda x: sa.generator_loss(d, x, setup["seg"]).sum())(setup["fake"])
  assert g.shape == setup["fake"].shape and float(jnp.abs(g).max()) > 0
  with pytest.raises(ValueError, match="region_reduction"):
    sa.discriminator_loss(d, setup["real"], setup["fake"], setup["seg"], region_reduction="max")
  with pytest.raises(ValueError, match="shapes"):
    sa.discriminator_loss(d, setup["real"][:, :32], setup["fake"], setup["seg"])
