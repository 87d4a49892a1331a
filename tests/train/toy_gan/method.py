"""A toy generator/discriminator method for the trainer's adversarial-step contract (tests only).

G: two convs, low -> fake (same size). D: two convs -> a patch map of real/fake scores. LSGAN losses; G also
has an L1 term to the normal-light image. `train_step` runs the generator forward ONCE (`jax.vjp`) and shares its
output: the generator update pulls D's gradient back through the vjp; the discriminator update sees the same
fakes, detached. `GENERATOR_TRACES` counts how often the generator forward is traced (once per compiled step).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lowlight_jax.methods import base

GENERATOR_TRACES = [0]


class Generator(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3), name="conv0")(x))
    return jax.nn.sigmoid(nn.Conv(3, (3, 3), name="conv1")(h))


class Discriminator(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(nn.Conv(8, (4, 4), strides=(2, 2), name="conv0")(x), 0.2)
    return nn.Conv(1, (3, 3), name="conv1")(h)


class Method(base.BaseMethod):
  groups = ("generator", "discriminator")

  def __init__(self, config):
    super().__init__(config)
    self.g, self.d = Generator(), Discriminator()

  def example_batch(self):
    s = self.config.data.crop
    return {"low": jnp.zeros((1, s, s, 3)), "high": jnp.zeros((1, s, s, 3))}

  def init(self, rng, batch):
    g_rng, d_rng = jax.random.split(rng)
    return base.Variables(params={"generator": self.g.init(g_rng, batch["low"])["params"],
                                  "discriminator": self.d.init(d_rng, batch["high"])["params"]},
                          model_state={}, frozen={})

  def generate(self, g_params, low):
    GENERATOR_TRACES[0] += 1
    return self.g.apply({"params": g_params}, low)

  def _d(self, d_params, x):
    return self.d.apply({"params": d_params}, x)

  def _g_loss_from_fake(self, d_params, fake, high):
    adv = jnp.mean((self._d(d_params, fake) - 1.0) ** 2)
    rec = jnp.mean(jnp.abs(fake - high))
    return adv + 10.0 * rec, {"adv": adv, "l1": rec}

  def _d_loss(self, d_params, fake, high):
    real = jnp.mean((self._d(d_params, high) - 1.0) ** 2)
    fake_term = jnp.mean(self._d(d_params, fake) ** 2)
    return 0.5 * (real + fake_term), {"real": real, "fake": fake_term}

  def loss(self, group, params, model_state, frozen, batch, rng):
    """The naive per-group losses (each runs the generator): used to show what `train_step` saves."""
    fake = self.generate(params["generator"], batch["low"])
    if group == "generator":
      loss, metrics = self._g_loss_from_fake(params["discriminator"], fake, batch["high"])
    else:
      loss, metrics = self._d_loss(params["discriminator"], jax.lax.stop_gradient(fake), batch["high"])
    return loss, (metrics, model_state)

  def train_step(self, ctx, params, opt_state, model_state, frozen, batch, rng):
    low, high = batch["low"], batch["high"]
    fake, g_vjp = jax.vjp(lambda p: self.generate(p, low), params["generator"])
    (g_loss, g_metrics), d_fake = jax.value_and_grad(
        lambda f: self._g_loss_from_fake(params["discriminator"], f, high), has_aux=True)(fake)
    (g_grads,) = g_vjp(d_fake)
    new_g, g_opt, g_upd, g_ok = ctx.apply_gradients("generator", g_grads, params["generator"],
                                                    opt_state["generator"])
    detached = jax.lax.stop_gradient(fake)
    (d_loss, d_metrics), d_grads = jax.value_and_grad(
        lambda p: self._d_loss(p, detached, high), has_aux=True)(params["discriminator"])
    new_d, d_opt, d_upd, d_ok = ctx.apply_gradients("discriminator", d_grads, params["discriminator"],
                                                    opt_state["discriminator"])
    metrics = {"generator/loss": g_loss, "discriminator/loss": d_loss,
               **{f"generator/{k}": v for k, v in {**g_metrics, **g_upd}.items()},
               **{f"discriminator/{k}": v for k, v in {**d_metrics, **d_upd}.items()}}
    finite = g_ok & d_ok & jnp.isfinite(g_loss) & jnp.isfinite(d_loss)
    return base.StepResult(params={"generator": new_g, "discriminator": new_d},
                           opt_state={"generator": g_opt, "discriminator": d_opt}, model_state=model_state,
                           metrics=metrics, finite=finite)

  def enhance(self, params, model_state, frozen, images):
    return {"enhanced": self.g.apply({"params": params["generator"]}, images)}
