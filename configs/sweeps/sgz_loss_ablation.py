"""SGZ loss ablation (paper Table 2): the full loss, then without each term in turn.

  python -m launch.sweep --config configs/sgz.py --sweep configs/sweeps/sgz_loss_ablation.py --workdir-root runs/abl
"""

TERMS = ("tv", "spa", "color", "exposure", "semantic")


def get_sweep(arg=None):
  del arg
  return [{}] + [{f"loss_weights.{term}": 0.0} for term in TERMS]
