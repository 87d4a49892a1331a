"""SKF around SNR-LLIE-Net: SNR-SKF (Wu et al., "Learning Semantic-Aware Knowledge Guidance for Low-Light Image
Enhancement", CVPR 2023), and the plain SNR-LLIE-Net baseline (Xu et al., CVPR 2022; `model.skf=False`).

Reference code: langmanbusi/Semantic-Aware-Low-Light-Image-Enhancement `SNR_SKF/train.py` (the loop: HRNet on the
ground truth, `optimize_parameters(current_step)`), `models/Video_base_model4_m.py` (the SNR mask, Charbonnier
loss, SCH every 50th step), `test.py` (the two-pass test), `options/train/LOLv1_SKF.yml` (the recipe);
`models/archs/low_light_transformer_seg.py` (the network: `lowlight_jax.models.snr`), `models/loss.py` (SCH:
`lowlight_jax.losses.skf_histogram`), `models/hrseg_lib` (the frozen HRNet-W48: `lowlight_jax.models.hrnet`).

Groups: `enhancer` only (SNR-SKF: 39.4 M parameters with the released 6 transformer layers, `model.n_layers`).
Frozen: `hrnet` (HRNet-W48 PASCAL-Context; `tiny` for smoke tests, see `skf_common`), when the SE blocks or SCH
use it. Inference uses the HRNet (the SE blocks read it); the baseline has no HRNet at all.

One step (`train_step`), as released:
  1. mask = snr_mask(low, box_blur(low)): the dataset's cv2.blur 5x5 (reflect-101) of the training crop and the
     model wrapper's SNR map.
  2. seg = HRNet(high), once and outside the gradient: its branch features feed the SE blocks, its softmax map
     picks SCH's classes.
  3. fake = net(low, mask, seg features); loss = w_charbonnier * sum sqrt((fake - high)^2 + 1e-6) (a SUM over
     batch, pixels and channels) + w_sch * SCH(seg map, fake, high) on every `loss.sch_every`-th update only.

Test (`enhance`, the released `test.py`): seg1 = HRNet(LQ); out1 = net(LQ, mask, seg1); seg2 = HRNet(out1)
(unclamped); out2 = net(LQ, mask, seg2) is the result, clipped to [0, 1]. `model.test_passes=1` stops at out1.

Port notes (paper vs released code; each released behaviour is a config switch):
  * No adversarial (SA) term: the paper's SA loss is not in the released SNR-SKF training (SNR_SKF ships a
    discriminator that `Video_base_model4_m` never builds), so this method has none; the SA ablation lives in
    the DRBN method (`lowlight_jax.methods.skf_drbn`).
  * The released trainer segments the GROUND TRUTH (`seg_model(GT)`); the paper segments the low-light input.
    `model.train_seg_input='ground_truth'` (released, default) or 'input' (the paper). The same map picks SCH's
    classes either way.
  * SCH removes pixels near class boundaries (the paper); `loss.edge_radius=0` is the released code.
  * The released step counter is 1-based (`current_step += 1` before `optimize_parameters`): SCH is on at the
    50th, 100th, ... update. `StepContext.step` counts the updates before this one, so SCH is on where
    (ctx.step + 1) % sch_every == 0, with its weight switched by `jnp.where` (one compiled step). Its value is
    computed (and logged) every step; its backward runs only on the steps that use it (`lax.cond`).
  * `loss.charbonnier_reduction='sum'` is released (the SCH weight 10000 was tuned against a sum over 16 crops of
    128 x 128 x 3); 'mean' divides by the element count.
  * The released `pretrain_model_G` is a BASELINE SNR-LLIE-Net checkpoint loaded non-strictly (`strict_load`
    unset): the SE blocks start random. `init_from` accepts such a checkpoint for `model.skf=True` the same way
    (every non-SE key checked; the SE blocks initialised here), as well as a full SNR-SKF checkpoint.
  * Inputs of any size: edge-padded to multiples of 4, at least 16 (the network's requirement), cropped back. The
    mask is computed on the unpadded image and edge-padded (the released `test4` also pads after the mask).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lowlight_jax import errors
from lowlight_jax.losses import skf_histogram
from lowlight_jax.methods import base
from lowlight_jax.methods import skf_common
from lowlight_jax.models import hrnet as hrnet_lib
from lowlight_jax.models import snr as snr_lib

PyTree = Any
CHARBONNIER_EPS = 1e-6
SEG_INPUTS = ("ground_truth", "input")
REDUCTIONS = ("sum", "mean")
SE_BLOCKS = ("att_block_1", "att_block_2", "att_block_3")


def charbonnier(x: jax.Array, y: jax.Array, reduction: str = "sum") -> jax.Array:
  """`CharbonnierLoss`: sum (released) or mean of sqrt((x - y)^2 + 1e-6) over every element."""
  err = jnp.sqrt(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)) + CHARBONNIER_EPS)
  return jnp.sum(err) if reduction == "sum" else jnp.mean(err)


def _padded_size(n: int) -> int:
  return max(-(-n // 4) * 4, 16)


class Method(base.BaseMethod):
  """SNR-SKF (or the plain SNR-LLIE-Net) on the trainer's single-group step."""

  groups = ("enhancer",)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m, lc = config.model, config.loss
    self.skf = bool(m.skf)
    self.use_sch = bool(config.loss_weights.sch)
    self.use_hrnet = self.skf or self.use_sch
    self.inference_towers = ("hrnet",) if self.skf else ()
    if m.train_seg_input not in SEG_INPUTS:
      raise errors.ConfigError(f"model.train_seg_input: {m.train_seg_input!r}, expected one of {SEG_INPUTS}")
    if lc.charbonnier_reduction not in REDUCTIONS:
      raise errors.ConfigError(f"loss.charbonnier_reduction: {lc.charbonnier_reduction!r}, expected {REDUCTIONS}")
    if int(lc.sch_every) < 1:
      raise errors.ConfigError(f"loss.sch_every: must be >= 1, got {lc.sch_every}")
    if int(m.test_passes) not in (1, 2):
      raise errors.ConfigError(f"model.test_passes: 1 or 2 (released), got {m.test_passes}")
    crop = config.data.crop
    if crop and (crop % 4 or crop < 16):
      raise errors.ConfigError(f"data.crop: SNR needs a multiple of 4 of at least 16, got {crop}")
    dt = self.policy.compute_dtype
    self.hrnet = hrnet_lib.HRNet(config=skf_common.hrnet_config(config), dtype=dt)
    self.net = snr_lib.SNRNet(skf=self.skf, n_layers=int(m.n_layers), dtype=dt)

  def example_batch(self) -> dict[str, jax.Array]:
    s = self.config.data.crop or 64
    return {"low": jnp.zeros((1, s, s, 3)), "high": jnp.zeros((1, s, s, 3))}

  def init(self, rng, batch):
    e_rng, h_rng = jax.random.split(rng)
    low = batch["low"]
    frozen, seg_fea = {}, None
    if self.use_hrnet:
      frozen["hrnet"] = skf_common.init_hrnet(self.hrnet, h_rng, low)
    if self.skf:
      # The SE blocks' input widths are the configured HRNet's (W48: 48/96/192; `tiny`: 48/96/32).
      shapes = jax.eval_shape(lambda x: self.hrnet.init_with_output(jax.random.key(0), x)[0]["features"],
                              jax.ShapeDtypeStruct(low.shape, jnp.float32))
      seg_fea = tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)
    mask = jnp.ones(low.shape[:3] + (1,), jnp.float32)
    params = {"enhancer": self.net.init(e_rng, low, mask, seg_fea)["params"]}
    return base.Variables(params=params, model_state={}, frozen=frozen)

  # -- networks ------------------------------------------------------------------------------------------------

  def _hrnet(self, frozen: PyTree, images: jax.Array) -> dict[str, Any]:
    return self.policy.remat_fn(self.hrnet.apply)(frozen["hrnet"], images)

  @staticmethod
  def snr_mask(low: jax.Array) -> jax.Array:
    """The released SNR map of a low-light batch (B,H,W,3) -> (B,H,W,1): the dataset's 5x5 blur, then the map."""
    low = low.astype(jnp.float32)
    return snr_lib.snr_mask(low, snr_lib.box_blur(low))

  def _net(self, enhancer_params: PyTree, low: jax.Array, mask: jax.Array, seg_fea) -> jax.Array:
    return self.net.apply({"params": enhancer_params}, low, mask, seg_fea).astype(jnp.float32)

  # -- training ------------------------------------------------------------------------------------------------

  def _sch(self, seg_map: jax.Array, fake: jax.Array, high: jax.Array, active: jax.Array) -> jax.Array:
    """SCH (batch mean, LLFlow/SNR normalisation); its backward only where `active` (the value always)."""
    def value(f):
      return jnp.mean(skf_histogram.semantic_histogram_loss(
          seg_map, f, high, normalization="llflow", edge_radius=self.config.loss.edge_radius))

    return jax.lax.cond(active, value, lambda f: value(jax.lax.stop_gradient(f)), fake)

  def train_step(self, ctx, params, opt_state, model_state, frozen, batch, rng):
    del rng
    cfg = self.config
    weights = cfg.loss_weights
    low, high = batch["low"], batch["high"]
    mask = self.snr_mask(low)
    seg = None
    if self.use_hrnet:  # Frozen and outside the gradient: traced once per step.
      seg_input = high if cfg.model.train_seg_input == "ground_truth" else low
      out = self._hrnet(frozen, seg_input)
      seg = jax.lax.stop_gradient({"probs": out["probs"].astype(jnp.float32), "features": out["features"]})
    step = jnp.zeros((), jnp.int32) if ctx.step is None else ctx.step
    active = (step + 1) % int(cfg.loss.sch_every) == 0  # The released 1-based `current_step % 50 == 0`.

    def loss_fn(p):
      fake = self._net(p, low, mask, seg["features"] if self.skf else None)
      terms = {"charbonnier": charbonnier(fake, high, cfg.loss.charbonnier_reduction)}
      total = weights.charbonnier * terms["charbonnier"]
      if self.use_sch:
        terms["sch"] = self._sch(seg["probs"], fake, high, active)
        total = total + jnp.where(active, weights.sch * terms["sch"], 0.0)
      return total, {f"loss_{k}": v for k, v in terms.items()}

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params["enhancer"])
    params, opt_state = dict(params), dict(opt_state)
    params["enhancer"], opt_state["enhancer"], upd, ok = ctx.apply_gradients(
        "enhancer", grads, params["enhancer"], opt_state["enhancer"])
    metrics = {"enhancer/loss": loss, **{f"enhancer/{k}": v for k, v in {**terms, **upd}.items()}}
    if self.use_sch:
      metrics["enhancer/sch_active"] = active.astype(jnp.float32)
    return base.StepResult(params=params, opt_state=opt_state, model_state=model_state, metrics=metrics,
                           finite=ok & jnp.isfinite(loss))

  # -- inference -----------------------------------------------------------------------------------------------

  def enhance(self, params, model_state, frozen, images):
    """Any size: edge-padded to multiples of 4 (at least 16), the released two passes, cropped back, clipped."""
    del model_state
    h, w = images.shape[1:3]
    x = images.astype(jnp.float32)
    pad = ((0, 0), (0, _padded_size(h) - h), (0, _padded_size(w) - w), (0, 0))
    mask = jnp.pad(self.snr_mask(x), pad, mode="edge")
    x = jnp.pad(x, pad, mode="edge")
    if not self.skf:
      out = self._net(params["enhancer"], x, mask, None)
    else:
      out = self._net(params["enhancer"], x, mask, self._hrnet(frozen, x)["features"])
      for _ in range(int(self.config.model.test_passes) - 1):  # HRNet sees the unclamped output.
        out = self._net(params["enhancer"], x, mask, self._hrnet(frozen, out)["features"])
    return {"enhanced": jnp.clip(out[:, :h, :w], 0.0, 1.0)}

  # -- weights -------------------------------------------------------------------------------------------------

  def weight_sources(self) -> list[base.WeightSource]:
    """`hrnet.weights` (the authors' HRNet-W48 PASCAL-Context checkpoint, or a plain state dict) and `init_from`
    (the authors' `SNR_SKF_LOL.pth`, a baseline SNR-LLIE-Net `.pth` as their `pretrain_model_G`, a plain state
    dict, or a run directory: its enhancer params, SE blocks kept at their init when it is a baseline run); the
    transformer depth must match `model.n_layers`."""
    cfg = self.config
    sources = skf_common.hrnet_weight_source(cfg) if self.use_hrnet else []
    if cfg.init_from and os.path.isdir(cfg.init_from):  # A run (e.g. a baseline run): non-strict, as below.
      sources.append(base.run_weight_source(cfg.init_from, "enhancer"))
    elif cfg.init_from:
      skf = self.skf

      def convert_snr(abstract, path=cfg.init_from):
        from lowlight_jax.convert import io as convert_io  # Conversion code only when files are given.
        from lowlight_jax.convert import skf as skf_convert
        from lowlight_jax.convert import weights as convert_weights
        if convert_weights.is_converted_file(path):  # `launch.convert_weights --method skf_snr` output.
          return skf_convert.load_snr(path, {"params": dict(abstract)})["params"]
        checkpoint = convert_io.load_checkpoint(path)
        target = dict(abstract)
        if skf and not skf_convert.has_se_blocks(skf_convert.unwrap_checkpoint(checkpoint)):
          # Port note: the released non-strict load of a baseline checkpoint; the SE blocks keep their init.
          logging.warning("init_from %s has no SE blocks (a baseline SNR-LLIE-Net checkpoint): %s start from "
                          "their initialisation, as in the released training", path, ", ".join(SE_BLOCKS))
          target = {k: v for k, v in target.items() if k not in SE_BLOCKS}
        try:
          return skf_convert.convert_snr(checkpoint, {"params": target})["params"]
        except errors.WeightsError as e:  # Name the file: `init_from` is one of several weight files.
          raise errors.WeightsError(f"init_from {path}: {e}") from e

      sources.append(base.WeightSource(target=("params", "enhancer"), files=(cfg.init_from,),
                                       convert=convert_snr, converter="skf-snr-v1"))
    return sources
