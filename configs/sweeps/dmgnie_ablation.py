"""DMGNIE ablations (seed `000_f6de8f8b0015d52c`, "Ablation Study", Figs. 6-7), on the stage-2 config.

  python -m launch.sweep --config configs/dmgnie.py:enhance --sweep dmgnie_ablation --workdir-root runs/dmgnie_abl \
      --config.backgrounds.store=/data/backgrounds
  # CPU-sized, on the synthetic videos (median backgrounds):
  python -m launch.sweep --config configs/dmgnie.py:enhance,demo --sweep dmgnie_ablation --workdir-root /tmp/abl
  # Only the parts (or only the scales): --sweep dmgnie_ablation:parts  /  --sweep dmgnie_ablation:scales
  # then score every variant on the same night frames:
  python -m launch.evaluate --workdir full=/tmp/abl/000_base --workdir no_prior=/tmp/abl/001_... --data night_videos \
      --metrics lpips,niqe,brisque --out /tmp/abl/report.json

Variants (the base config's values for everything not named):
  base (the full model);
  w/o scene prior (Fig. 6c): G sees the night image alone (`model.background_prior=False`); the localiser still
    compares Y' with the camera's background (it is part of FLGCL, not of G's input);
  w/o FLGCL (Fig. 6b): neither the contrastive term nor the FG-map term (`loss.nce=0`, `loss.fgmap=0`), so the
    localiser's projectors are not trained: a background-guided CycleGAN;
  w/o FG map: FLGCL's multi-scale InfoNCE with uniformly sampled anchors and negatives (`flgcl.anchors='uniform'`,
    `loss.fgmap=0`): CUT's PatchNCE over the same layers;
  S1..S4 (Fig. 7; S5 = base): contrastive learning at the first k of the base's `model.nce_layers`
    (`flgcl.num_scales=k`), shallowest (largest) first, as the paper's (256), (256, 128), ... .
"""

#: The parts the paper ablates, each as the overrides that remove it.
PARTS = {
    "no_prior": {"model.background_prior": False},
    "no_flgcl": {"loss.nce": 0.0, "loss.fgmap": 0.0},
    "no_fgmap": {"flgcl.anchors": "uniform", "loss.fgmap": 0.0},
}
SCALES = (1, 2, 3, 4)


def get_sweep(arg=None):
  if arg not in (None, "", "parts", "scales"):
    raise ValueError(f"dmgnie_ablation: unknown arg {arg!r}; expected nothing, 'parts' or 'scales'")
  parts = [dict(v) for v in PARTS.values()]
  scales = [{"flgcl.num_scales": k} for k in SCALES]
  if arg == "parts":
    return [{}] + parts
  if arg == "scales":
    return [{}] + scales
  return [{}] + parts + scales
