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
                             dtype=jnp.dtype(config.get("compute_dtype", "float32")))

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
    dtype = jnp.dtype(self.config.get("compute_dtype", "float32"))
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
      logits = self._uss_logits(self.uss, frozen["uss"], enhanced).astype(jnp.float32)
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

  def load_pretrained(self, variables: base.Variables) -> base.Variables:
    """`init_from` (released SGZ weights or a converted file) and the USS weight files, when configured."""
    from lowlight_jax.convert import io as convert_io  # Conversion code is only needed when files are given.
    from lowlight_jax.convert import layout

    cfg = self.config
    changed = False
    params = dict(variables["params"])
    frozen = dict(variables["frozen"])
    if cfg.get("init_from"):
      from lowlight_jax.inference import released
      loaded = released.load_released("sgz", cfg.init_from)
      params["enhancer"] = layout.assign({"params": params["enhancer"]}, loaded)["params"]
      changed = True
    if self.use_uss and (cfg.uss.get("backbone_weights") or cfg.uss.get("head_weights")):
      uss = jax.device_get(frozen["uss"])
      if cfg.uss.get("backbone_weights"):
        from lowlight_jax.convert import torchvision_resnet
        backbone = torchvision_resnet.convert_resnet50(convert_io.load_state_dict(cfg.uss.backbone_weights))
        uss = _replace_subtree(uss, "resnet", backbone)
      if cfg.uss.get("head_weights"):
        head = layout.torch_to_flax(convert_io.load_state_dict(cfg.uss.head_weights))
        uss = _replace_subtree(uss, "fpn", head)
      frozen["uss"] = uss
      changed = True
    if not changed:
      return variables
    return base.Variables(params=params, model_state=variables["model_state"], frozen=frozen)


def _replace_subtree(variables: PyTree, name: str, sub: PyTree) -> PyTree:
  """Puts converted `sub` ({'params':..., 'batch_stats':...}) under submodule `name`, checking shapes."""
  from lowlight_jax.convert import layout
  target = {col: tree[name] for col, tree in variables.items() if name in tree}
  checked = layout.assign(target, sub)
  out = {col: dict(tree) for col, tree in variables.items()}
  for col, tree in checked.items():
    out[col][name] = tree
  return out
