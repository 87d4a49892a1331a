"""SKF ablation (paper Table 3): the SE blocks, the SCH loss and the SA loss each on or off, from the plain
baseline (all off) to the full framework (all on); 8 variants.

  python -m launch.sweep --config skf_drbn --sweep skf_ablation --workdir-root runs/skf_ablation
  python -m launch.sweep --config skf_drbn:demo --sweep skf_ablation --workdir-root runs/skf_ablation_demo
  # SNR-SKF's released training has no SA term: the SE x SCH half (4 variants).
  python -m launch.sweep --config skf_snr --sweep skf_ablation:no_sa --workdir-root runs/skf_snr_ablation

A part is switched off by `model.skf=False` (SE blocks), `loss_weights.sch=0` (SCH) or `loss_weights.adversarial=0`
(SA); a part left on keeps the base config's value. The paper's Table 3 reports, averaged over KinD++, DRBN and
HWMNet, +0.84 dB for SE, +0.24 dB for SCH and +1.74 dB for both over the baseline on LOL; SA trades a little PSNR
for NIQE.
"""

from lowlight_jax.train import sweeps

#: part -> the override that switches it off.
OFF = {"se": {"model.skf": False}, "sch": {"loss_weights.sch": 0.0}, "sa": {"loss_weights.adversarial": 0.0}}


def get_sweep(arg=None):
  parts = ("se", "sch") if arg == "no_sa" else ("se", "sch", "sa")
  if arg not in (None, "", "no_sa"):
    raise ValueError(f"skf_ablation: unknown arg {arg!r}; expected nothing or 'no_sa'")
  # Each part: [off, on]; the product runs from the baseline (all off) to the full framework (all on).
  return sweeps.product(*[[OFF[p], {}] for p in parts])
