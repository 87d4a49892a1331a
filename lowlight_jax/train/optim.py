"""Optimizers from config, one per trained parameter group."""

from __future__ import annotations

import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Learning-rate schedule: 'constant', 'cosine', 'warmup_cosine' or 'step' (lr times `factor` at each of
  `boundaries`, PyTorch's MultiStepLR / StepLR)."""
  kind = cfg.get("schedule", "constant")
  if kind == "constant":
    return optax.constant_schedule(cfg.lr)
  if kind == "cosine":
    return optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
  if kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.get("warmup_steps", 0), max(total_steps, 1))
  if kind == "step":
    factor = cfg.get("factor", 0.5)
    return optax.piecewise_constant_schedule(cfg.lr, {int(b): factor for b in cfg.get("boundaries", ())})
  raise ValueError(f"optim.schedule: unknown schedule {kind!r} (constant, cosine, warmup_cosine, step)")


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """Builds one group's optimizer.

  Fields: optimizer ('adam' | 'adamw' | 'sgd'), lr, schedule, weight_decay, decoupled (bool: AdamW-style decay
  vs. PyTorch's coupled L2 added to the gradient before Adam), clip_norm (0 = off), b1, b2, eps.

  The order matches PyTorch's `clip_grad_norm_` followed by `optimizer.step()`: clip the raw gradient, then add
  the coupled L2 term, then Adam.
  """
  lr = make_schedule(cfg, total_steps)
  parts = []
  if cfg.get("clip_norm", 0.0):
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  wd = cfg.get("weight_decay", 0.0)
  decoupled = cfg.get("decoupled", False)
  if wd and not decoupled:
    parts.append(optax.add_decayed_weights(wd))
  name = cfg.get("optimizer", "adam")
  b1, b2, eps = cfg.get("b1", 0.9), cfg.get("b2", 0.999), cfg.get("eps", 1e-8)
  if name in ("adam", "adamw"):
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  elif name == "sgd":
    if cfg.get("momentum", 0.0):
      parts.append(optax.trace(decay=cfg.momentum))
  else:
    raise ValueError(f"optim.optimizer: unknown optimizer {name!r} (adam, adamw, sgd)")
  if wd and decoupled:
    parts.append(optax.add_decayed_weights(wd))
  parts.append(optax.scale_by_learning_rate(lr))
  return optax.chain(*parts)
