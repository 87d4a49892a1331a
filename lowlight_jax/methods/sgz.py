"""SGZ: Semantic-Guided Zero-Shot low-light enhancement (Zheng & Gupta, WACV 2022).

Reference code: ShenZheng2000/Semantic-Guided-Low-Light-Image-Enhancement (commit 94dedc5), `lowlight_train.py`,
`modeling/model.py`, `Myloss.py`, `modeling/fpn.py`.

One trained group, `enhancer` (the EFE, 10,561 parameters). One frozen network, the USS (ResNet-50 + FPN), used
only by the semantic focal loss. Training runs the EFE at `model.train_scale_factor` (1, as released); inference
uses `inference.scale_factor` (12 in the authors' test script) and always keeps the input size.

Loss (released weights): 1600*TV(x_r) + spa + 5*color + 10*exposure + 0.1*semantic.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lowlight_jax.losses import semantic as semantic_losses
from lowlight_jax.losses import zero_reference as zr
from lowlight_jax.methods import base
from lowlight_jax.models import sgz as sgz_model

PyTree = Any


class Method(base.BaseMethod):
  """SGZ on the generic trainer."""

  groups = ("enhancer",)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m = config.model
    self.efe = sgz_model.EnhancementFactorExtractor(features=m.channels)
    self.use_uss = bool(config.loss_weights.semantic) and config.uss.enabled
    if self.use_uss:
      from lowlight_jax.models import fpn as fpn_lib
      self._uss_logits = fpn_lib.uss_logits
      self.uss = fpn_lib.USS(num_classes=config.uss.num_classes, stage_sizes=tuple(config.uss.depths),
                             bn_use_batch_stats=config.uss.bn_use_batch_stats,
                             dtype=self.policy.compute_dtype)

  def example_batch(self) -> dict[str, jax.Array]:
    size = self.config.data.crop or self.config.data.resize or 64
    return {"low": jnp.zeros((1, size, size, 3), jnp.float32)}

  def init(self, rng: jax.Array, batch: base.Batch) -> base.Variables:
    efe_rng, uss_rng = jax.random.split(rng)
    x = batch["low"]
    frozen = {}
    if self.use_uss:
      frozen["uss"] = self.uss.init(uss_rng, x)
    return base.Variables(params={"enhancer": self.efe.init(efe_rng, x)["params"]}, model_state={},
                          frozen=frozen)

  def _forward(self, efe_params: PyTree, x: jax.Array, scale_factor: int, crop_to_multiple: bool
               ) -> dict[str, jax.Array]:
    dtype = self.policy.compute_dtype
    # Mixed precision: the EFE runs in `compute_dtype`; the factor map, the curve and the losses in float32.
    apply = lambda p, y: self.efe.apply({"params": p}, y.astype(dtype)).astype(jnp.float32)
    return sgz_model.sgz_forward(apply, efe_params, x, scale_factor=scale_factor,
                                 crop_to_multiple=crop_to_multiple, iterations=self.config.model.iterations)

  def loss_terms(self, efe_params: PyTree, frozen: PyTree, low: jax.Array) -> dict[str, jax.Array]:
    """Per-example, unweighted loss terms (each of shape (B,))."""
    lc = self.config.loss
    out = self._forward(efe_params, low, self.config.model.train_scale_factor, crop_to_multiple=False)
    enhanced, factor = out["enhanced"], out["factor"]
    terms = {
        "tv": zr.tv_loss(factor),
        "spa": zr.spatial_consistency_loss(enhanced, low, patch=lc.spa_patch, diagonal=lc.spa_diagonal),
        "color": zr.color_constancy_loss(enhanced, paper_form=lc.color_paper_form),
        "exposure": zr.exposure_loss(enhanced, patch=lc.exposure_patch, level=lc.exposure_level,
                                     squared=lc.exposure_squared),
    }
    if self.use_uss:
      # The USS is frozen (its params are an argument, not trained) but gradients flow through it to the
      # enhanced image: that is how the semantic loss guides the EFE.
      uss_logits = self.policy.remat_fn(lambda v, y: self._uss_logits(self.uss, v, y))
      logits = uss_logits(frozen["uss"], enhanced).astype(jnp.float32)
      terms["semantic"] = semantic_losses.focal_loss(logits, gamma=lc.focal_gamma, beta=lc.focal_beta)
    return terms

  def loss(self, group, params, model_state, frozen, batch, rng):
    del group, rng
    terms = self.loss_terms(params["enhancer"], frozen, batch["low"])
    weights = self.config.loss_weights
    total = sum(weights[k] * jnp.mean(v) for k, v in terms.items())
    metrics = {f"loss_{k}": jnp.mean(v) for k, v in terms.items()}
    return total, (metrics, model_state)

  def enhance(self, params, model_state, frozen, images):
    del model_state, frozen
    out = self._forward(params["enhancer"], images, self.config.inference.scale_factor, crop_to_multiple=False)
    return {"enhanced": jnp.clip(out["enhanced"], 0.0, 1.0), "factor": out["factor"]}

  def eval_images(self, outputs):
    # The learned enhancement factors lie in [-1, 1]; show them mapped to [0, 1].
    return {"factor": (outputs["factor"] + 1.0) / 2.0}

  def weight_sources(self) -> list[base.WeightSource]:
    """`init_from` (released SGZ weights or a converted file) and the USS weight files, when configured."""
    cfg = self.config
    sources = []
    if cfg.init_from:
      sources.append(base.WeightSource(target=("params", "enhancer"), files=(cfg.init_from,),
                                       convert=lambda abstract: _released_enhancer(cfg.init_from, abstract),
                                       converter="sgz-released-v1"))
    if self.use_uss and cfg.uss.backbone_weights:
      sources.append(base.WeightSource(target=("frozen", "uss"), files=(cfg.uss.backbone_weights,),
                                       convert=lambda abstract: _uss_part(abstract, "resnet",
                                                                          cfg.uss.backbone_weights),
                                       converter="torchvision-resnet50-v1"))
    if self.use_uss and cfg.uss.head_weights:
      sources.append(base.WeightSource(target=("frozen", "uss"), files=(cfg.uss.head_weights,),
                                       convert=lambda abstract: _uss_part(abstract, "fpn", cfg.uss.head_weights),
                                       converter="sgz-fpn-v1"))
    return sources


def _released_enhancer(path: str, abstract: PyTree) -> PyTree:
  from lowlight_jax.convert import layout  # Conversion code is only needed when files are given.
  from lowlight_jax.inference import released
  return layout.assign({"params": abstract}, released.load_released("sgz", path))["params"]


def _uss_part(abstract: PyTree, name: str, path: str) -> PyTree:
  """Converted `name` ('resnet': a torchvision ResNet-50; 'fpn': SGZ's head) under the USS variables, checked."""
  from lowlight_jax.convert import io as convert_io
  from lowlight_jax.convert import layout
  state = convert_io.load_state_dict(path)
  if name == "resnet":
    from lowlight_jax.convert import torchvision_resnet
    sub = torchvision_resnet.convert_resnet50(state)
  else:
    sub = layout.torch_to_flax(state)
  target = {col: tree[name] for col, tree in abstract.items() if name in tree}
  checked = layout.assign(target, sub)
  return {col: {name: tree} for col, tree in checked.items()}
