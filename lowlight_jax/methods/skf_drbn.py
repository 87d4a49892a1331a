"""SKF around DRBN: DRBN-SKF (Wu et al., "Learning Semantic-Aware Knowledge Guidance for Low-Light Image
Enhancement", CVPR 2023), and the plain DRBN baseline (`model.skf=False`) for the ablation.

Reference code: langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement `DRBN_SKF/src/trainer_seg_hist_fuse.py`
(the training step), `src/model/drbn.py` (the network: `lowlight_jax.models.drbn`), `src/model/D_Net.py` (the SA
discriminator and losses: `lowlight_jax.models.skf_discriminator`, `lowlight_jax.losses.skf_adversarial`),
`src/loss/hist_loss` (SCH: `lowlight_jax.losses.skf_histogram`), `hrseg/` (the frozen HRNet-W48 knowledge bank:
`lowlight_jax.models.hrnet`).

Groups: `enhancer` (DRBN-SKF, 599,132 parameters) and `discriminator` (4.7 M; only with a non-zero adversarial
weight). Frozen: `hrnet` (HRNet-W48 PASCAL-Context, 65.9 M, sharded by the sharding rules like any tower; a
`tiny` variant with the same branch widths for smoke tests). Inference uses the HRNet (the SE blocks read it).

One step, with ONE generator forward shared by both updates (`train_step`):
  1. DRBN recurrences 1-3; HRNet segments recurrence 3's output; recurrence 4 with the SE blocks -> phr1, phr2,
     phr4; HRNet segments phr1 -> the softmax map that picks SCH's classes and joins the discriminator's input.
  2. Discriminator update on the same step's (detached) phr1 and map: 0.9 global + 0.1 worst-region LSGAN.
  3. Enhancer update, through the vjp of step 1: w_ssim * sum over scales (1 - SSIM) + w_sch * SCH
     + w_adv * LSGAN generator term with the UPDATED discriminator (the released order: D first, then G).

Port notes (paper vs released code; each released behaviour is a config switch):
  * SCH removes pixels near class boundaries (the paper); `loss.edge_radius=0` is the released code.
  * The released D update never trains the `conv0` stem that the generator term goes through;
    `loss.released_global_without_semantics=True` reproduces it. `loss.released_mask_aliasing=True` brings back
    the aliased top-1/top-2 region masks.
  * The released trainer re-creates D and its Adam state every epoch; ours persist and are checkpointed.
    `loss.released_reinit_discriminator_every=N` (steps; one LOL epoch at batch 4 is 122) brings the re-creation
    back.
  * The released reconstruction loss is -SSIM; we use 1 - SSIM (same gradient).
  * The discriminator's BatchNorm runs in train mode (batch statistics) in every call, as released; its running
    statistics are never read and are kept as initialised (in `model_state`, checkpointed).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lowlight_jax.losses import skf_adversarial
from lowlight_jax.losses import skf_histogram
from lowlight_jax.losses import ssim as ssim_lib
from lowlight_jax.methods import base
from lowlight_jax.methods import skf_common
from lowlight_jax.models import drbn as drbn_lib
from lowlight_jax.models import hrnet as hrnet_lib
from lowlight_jax.models import skf_discriminator
from lowlight_jax.models import skf_se

PyTree = Any

class Method(base.BaseMethod):
  """DRBN-SKF (or plain DRBN) on the trainer's generator/discriminator step."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    w = config.loss_weights
    self.skf = bool(config.model.skf)
    self.use_sch = bool(w.sch)
    self.use_adv = bool(w.adversarial)
    self.use_hrnet = self.skf or self.use_sch or self.use_adv
    self.groups = ("enhancer", "discriminator") if self.use_adv else ("enhancer",)
    self.inference_towers = ("hrnet",) if self.skf else ()
    dt = self.policy.compute_dtype
    self.hrnet_config = skf_common.hrnet_config(config)
    self.num_classes = self.hrnet_config.num_classes
    self.drbn = drbn_lib.DRBN(skf=self.skf, dtype=dt)
    self.hrnet = hrnet_lib.HRNet(config=self.hrnet_config, dtype=dt)
    self.disc = skf_discriminator.SKFDiscriminator(semantic_channels=self.num_classes, dtype=dt)

  def example_batch(self) -> dict[str, jax.Array]:
    s = self.config.data.crop or 64
    return {"low": jnp.zeros((1, s, s, 3)), "high": jnp.zeros((1, s, s, 3))}

  def init(self, rng, batch):
    e_rng, d_rng, h_rng = jax.random.split(rng, 3)
    low = batch["low"]
    segment = skf_se.zero_semantics if self.skf else None
    params = {"enhancer": self.drbn.init(e_rng, low, segment=segment)["params"]}
    model_state, frozen = {}, {}
    if self.use_adv:
      d_vars = self.disc.init(d_rng, jnp.zeros(low.shape[:3] + (3 + self.num_classes,)))
      params["discriminator"] = d_vars["params"]
      model_state["discriminator"] = {"batch_stats": d_vars["batch_stats"]}
    if self.use_hrnet:
      frozen["hrnet"] = skf_common.init_hrnet(self.hrnet, h_rng, low)
    return base.Variables(params=params, model_state=model_state, frozen=frozen)

  # -- networks ------------------------------------------------------------------------------------------------

  def _hrnet(self, frozen: PyTree, images: jax.Array) -> dict[str, Any]:
    return self.policy.remat_fn(self.hrnet.apply)(frozen["hrnet"], images)

  def _segment_fn(self, frozen: PyTree):
    """image -> (seg_orin: the logits at input size, seg_fea: the branch features), what the SE blocks read."""
    def segment(image):
      out = self._hrnet(frozen, image)
      return out["logits"], out["features"]
    return segment if self.skf else None

  def generate(self, enhancer_params: PyTree, frozen: PyTree, low: jax.Array) -> dict[str, jax.Array]:
    """The generator forward of one training step: {'phr1', 'phr2', 'phr4'} and, when a loss needs it, the
    softmax map of phr1 ('seg_map')."""
    phr1, phr2, phr4 = self.drbn.apply({"params": enhancer_params}, low, segment=self._segment_fn(frozen))
    out = {"phr1": phr1.astype(jnp.float32), "phr2": phr2.astype(jnp.float32), "phr4": phr4.astype(jnp.float32)}
    if self.use_sch or self.use_adv:
      out["seg_map"] = self._hrnet(frozen, out["phr1"])["probs"].astype(jnp.float32)
    return out

  def _d_apply(self, d_params: PyTree, d_state: PyTree):
    def apply(x):
      scores, _ = self.disc.apply({"params": d_params, **d_state}, x, train=True, mutable=["batch_stats"])
      return scores
    return apply

  # -- losses --------------------------------------------------------------------------------------------------

  def _d_loss(self, d_params, d_state, real, fake, seg_map) -> tuple[jax.Array, dict[str, jax.Array]]:
    lc = self.config.loss
    loss, aux = skf_adversarial.discriminator_loss(
        self._d_apply(d_params, d_state), real, fake, seg_map,
        released_mask_aliasing=lc.released_mask_aliasing,
        released_global_without_semantics=lc.released_global_without_semantics, with_aux=True)
    metrics = {k: jnp.mean(aux[k]) for k in ("global_fake", "global_real", "region_fake", "region_real")}
    return jnp.mean(loss), metrics

  def _g_terms(self, outputs: dict[str, jax.Array], high: jax.Array, d_apply) -> dict[str, jax.Array]:
    """Per-example, unweighted enhancer loss terms."""
    terms = {"ssim": (ssim_lib.ssim_loss(outputs["phr1"], high)
                      + ssim_lib.ssim_loss(outputs["phr2"], high[:, ::2, ::2])
                      + ssim_lib.ssim_loss(outputs["phr4"], high[:, ::4, ::4]))}
    if self.use_sch:
      terms["sch"] = skf_histogram.semantic_histogram_loss(
          outputs["seg_map"], outputs["phr1"], high, normalization="drbn", edge_radius=self.config.loss.edge_radius)
    if self.use_adv:
      terms["adversarial"] = skf_adversarial.generator_loss(d_apply, outputs["phr1"], outputs["seg_map"])
    return terms

  def _fresh_discriminator(self, ctx, rng, shape) -> tuple[PyTree, PyTree, PyTree]:
    """A newly initialised discriminator: (params, optimizer state, model state)."""
    d_vars = self.disc.init(rng, jnp.zeros(shape[:3] + (3 + self.num_classes,)))
    return (d_vars["params"], ctx.optimizers["discriminator"].init(d_vars["params"]),
            {"batch_stats": d_vars["batch_stats"]})

  def _maybe_reinit_discriminator(self, ctx, params, opt_state, model_state, rng, shape):
    """`loss.released_reinit_discriminator_every` = N > 0: a new D (and Adam state) every N steps, as the released
    trainer re-creates D at every epoch start (N = one epoch). 0 (the default): D persists."""
    every = int(self.config.loss.get("released_reinit_discriminator_every", 0) or 0)
    if not every or ctx.step is None:
      return params, opt_state, model_state
    current = (params["discriminator"], opt_state["discriminator"], model_state["discriminator"])
    d_params, d_opt, d_state = jax.lax.cond(
        (ctx.step % every == 0) & (ctx.step > 0), lambda: self._fresh_discriminator(ctx, rng, shape),
        lambda: current)
    return ({**params, "discriminator": d_params}, {**opt_state, "discriminator": d_opt},
            {**model_state, "discriminator": d_state})

  def train_step(self, ctx, params, opt_state, model_state, frozen, batch, rng):
    low, high = batch["low"], batch["high"]
    if self.use_adv:
      params, opt_state, model_state = self._maybe_reinit_discriminator(
          ctx, params, opt_state, model_state, jax.random.fold_in(rng, 1), low.shape)
    weights = self.config.loss_weights
    outputs, generator_vjp = jax.vjp(lambda p: self.generate(p, frozen, low), params["enhancer"])
    params, opt_state = dict(params), dict(opt_state)
    metrics, finite = {}, jnp.array(True)
    d_apply = None
    if self.use_adv:
      # The discriminator first, on this step's fakes (detached), as released.
      d_state = model_state["discriminator"]
      fake = jax.lax.stop_gradient(outputs["phr1"])
      seg_map = jax.lax.stop_gradient(outputs["seg_map"])
      (d_loss, d_metrics), d_grads = jax.value_and_grad(
          lambda p: self._d_loss(p, d_state, high, fake, seg_map), has_aux=True)(params["discriminator"])
      params["discriminator"], opt_state["discriminator"], upd, ok = ctx.apply_gradients(
          "discriminator", d_grads, params["discriminator"], opt_state["discriminator"])
      finite = finite & ok & jnp.isfinite(d_loss)
      metrics.update({"discriminator/loss": d_loss,
                      **{f"discriminator/{k}": v for k, v in {**d_metrics, **upd}.items()}})
      d_apply = self._d_apply(params["discriminator"], d_state)

    def g_loss(outs):
      terms = self._g_terms(outs, high, d_apply)
      total = sum(weights[k] * jnp.mean(v) for k, v in terms.items())
      return total, {f"loss_{k}": jnp.mean(v) for k, v in terms.items()}

    (loss, g_metrics), d_outputs = jax.value_and_grad(g_loss, has_aux=True)(outputs)
    (grads,) = generator_vjp(d_outputs)
    params["enhancer"], opt_state["enhancer"], upd, ok = ctx.apply_gradients(
        "enhancer", grads, params["enhancer"], opt_state["enhancer"])
    finite = finite & ok & jnp.isfinite(loss)
    metrics.update({"enhancer/loss": loss, **{f"enhancer/{k}": v for k, v in {**g_metrics, **upd}.items()}})
    return base.StepResult(params=params, opt_state=opt_state, model_state=model_state, metrics=metrics,
                           finite=finite)

  def enhance(self, params, model_state, frozen, images):
    """Any size: edge-padded to multiples of 4 (DRBN's requirement), enhanced, cropped back, clipped."""
    del model_state
    h, w = images.shape[1:3]
    ph, pw = (-h) % 4, (-w) % 4
    x = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    phr1, _, _ = self.drbn.apply({"params": params["enhancer"]}, x, segment=self._segment_fn(frozen))
    return {"enhanced": jnp.clip(phr1[:, :h, :w].astype(jnp.float32), 0.0, 1.0)}

  def weight_sources(self) -> list[base.WeightSource]:
    """`hrnet.weights` (the authors' HRNet-W48 PASCAL-Context checkpoint, or a plain state dict) and `init_from`
    (the authors' released DRBN-SKF `.pt`, a plain DRBN state dict, or a run directory: its enhancer params, with
    the SE blocks kept at their initialisation when it is a baseline run)."""
    cfg = self.config
    sources = skf_common.hrnet_weight_source(cfg) if self.use_hrnet else []
    if cfg.init_from and os.path.isdir(cfg.init_from):  # A run (e.g. the baseline demo): non-strict.
      sources.append(base.run_weight_source(cfg.init_from, "enhancer"))
    elif cfg.init_from:
      def convert_drbn(abstract, path=cfg.init_from):
        from lowlight_jax.convert import skf as skf_convert
        return skf_convert.load_drbn(path, {"params": abstract})["params"]

      sources.append(base.WeightSource(target=("params", "enhancer"), files=(cfg.init_from,),
                                       convert=convert_drbn, converter="skf-drbn-v1"))
    return sources
