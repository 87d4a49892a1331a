"""SCL-LLE: Semantically Contrastive Learning for Low-Light Image Enhancement (AAAI 2022).

Paper: Liang, Li, Wei, Yang, Zhang, Yang, Du, Zhou, AAAI 2022.

Reference code: LingLIx/SCL-LLE (commit 408d89a) `train.py`, `Myloss.py`, `lowlight_model.py`, and
the VainF/DeepLabV3Plus-Pytorch network it vendors (`network/`).

One trained group, `enhancer`: DCE-Net (Zero-DCE's curve estimator, 79,416 parameters; 8 curve
iterations). Two frozen networks: DeepLabV3+ / MobileNetV2 (19 Cityscapes classes, output stride 16,
ImageNet-normalised input, BatchNorm in eval mode) and VGG-16 `features` (torchvision layout, input
NOT normalised, as released); both are random (`models.init.random_variables`) unless `segmentation.weights` /
`vgg.weights` name checkpoint files. Gradients flow THROUGH the frozen networks into the enhancer;
their parameters are never updated.

Loss terms (per example, reported as `loss_<name>`; `config.loss_weights`, the released values):
  contrast_appearance  10   grey-map triplet, margin 0.3, unpaired positives / negatives
  contrast_gram         5   VGG relu1_2 + relu2_2 Gram triplet, margin 0.04
  semantic_brightness   1   per image and class, squared deviation from the class-mean brightness
  segmentation          1   DeepLabV3+ cross-entropy of the enhanced image vs the labels (Eq. 7)
  feature_retention     1   VGG relu4_3 MSE between input and enhanced image (Eq. 8)
  color                 8   Zero-DCE colour constancy (released 4th-power form)
  tv                  200   illumination smoothness (Zero-DCE L_TV) on the 24 curve maps
A zero weight skips the term (and the frozen network it alone needs).

Port notes (released behaviour -> ours; config switches restore the released one where cheap):
- The released segmentation loss sends NO gradient to the enhancer (the enhanced image is
  `.detach()`ed before DeepLabV3+ and the loss re-wrapped in `torch.tensor`); ours does
  (`segmentation.gradient=False` restores the released behaviour). The released DeepLabV3+ also runs
  in train mode (batch statistics, running stats drifting with momentum 0.01); ours uses its running
  statistics.
- The released semantic brightness term detaches the class means, uses class sums over all pixels
  and broadcasts every label map over every image of the batch:
  `loss.released_semantic_brightness=True`.
- The released triplets take the hinge of batch-averaged (appearance) or batch-SUMMED (Gram)
  distances; ours are per example (hinge per image, then the batch mean); with batch 2 the released
  Gram distances are twice ours relative to the same 0.04 margin.
- DCE-Net init: conv kernels N(0, 0.02) as the released `weights_init`; biases 0 (torch keeps its
  default uniform bias init there).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lowlight_jax.losses import contrastive
from lowlight_jax.losses import scl_semantic
from lowlight_jax.losses import zero_reference as zr
from lowlight_jax.methods import base
from lowlight_jax.models import dce_net
from lowlight_jax.models import init as init_lib
from lowlight_jax.models import deeplabv3plus
from lowlight_jax.models import vgg as vgg_lib

PyTree = Any
TERMS = ("contrast_appearance", "contrast_gram", "semantic_brightness", "segmentation",
         "feature_retention", "color", "tv")


class Method(base.BaseMethod):
  """SCL-LLE on the generic trainer."""

  groups = ("enhancer",)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m, w = config.model, config.loss_weights
    unknown = sorted(set(w.keys()) - set(TERMS))
    if unknown:
      raise ValueError(f"loss_weights: unknown terms {unknown}; known: {TERMS}")
    self.dce = dce_net.DCENet(features=m.channels, iterations=m.iterations)
    self.use_retention = bool(w.get("feature_retention", 0.0))
    self.use_gram = bool(w.get("contrast_gram", 0.0))
    self.use_vgg = self.use_retention or self.use_gram
    self.use_seg = bool(w.get("segmentation", 0.0))
    vgg_dtype = self.policy.compute_dtype
    # The frozen VGG is created up to the deepest layer any term needs; the Gram features of the
    # pool images come from a shallower view of the same parameters.
    self.vgg = vgg_lib.VGG16Features(stop_at="relu4_3" if self.use_retention else "relu2_2",
                                     dtype=vgg_dtype)
    self.vgg_gram = vgg_lib.VGG16Features(stop_at="relu2_2", dtype=vgg_dtype)
    seg = config.segmentation
    self.deeplab = deeplabv3plus.DeepLabV3PlusMobileNet(
        num_classes=seg.num_classes, output_stride=seg.output_stride, repeats=tuple(seg.repeats),
        normalize_input=True, dtype=self.policy.compute_dtype)

  def example_batch(self) -> dict[str, jax.Array]:
    d = self.config.data
    s = d.crop or 64
    return {"low": jnp.zeros((1, s, s, 3), jnp.float32), "labels": jnp.zeros((1, s, s), jnp.int32),
            "pos": jnp.zeros((1, d.num_pos, s, s, 3), jnp.float32),
            "neg": jnp.zeros((1, d.num_neg, s, s, 3), jnp.float32)}

  def init(self, rng: jax.Array, batch: base.Batch) -> base.Variables:
    dce_rng, vgg_rng, seg_rng = jax.random.split(rng, 3)
    x = batch["low"]
    # Released `weights_init`: conv kernels N(0, 0.02); biases 0 here (see the module docstring).
    params = init_lib.random_variables(self.dce, dce_rng, x, kernel_std=self.config.model.init_std)["params"]
    frozen = {}
    if self.use_vgg:
      frozen["vgg"] = init_lib.random_variables(self.vgg, vgg_rng, x)
    if self.use_seg:
      frozen["deeplab"] = init_lib.random_variables(self.deeplab, seg_rng, x)
    return base.Variables(params={"enhancer": params}, model_state={}, frozen=frozen)

  def forward(self, enhancer_params: PyTree, low: jax.Array) -> dict[str, jax.Array]:
    """DCE-Net: {'enhanced', 'curves' (24 channels), 'enhanced_4'}."""
    return self.dce.apply({"params": enhancer_params}, low)

  def segment(self, frozen: PyTree, images: jax.Array) -> jax.Array:
    """Frozen DeepLabV3+ logits (N, H, W, classes) of [0, 1] images."""
    return self.deeplab.apply(frozen["deeplab"], images)["logits"]

  def loss_terms(self, enhancer_params: PyTree, frozen: PyTree,
                 batch: base.Batch) -> dict[str, jax.Array]:
    """Per-example, unweighted loss terms (each (B,)) of the terms with a non-zero weight."""
    lc, w = self.config.loss, self.config.loss_weights
    low = batch["low"]
    b = low.shape[0]
    out = self.forward(enhancer_params, low)
    enhanced, curves = out["enhanced"], out["curves"]
    terms = {}
    if w.get("tv", 0.0):
      terms["tv"] = zr.tv_loss(curves)
    if w.get("color", 0.0):
      terms["color"] = zr.color_constancy_loss(enhanced, paper_form=lc.color_paper_form)
    if w.get("contrast_appearance", 0.0):
      terms["contrast_appearance"] = contrastive.appearance_triplet_loss(
          enhanced, batch["pos"], batch["neg"], margin=lc.appearance_margin, combine=lc.combine)
    if self.use_vgg:
      vgg_vars = frozen["vgg"]
      # The frozen towers are differentiated through: remat (config.remat) recomputes their activations.
      f_enh = self.policy.remat_fn(self.vgg.apply)(vgg_vars, enhanced)
      if self.use_retention:
        f_low = jax.lax.stop_gradient(self.vgg.apply(vgg_vars, low))
        terms["feature_retention"] = contrastive.feature_retention_loss(
            f_low[contrastive.RETENTION_LAYER], f_enh[contrastive.RETENTION_LAYER])
      if self.use_gram:
        pos, neg = batch["pos"], batch["neg"]
        k, n = pos.shape[1], neg.shape[1]
        pool = jnp.concatenate([pos, neg], axis=1)
        f_pool = jax.lax.stop_gradient(
            self.vgg_gram.apply(vgg_vars, pool.reshape((-1,) + pool.shape[2:])))
        grams_h, grams_p, grams_n = [], [], []
        for layer in contrastive.GRAM_LAYERS:
          grams_h.append(contrastive.gram_matrix(f_enh[layer]))
          g = contrastive.gram_matrix(f_pool[layer]).reshape((b, k + n) + grams_h[-1].shape[1:])
          grams_p.append(g[:, :k])
          grams_n.append(g[:, k:])
        terms["contrast_gram"] = contrastive.gram_triplet_loss(grams_h, grams_p, grams_n,
                                                               margin=lc.gram_margin,
                                                               combine=lc.combine)
    labels = batch.get("labels")
    if w.get("semantic_brightness", 0.0):
      if lc.released_semantic_brightness:
        terms["semantic_brightness"] = jnp.full(
            (b,), scl_semantic.released_semantic_brightness(enhanced, labels))
      else:
        terms["semantic_brightness"] = scl_semantic.semantic_brightness_consistency(
            enhanced, labels, num_classes=self.config.segmentation.num_classes,
            ignore_index=lc.ignore_index)
    if self.use_seg:
      seg_in = enhanced if self.config.segmentation.gradient else jax.lax.stop_gradient(enhanced)
      terms["segmentation"] = scl_semantic.segmentation_cross_entropy(
          self.policy.remat_fn(self.segment)(frozen, seg_in), labels, ignore_index=lc.ignore_index)
    return terms

  def loss(self, group, params, model_state, frozen, batch, rng):
    del group, rng
    terms = self.loss_terms(params["enhancer"], frozen, batch)
    weights = self.config.loss_weights
    total = sum(weights[k] * jnp.mean(v) for k, v in terms.items())
    metrics = {f"loss_{k}": jnp.mean(v) for k, v in terms.items()}
    return total, (metrics, model_state)

  def enhance(self, params, model_state, frozen, images):
    del model_state, frozen
    out = self.forward(params["enhancer"], images)
    return {"enhanced": jnp.clip(out["enhanced"], 0.0, 1.0), "curves": out["curves"]}

  def weight_sources(self) -> list[base.WeightSource]:
    """`init_from` (released SCL-LLE / Zero-DCE weights), `segmentation.weights`, `vgg.weights`."""
    cfg = self.config
    sources = []
    if cfg.init_from:
      sources.append(base.WeightSource(
          target=("params", "enhancer"), files=(cfg.init_from,), converter=f"{cfg.init_from_method}-released-v1",
          convert=lambda abstract: _released(cfg.init_from_method, cfg.init_from, {"params": abstract})["params"]))
    if self.use_vgg and cfg.vgg.weights:
      sources.append(base.WeightSource(target=("frozen", "vgg"), files=(cfg.vgg.weights,),
                                       converter="torchvision-vgg16-v1",
                                       convert=lambda abstract: _vgg(cfg.vgg.weights, abstract)))
    if self.use_seg and cfg.segmentation.weights:
      from lowlight_jax.convert import deeplab  # Conversion code is only needed when files are given.
      sources.append(base.WeightSource(
          target=("frozen", "deeplab"), files=(cfg.segmentation.weights,), converter="vainf-deeplabv3plus-v1",
          convert=lambda abstract: deeplab.load_deeplabv3plus(cfg.segmentation.weights, abstract)))
    return sources


def _released(method: str, path: str, abstract: PyTree) -> PyTree:
  from lowlight_jax.convert import layout
  from lowlight_jax.inference import released
  return layout.assign(abstract, released.load_released(method, path))


def _vgg(path: str, abstract: PyTree) -> PyTree:
  """The convs of a torchvision VGG16 that the frozen VGG has (it stops at relu4_3 or relu2_2; all must be there)."""
  from lowlight_jax.convert import layout
  from lowlight_jax.inference import released
  loaded = released.load_released("vgg16", path)
  kept = {"params": {"features": {k: v for k, v in loaded["params"]["features"].items()
                                  if k in abstract["params"]["features"]}}}
  return layout.assign(abstract, kept)
