"""The papers' own result tables, stored once and cited, as presets of `python -m launch.compare --preset NAME`.

Each `Preset` holds one table of one seed paper (`../shared/seeds/`): its columns in the paper's order (dataset x
metric), its rows with every value exactly as printed (strings: '20.60' keeps its trailing zero; None where the paper
prints '-'), which row is the paper's own method, the datasets the table needs (where each would come from, and
whether it is here), and the scoring protocol as far as the paper states it. A column's `scale` turns our value
into the paper's unit (DMGNIE prints LPIPS x100).

  sgz_table1      SGZ, Table 6: LOL and DarkCityScape, PSNR / SSIM / MSE (the name is the issue's; the paper's
                  Table 1 lists its data sets, its Table 6 is this one)
  scl_lle_niqe    SCL-LLE, Table 1: NIQE / UNIQUE on DICM, LIME, MEF, VV, NPE and their average
  skf_lol         SKF, Table 1: LOL and LOL-v2, PSNR / SSIM / LPIPS / NIQE, the baselines and their -SKF versions
  scuf_lsrw       SCUF (GEFU), Table 4: LSRW and LOL(-v2 real), PSNR / SSIM / LPIPS
  dmgnie_traffic  DMGNIE, Table 2: LQ-TLL-QD, LQ-TLL-SZ, LQ-TELL, BRISQUE / NIQE / FID / LPIPS x100 (private data)

`plan` says which datasets a preset can run on (the conformance sets here, or `--data KEY=PATH`) and which are
missing; `table` puts our entries' rows beside the paper's (the JSON `preset` block of compare.json); `to_markdown`
and `to_html` render it. This module reads no image data and imports nothing heavy (no jax): the tests of the
tables are pure and fast.
"""

from __future__ import annotations

import dataclasses
import html
import os
from typing import Any, Container, Sequence

from lowlight_jax import errors
from lowlight_jax.io import imageio

#: Our metrics (`lowlight_jax.metrics.evaluate.METRICS`, kept in sync by a test) and the per-entry parameter count.
COMPUTED = ("psnr", "ssim", "lpips", "lpips_vgg", "niqe", "brisque", "fid", "params_m")
MISSING_CELL = "—"  # the dataset is not here and was not given with --data
NOT_COMPUTED_CELL = "n/a"  # a metric this project does not compute (MSE, UNIQUE)


@dataclasses.dataclass(frozen=True)
class Citation:
  title: str
  title_source: str  # where the title is printed
  venue: str | None  # None where no seed text states it
  venue_source: str
  table: str  # the table's number as the paper prints it
  caption: str | None  # as printed; None where the seed text has no caption
  seed: str  # file name in ../shared/seeds/


@dataclasses.dataclass(frozen=True)
class Dataset:
  key: str  # the --data KEY and our set's name
  name: str  # as the paper's table prints it
  description: str  # what it is and the folder layout --data expects
  needs_reference: bool  # paired: PATH/low + PATH/high with the same file names; else a folder of images
  here: str | None = None  # a `compare.resolve_set` spec when this machine has (part of) it
  crop_border: int = 0
  channel: str = "rgb"  # PSNR / SSIM channel

  @property
  def layout(self) -> str:
    return ("a folder with low/ and high/ holding the same file names" if self.needs_reference
            else "a folder of images")


@dataclasses.dataclass(frozen=True)
class Column:
  dataset: str | None  # a Dataset key, 'average' (see `over`), or None for a per-method column (Param(M))
  metric: str  # ours when in COMPUTED, else a column we cannot fill ('mse', 'unique')
  printed: str  # the metric's header as printed
  scale: float = 1.0  # our value * scale = the paper's unit
  over: tuple[str, ...] = ()  # an average column: the datasets it averages, weighted by their images

  @property
  def id(self) -> str:
    return f"{self.dataset}/{self.metric}" if self.dataset else self.metric

  @property
  def computed(self) -> bool:
    return self.metric in COMPUTED


@dataclasses.dataclass(frozen=True)
class PaperRow:
  name: str  # as printed (markup such as superscripts flattened)
  cells: tuple[str | None, ...]  # one per column, as printed; None where the paper prints '-'
  group: str | None = None  # the heading the paper prints above the row, if any


@dataclasses.dataclass(frozen=True)
class Preset:
  name: str
  citation: Citation
  datasets: tuple[Dataset, ...]
  columns: tuple[Column, ...]
  rows: tuple[PaperRow, ...]
  ours_row: str  # the row of the paper's own method
  note: str  # protocol and layout facts the paper leaves out, and what was decided

  def dataset(self, key: str) -> Dataset:
    return next(d for d in self.datasets if d.key == key)


def _rows(*items: tuple[str, str] | tuple[str, str, str]) -> tuple[PaperRow, ...]:
  """(name, 'v1 v2 ...'[, group]) as printed -> PaperRows; '-' is the paper's 'not available'."""
  return tuple(PaperRow(item[0], tuple(None if v == "-" else v for v in item[1].split()),
                        item[2] if len(item) > 2 else None) for item in items)


def _columns(datasets: Sequence[str], metrics: Sequence[tuple]) -> tuple[Column, ...]:
  """Dataset-major columns: every (metric, printed[, scale]) under each dataset, in the paper's order."""
  return tuple(Column(d, *m) for d in datasets for m in metrics)


_SILENT = ("The paper does not state its scoring protocol (data range, PSNR / SSIM channel, crop border); the "
           "preset uses the project default: 8-bit images (data range 255), RGB, no crop.")

SGZ_TABLE1 = Preset(
    name="sgz_table1",
    citation=Citation(
        title="Semantic-guided zero-shot learning for low-light image/video enhancement",
        title_source="SKF's reference [58] (seed 004): the SGZ seed text starts at its abstract, without a title",
        venue="WACV 2022, pages 581-590 (Shen Zheng and Gaurav Gupta)", venue_source="SKF's reference [58]",
        table="Table 6", caption="PSNR/ ↑ / SSIM ↑ / MSE ↓ Comparison on LOL and DarkCityScape (DCS)",
        seed="001_9bd1d70ca2ab2767.txt"),
    datasets=(
        Dataset("lol", "LOL", "LOL test pairs (the paper's Table 1: LOL, 15 real images)", True),
        Dataset("darkcityscape", "DCS", "DarkCityScape, SGZ's synthetic dark Cityscapes pairs (the paper's "
                "Table 1: 150 images)", True),
    ),
    columns=_columns(("lol", "darkcityscape"), (("psnr", "PSNR"), ("ssim", "SSIM"), ("mse", "MSE"))),
    rows=_rows(("Dark", "13.20 0.48 0.106 16.22 0.77 0.026"),
               ("PIE[8]", "20.18 0.77 0.025 17.49 0.83 0.020"),
               ("Retinex[46]", "17.59 0.54 0.044 10.54 0.65 0.091"),
               ("MBLLEN[33]", "21.21 0.84 0.016 22.52 0.88 0.007"),
               ("KinD[50]", "19.29 0.76 0.040 12.28 0.73 0.062"),
               ("Zero-DCE[11]", "20.38 0.78 0.023 22.59 0.94 0.006"),
               ("Ours", "20.60 0.79 0.023 25.97 0.97 0.004")),
    ours_row="Ours",
    note=("The paper prints this table transposed (one column per method, one row per dataset, each cell "
          "PSNR/SSIM/MSE); here one row per method in the paper's method order. MSE is not a metric of this "
          "project (n/a), and the paper does not state its scale. " + _SILENT + " The authors' test.py crops "
          "inputs to multiples of 12 (compare --authors_crop does the same for a released sgz entry)."),
)

_SCL_SETS = ("dicm", "lime", "mef", "vv", "npe")
SCL_LLE_NIQE = Preset(
    name="scl_lle_niqe",
    citation=Citation(
        title="Semantically Contrastive Learning for Low-Light Image Enhancement",
        title_source="the seed text's first line",
        venue="AAAI 2022, pages 1555-1563", venue_source="SKF's reference [26] (seed 004)",
        table="Table 1", caption="NIQE ↓ and UNIQUE (UN.) ↑ scores on DICM, LIME, MEF, VV, and NPE datasets.",
        seed="002_43e6c74692cef2ec.txt"),
    datasets=(
        Dataset("dicm", "DICM", "DICM low-light images, no references (the Average weights it as 64 images; "
                "here: the conformance subset)", False, here="dicm"),
        Dataset("lime", "LIME", "LIME low-light images, no references (weighted as 10 images; here: the "
                "conformance subset)", False, here="lime"),
        Dataset("mef", "MEF", "MEF low-light images, no references (weighted as 17 images)", False),
        Dataset("vv", "VV", "VV low-light images, no references (weighted as 24 images)", False),
        Dataset("npe", "NPE", "NPE low-light images, no references (weighted as 8 images; SKF's Table 2 uses an "
                "85-image NPE)", False),
    ),
    columns=(_columns(_SCL_SETS, (("niqe", "NIQE"), ("unique", "UN.")))
             + (Column("average", "niqe", "NIQE", over=_SCL_SETS), Column("average", "unique", "UN.",
                                                                          over=_SCL_SETS))),
    rows=_rows(("Input", "4.26 0.72 4.36 0.70 4.26 0.72 3.52 0.74 4.32 1.17 4.13 0.75"),
               ("(TIP'17) LIME", "3.75 0.78 3.85 0.53 3.65 0.65 2.54 0.44 4.44 0.93 3.55 0.69"),
               ("(BMVC'18) R.-Net", "4.47 0.75 4.60 0.52 4.41 0.97 2.70 0.36 4.60 0.81 4.13 0.69"),
               ("(ACMMM'20) ISSR", "4.14 0.59 4.17 0.83 4.22 0.87 3.57 0.62 4.02 0.99 4.03 0.68"),
               ("(CVPR'20) Z.-DCE", "3.56 0.82 3.77 0.73 3.28 1.22 3.21 0.48 3.93 1.07 3.50 0.81"),
               ("(TIP'21) E.GAN", "3.55 0.63 3.70 0.49 3.16 1.03 3.25 0.58 3.95 1.07 3.47 0.69"),
               ("(CVPR'21) RUAS", "5.21 -0.17 4.26 0.34 3.83 0.73 4.29 -0.04 5.53 0.13 4.78 0.04"),
               ("Ours", "3.51 0.87 3.78 0.76 3.31 1.25 3.16 0.49 3.88 1.08 3.46 0.85")),
    ours_row="Ours",
    note=("The paper does not give its image counts; its Average column is, in every row, the image-weighted "
          "mean over DICM 64, LIME 10, MEF 17, VV 24 and NPE 8 images (to the printed precision), so our Average "
          "is the image-weighted mean of our five sets, shown only when all five are scored. UNIQUE is not a "
          "metric of this project (n/a). NIQE: the official MATLAB protocol (rgb2gray of the 8-bit image); the "
          "paper does not say which implementation it used. DICM and LIME here are the conformance subsets, not "
          "the full sets: pass --data dicm=PATH / --data lime=PATH for those."),
)

SKF_LOL = Preset(
    name="skf_lol",
    citation=Citation(
        title="Learning Semantic-Aware Knowledge Guidance for Low-Light Image Enhancement",
        title_source="the seed text's first line",
        venue="CVPR 2023, pages 1662-1671", venue_source="SCUF's reference [55] (seed 003)",
        table="Table 1", caption=None, seed="004_0636802f34bd03da.txt"),
    datasets=(
        Dataset("lol", "LOL", "LOL test pairs (the paper: 15 pairs)", True),
        Dataset("lol_v2", "LOL-v2", "LOL-v2 real test pairs (the paper: 100 pairs)", True),
    ),
    columns=(_columns(("lol", "lol_v2"), (("psnr", "PSNR"), ("ssim", "SSIM"), ("lpips", "LPIPS"),
                                          ("niqe", "NIQE")))
             + (Column(None, "params_m", "Param(M)", scale=1e-6),)),
    rows=_rows(("LIME [13] TIP’16", "16.760 0.560 0.350 - 15.240 0.470 - - -"),
               ("Zero-DCE [11] CVPR’20", "14.861 0.562 0.335 7.767 18.059 0.580 0.313 8.058 0.33"),
               ("EnlightGAN [16] TIP’21", "17.483 0.652 0.322 4.684 18.640 0.677 0.309 5.089 8.64"),
               ("ISSR [8] MM’20", "18.846 0.788 0.243 5.249 16.994 0.798 0.206 5.179 12.12"),
               ("MIRNet [51] PAMI’22", "24.140 0.842 0.131 4.203 20.357 0.782 0.317 5.094 5.90"),
               ("RetinexNet [43] BMVC’18", "16.770 0.462 0.474 8.873 18.371 0.723 0.365 5.849 0.62"),
               ("RetinexNet-SKF(Ours)", "20.418 0.711 0.216 4.211 19.849 0.719 0.255 4.233 0.66"),
               ("KinD [54] MM’19", "20.870 0.799 0.207 5.189 17.544 0.669 0.375 6.849 8.03"),
               ("KinD-SKF(Ours)", "21.913 0.835 0.143 5.031 19.821 0.833 0.201 4.778 8.50"),
               ("DRBN [48] CVPR’20", "19.860 0.834 0.155 4.793 20.130 0.830 0.147 4.961 2.21"),
               ("DRBN-SKF(Ours)", "22.837 0.841 0.138 4.464 22.441 0.871 0.132 4.460 2.43"),
               ("KinD++ [53] IJCV’20", "18.970 0.804 0.175 4.760 19.087 0.817 0.180 5.086 9.63"),
               ("KinD++-SKF(Ours)", "20.363 0.805 0.201 4.142 19.779 0.837 0.178 4.179 10.21"),
               ("HWMNet [7] ICIP’22", "24.240 0.852 0.114 5.141 20.928 0.798 0.359 5.970 66.56"),
               ("HWMNet-SKF(Ours)", "25.086 0.860 0.108 4.346 22.490 0.836 0.175 4.683 69.98"),
               ("SNR-LLIE-Net [46] CVPR’22", "24.608 0.840 0.151 5.179 21.479 0.848 0.157 4.623 39.13"),
               ("SNR-LLIE-Net-SKF(Ours)", "25.031 0.855 0.113 4.722 21.927 0.842 0.160 3.963 39.44"),
               ("LLFlow-S [41] AAAI’22", "24.060 0.860 0.136 5.412 25.922 0.860 0.173 6.150 4.97"),
               ("LLFlow-S-SKF(Ours)", "25.942 0.865 0.125 5.606 28.107 0.884 0.133 5.415 5.26"),
               ("LLFlow-L [41] AAAI’22", "24.999 0.870 0.117 5.582 26.200 0.888 0.137 5.406 37.68"),
               ("LLFlow-L-SKF(Ours)", "26.798 0.879 0.105 5.589 28.451 0.905 0.112 5.725 39.91")),
    ours_row="DRBN-SKF(Ours)",
    note=("The seed text has the table without its caption; the paper's text calls it Table 1 ('Quantitative "
          "results on LOL and LOL-v2 datasets'). Every -SKF(Ours) row is the paper's framework around a "
          "baseline; the marked one is DRBN-SKF, whose released weights this project loads as skf_drbn "
          "(skf_snr: SNR-LLIE-Net-SKF). The paper prints each -SKF value with its gain over the baseline in "
          "brackets, left out here (the difference of two stored rows). '-' cells are the paper's. LPIPS: "
          "AlexNet (the project default; the paper does not say which network). " + _SILENT),
)

SCUF_LSRW = Preset(
    name="scuf_lsrw",
    citation=Citation(
        title=("From Enhancement to Understanding: Build a Generalized Bridge for Low-light Vision via "
               "Semantically Consistent Unsupervised Fine-tuning"),
        title_source="the seed text's first line", venue=None,
        venue_source="not stated in the seed texts", table="Table 4",
        caption=("Image visual quality comparison on LOL [63] and LSRW [13] datasets. We highlight the "
                 "top-ranking scores in red and the second in blue. * denotes our re-implementation with the same "
                 "training data we use."),
        seed="003_fb12209e5ca6a206.txt"),
    datasets=(
        Dataset("lsrw", "LSRW", "LSRW test pairs (R2RNet's real low/normal pairs; the paper does not say which "
                "split or how many)", True),
        Dataset("lol_v2", "LOL", "LOL-v2 real test pairs (the table prints 'LOL [63]'; the text says "
                "'LOLv2-real [63]', Yang et al. TIP 2021)", True),
    ),
    columns=_columns(("lsrw", "lol_v2"), (("psnr", "PSNR"), ("ssim", "SSIM"), ("lpips", "LPIPS"))),
    rows=_rows(("LIME TIP'16 [12]", "14.88 0.3487 0.4030 16.90 0.4917 0.4022"),
               ("DUAL CGF'19 [66]", "13.76 0.3532 0.4150 16.76 0.4911 0.4060"),
               ("RetinexNet BMCV'18 [54]", "15.59 0.4176 0.3998 17.68 0.6477 0.4433"),
               ("Retinexformer ICCV'23 [2]", "17.19 0.5093 0.3314 22.79 0.8397 0.1707"),
               ("CIDNet CVPR'25 [58]", "18.00 0.5198 0.2962 20.68 0.8411 0.1156"),
               ("EnlightenGan TIP'21 [20]", "17.59 0.4867 0.3117 18.68 0.6728 0.3013"),
               ("Zero-DCE CVPR'20 [11]", "15.86 0.4536 0.3176 18.06 0.5736 0.3125"),
               ("Zero-DCE++ TPAMI'21 [24]", "16.21 0.4571 0.3266 17.37 0.4373 0.3118"),
               ("RUAS CVPR'21 [30]", "14.33 0.4841 0.4800 15.33 0.4876 0.3097"),
               ("SCI CVPR'22 [35]", "15.24 0.4240 0.3218 17.30 0.5335 0.3079"),
               ("PairLIE CVPR'23 [8]", "17.60 0.5118 0.3290 19.88 0.7777 0.2341"),
               ("SADG AAAI'23 [69]", "16.32 0.4564 0.3471 16.93 0.5372 0.3513"),
               ("CLIP-LIT ICCV'23 [28]", "13.47 0.4089 0.3572 15.18 0.5290 0.3689"),
               ("NeRCo ICCV'23 [61]", "19.46 0.5506 0.3052 19.66 0.7172 0.2705"),
               ("QuadPrior CVPR'24 [53]", "16.90 0.5429 0.3459 20.30 0.7909 0.1858"),
               ("ZERO-IG-LSRW CVPR'24 [48]", "18.21 0.5665 0.4946 18.65 0.4819 0.3819"),
               ("ZERO-IG-LOL CVPR'24 [48]", "16.44 0.5033 0.3744 18.13 0.7455 0.2478"),
               ("LightenDiffusion ECCV'24 [19]", "18.42 0.5334 0.3209 22.79 0.8540 0.1666"),
               ("LightenDiffusion*", "16.92 0.5250 0.3824 18.27 0.7944 0.2457"),
               ("Ours", "18.41 0.5341 0.2974 21.32 0.8073 0.1928"),
               ("Ours-LSRW", "18.96 0.5438 0.2673 20.22 0.7649 0.2157")),
    ours_row="Ours",
    note=("'Ours' is trained on the EnlightenGAN data (Table 8), 'Ours-LSRW' on LSRW. The table's first column "
          "(method type T / S / U) is garbled in the seed text and left out; Table 8 of the supplement gives each "
          "method's type and training set. The 'LOL' columns are LOL-v2 real (the text), hence the data key "
          "lol_v2. LPIPS: AlexNet (the project default; the paper does not say which network). " + _SILENT),
)

_DMGNIE_SETS = ("lq_tll_qd", "lq_tll_sz", "lq_tell")
_DMGNIE_GROUPS = ("Unsupervised Learning Methods", "Unpaired Unsupervised Learning Methods",
                  "Supervised Learning Methods")
DMGNIE_TRAFFIC = Preset(
    name="dmgnie_traffic",
    citation=Citation(
        title="Daytime-Memory Guided Nighttime Image Enhancement (DMGNIE)",
        title_source="the framework's name in the seed's abstract: the seed text has no title line", venue=None,
        venue_source="not stated in the seed texts", table="Table 2",
        caption=("Comparison with baselines. We compare our methods across LQ-TLL-QD, LQ-TLL-SZ and LQ-TELL "
                 "datasets on common metrics like BRISQE, NIQE, FID and LPIPS. ↓ shows lower result is better. "
                 "The methods name with “*” means the results are finetuned on LQ-TLL datasets. The best result is "
                 "bolded, and the second best result is underlined"),
        seed="000_f6de8f8b0015d52c.txt"),
    datasets=tuple(Dataset(key, name, f"{name}, the {where} test scene of the authors' private traffic video "
                           f"(not public; {count} night test images); low/ night frames, high/ daytime images of "
                           "the same camera (the paper does not say how LPIPS pairs them)", True)
                   for key, name, where, count in (("lq_tll_qd", "LQ-TLL-QD", "Qingdao", "5,980"),
                                                   ("lq_tll_sz", "LQ-TLL-SZ", "Shenzhen", "2,971"),
                                                   ("lq_tell", "LQ-TELL", "extreme low-light", "2,351"))),
    columns=_columns(_DMGNIE_SETS, (("brisque", "BRISQUE↓"), ("niqe", "NIQE↓"), ("fid", "FID↓"),
                                    ("lpips", "LPIPS↓", 100.0))),
    rows=_rows(
        ("UDNet", "36.495 24.084 140.986 64.545 24.834 22.483 171.488 57.882 38.120 25.292 224.412 70.104",
         _DMGNIE_GROUPS[0]),
        ("SCI", "37.342 26.422 125.571 55.831 26.896 21.153 167.329 40.612 26.469 25.489 241.913 67.198",
         _DMGNIE_GROUPS[0]),
        ("LightenDiffusion", "35.258 25.132 127.872 56.637 20.967 25.745 162.934 41.692 40.605 26.399 305.927 "
         "69.123", _DMGNIE_GROUPS[0]),
        ("ZeroDCE", "34.603 25.489 133.391 55.037 21.141 21.826 187.717 43.281 34.910 26.308 235.222 67.863",
         _DMGNIE_GROUPS[0]),
        ("ZeroDCE++", "37.938 25.991 123.041 55.712 20.813 23.746 189.371 39.218 34.206 25.791 229.401 59.433",
         _DMGNIE_GROUPS[0]),
        ("SelfEnNet", "74.539 26.977 351.091 91.559 57.917 26.9492 451.399 83.301 48.870 26.974 347.014 66.914",
         _DMGNIE_GROUPS[1]),
        ("EnlightenGAN", "34.979 26.492 96.518 69.431 33.049 22.997 156.361 62.613 34.382 26.004 230.490 59.338",
         _DMGNIE_GROUPS[1]),
        ("Cycle Retinex", "68.282 26.866 347.735 89.518 35.915 23.471 310.931 61.802 22.232 26.676 445.280 "
         "74.264", _DMGNIE_GROUPS[1]),
        ("CycleGAN", "27.895 22.816 75.103 47.037 19.376 21.161 87.753 44.017 33.852 25.183 183.573 52.884",
         _DMGNIE_GROUPS[1]),
        ("CUT", "26.478 21.826 83.268 47.769 17.730 21.700 202.720 60.058 21.094 23.894 162.743 59.646",
         _DMGNIE_GROUPS[1]),
        ("ToDayGAN", "26.653 22.834 93.307 55.991 16.443 21.822 104.258 53.759 28.507 24.422 157.999 57.692",
         _DMGNIE_GROUPS[1]),
        ("HVI-CIDNet", "26.889 26.055 227.544 54.44 19.727 23.801 151.430 34.887 40.425 27.087 374.456 66.651",
         _DMGNIE_GROUPS[2]),
        ("HVI-CIDNet*", "33.002 25.148 108.119 53.769 23.796 21.785 161.952 42.062 30.158 25.088 163.282 57.013",
         _DMGNIE_GROUPS[2]),
        ("URetinexNet", "32.393 25.898 117.056 56.058 20.635 22.787 159.932 42.663 32.078 25.980 175.247 58.652",
         _DMGNIE_GROUPS[2]),
        ("URetinexNet*", "29.724 25.719 179.673 56.057 20.165 24.675 171.939 44.449 33.921 26.879 276.745 "
         "63.025", _DMGNIE_GROUPS[2]),
        ("Retinexformer", "33.677 25.285 114.712 54.743 27.423 21.339 198.843 47.694 30.871 25.922 159.928 "
         "57.619", _DMGNIE_GROUPS[2]),
        ("Retinexformer*", "33.082 26.362 108.891 57.966 24.476 25.374 222.079 49.447 30.579 26.139 167.506 "
         "61.642", _DMGNIE_GROUPS[2]),
        ("Ours", "31.422 22.473 43.181 42.961 20.487 22.321 92.991 31.441 26.823 23.612 55.505 45.244")),
    ours_row="Ours",
    note=("The data is the authors' private traffic video (never here). The paper prints LPIPS on a x100 scale "
          "(values 31-92; it does not say so): our LPIPS is multiplied by 100. Its NIQE values (about 21-27) lie "
          "far above the usual range of the MATLAB NIQE this project computes, and it does not say which "
          "implementation it used: compare with care. FID needs --fid_weights (InceptionV3), and our FID "
          "compares with the set's high/ images; the paper does not say what its FID compares with. " + _SILENT),
)

PRESETS = {p.name: p for p in (SGZ_TABLE1, SCL_LLE_NIQE, SKF_LOL, SCUF_LSRW, DMGNIE_TRAFFIC)}


def get(name: str) -> Preset:
  """The preset called `name`; a ConfigError naming --preset and the choices otherwise."""
  if name not in PRESETS:
    raise errors.ConfigError(f"--preset {name}: unknown; choose from {', '.join(PRESETS)}")
  return PRESETS[name]


def value(cell: str | None) -> float | None:
  return None if cell is None else float(cell)


def metrics(preset: Preset) -> list[str]:
  """Our metrics for the preset's sets, in column order; FID only comes with --fid_weights (compare adds it)."""
  return list(dict.fromkeys(c.metric for c in preset.columns
                            if c.dataset and c.computed and c.metric != "fid"))


def protocol(preset: Preset) -> dict[str, Any]:
  """{'crop_border', 'channel'} shared by the preset's datasets (one compare run scores them all)."""
  protocols = {(d.crop_border, d.channel) for d in preset.datasets}
  if len(protocols) != 1:
    raise errors.ConfigError(f"--preset {preset.name}: its datasets need different protocols {sorted(protocols)}")
  crop_border, channel = protocols.pop()
  return {"crop_border": crop_border, "channel": channel}


# -- which data the preset runs on ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
  preset: Preset
  chosen: tuple[tuple[Dataset, str | None], ...]  # (dataset, the --data PATH; None: the set here)
  missing: tuple[Dataset, ...]

  @property
  def keys(self) -> list[str]:
    return [d.key for d, _ in self.chosen]


def parse_data(preset: Preset, items: Sequence[str]) -> dict[str, str]:
  """`--data KEY=PATH` items -> {key: path}: one-line errors for a bad item, an unknown or repeated key, a path
  that does not exist, or a folder without the layout (and images) the dataset needs."""
  keys = ", ".join(d.key for d in preset.datasets)
  out: dict[str, str] = {}
  for item in items:
    key, eq, path = item.partition("=")
    if not eq or not key or not path:
      raise errors.ConfigError(f"--data {item}: give KEY=PATH with KEY one of {keys}")
    if key not in {d.key for d in preset.datasets}:
      raise errors.ConfigError(f"--data {item}: preset {preset.name} has no dataset {key!r}; choose from {keys}")
    if key in out:
      raise errors.ConfigError(f"--data {item}: {key} given twice")
    if not os.path.exists(path):
      raise errors.InputError(f"--data {item}: {path} does not exist")
    dataset = preset.dataset(key)
    layout_ok = (os.path.isdir(os.path.join(path, "low")) and os.path.isdir(os.path.join(path, "high"))
                 if dataset.needs_reference else os.path.isdir(path))
    if not layout_ok:
      raise errors.InputError(f"--data {item}: {path} is not {dataset.layout} ({dataset.description})")
    low = os.path.join(path, "low") if dataset.needs_reference else path
    if not imageio.list_images(low):
      raise errors.InputError(f"--data {item}: no images in {low}")
    out[key] = path
  return out


def plan(preset: Preset, data_items: Sequence[str], here: Container[str]) -> Plan:
  """The preset's datasets given with --data, else here (`here`: the `resolve_set` specs this machine has), else
  missing; in the paper's column order."""
  given = parse_data(preset, data_items)
  chosen, missing = [], []
  for d in preset.datasets:
    if d.key in given:
      chosen.append((d, given[d.key]))
    elif d.here is not None and d.here in here:
      chosen.append((d, None))
    else:
      missing.append(d)
  return Plan(preset, tuple(chosen), tuple(missing))


def _shown(v: Any) -> str:
  return (",".join(v) or "none") if isinstance(v, (list, tuple)) else str(v)


def check_flags(p: Plan, **explicit: Any) -> None:
  """Refuses an explicit --sets / --metrics / --crop_border / --channel (the flags the user gave) that contradicts
  the preset: the preset chooses the sets, the metrics and the protocol of the paper's table."""
  wanted = {"sets": sorted(p.keys), "metrics": sorted(metrics(p.preset)), **protocol(p.preset)}
  for flag, given in explicit.items():
    if (sorted(given) if isinstance(given, (list, tuple)) else given) != wanted[flag]:
      why = "give paper data with --data KEY=PATH" if flag == "sets" else f"leave --{flag} out"
      raise errors.ConfigError(f"--{flag} {_shown(given)}: preset {p.preset.name} uses {_shown(wanted[flag])} "
                               f"(the paper's table); {why}")


def missing_list(p: Plan) -> list[dict[str, str]]:
  return [{"key": d.key, "needs": f"{d.description}; {d.layout}", "how": f"--data {d.key}=PATH"}
          for d in p.missing]


def missing_lines(table_json: dict[str, Any]) -> list[str]:
  """The 'Missing paper data' lines of compare.md (and of the command's output)."""
  return [f"- {m['key']}: {m['needs']}. Pass `{m['how']}`." for m in table_json["missing"]]


# -- the table: the paper's rows and ours --------------------------------------------------------------------------

def _ours(column: Column, entry: str, result: dict[str, Any]) -> float | None:
  """One of our cells (in the paper's unit), or None: `entry`'s rows of the compare result."""
  if not column.computed:
    return None
  if column.metric == "params_m":
    info = result.get("entries", {}).get(entry)
    return info["params"]["total"] * column.scale if info and entry != "input" else None
  rows = {r["set"]: r for r in result["rows"] if r["name"] == entry}
  if column.over:  # image-weighted, only over all of its datasets
    parts = [(rows[d].get(column.metric), rows[d].get("images") or 0) for d in column.over if d in rows]
    if len(parts) != len(column.over) or any(v is None for v, _ in parts) or not sum(n for _, n in parts):
      return None
    return sum(v * n for v, n in parts) / sum(n for _, n in parts) * column.scale
  v = rows.get(column.dataset, {}).get(column.metric)
  return None if v is None else v * column.scale


def table(p: Plan, result: dict[str, Any], entries: Sequence[str], limit: int | None = None) -> dict[str, Any]:
  """The `preset` block of compare.json: the citation, the columns, the paper's rows then ours (the low-light
  input first when a set was scored, then each entry), the data used and the data missing."""
  preset = p.preset
  present = set(p.keys)
  rows = []
  for r in preset.rows:
    row = {"name": r.name, "source": "paper", "ours_row": r.name == preset.ours_row}
    if r.group:
      row["group"] = r.group
    row.update({c.id: value(cell) for c, cell in zip(preset.columns, r.cells)})
    rows.append(row)
  for entry in (["input"] if present else []) + list(entries):
    rows.append({"name": entry, "source": "ours", "entry": entry,
                 **{c.id: _ours(c, entry, result) for c in preset.columns}})
  images = {s["name"]: s["images"] for s in result.get("sets", [])}
  used = [{"key": d.key, "images": images.get(d.key),
           "source": f"--data {d.key}={path}" if path else f"here: the conformance subset (compare --sets {d.here})"}
          for d, path in p.chosen]
  columns = [{"id": c.id, "dataset": c.dataset, "metric": c.metric, "printed": c.printed, "scale": c.scale,
              "computed": c.computed, **({"over": list(c.over)} if c.over else {})} for c in preset.columns]
  return {"name": preset.name, "citation": dataclasses.asdict(preset.citation), "columns": columns, "rows": rows,
          "ours_row": preset.ours_row, "printed": {r.name: list(r.cells) for r in preset.rows},
          "datasets": {d.key: {"name": d.name, "description": d.description, "layout": d.layout,
                               "needs_reference": d.needs_reference, "here": d.here,
                               "protocol": {"data_range": 255, "crop_border": d.crop_border,
                                            "channel": d.channel}} for d in preset.datasets},
          "note": preset.note, "limit": limit, "used": used, "missing": missing_list(p)}


def _decimals(printed: Sequence[str | None]) -> int:
  return max((len(c.partition(".")[2]) for c in printed if c), default=3)


def _header(t: dict[str, Any]) -> list[str]:
  names = {d: v["name"] for d, v in t["datasets"].items()}
  return [f"{'Average' if c['dataset'] == 'average' else names.get(c['dataset'], '')} {c['printed']}".strip()
          for c in t["columns"]]


def _cells(t: dict[str, Any], row: dict[str, Any]) -> list[str]:
  """A row's cells as text: the paper's as printed; ours to the paper's precision, or a marker."""
  if row["source"] == "paper":
    return ["-" if v is None else v for v in t["printed"][row["name"]]]
  used = {u["key"] for u in t["used"]}
  out = []
  for i, c in enumerate(t["columns"]):
    v = row[c["id"]]
    needed = set(c.get("over", [])) if c["dataset"] == "average" else {c["dataset"]} - {None}
    if not c["computed"]:
      out.append(NOT_COMPUTED_CELL)
    elif v is not None:
      out.append(f"{v:.{_decimals([p[i] for p in t['printed'].values()])}f}")
    else:
      out.append("-" if needed <= used else MISSING_CELL)
  return out


def _source(t: dict[str, Any], row: dict[str, Any]) -> str:
  if row["source"] == "ours":
    return "ours: the low-light input" if row["entry"] == "input" else f"ours: {row['entry']}"
  return "paper: the method" if row["ours_row"] else "paper"


def _citation_line(t: dict[str, Any]) -> str:
  c = t["citation"]
  venue = c["venue"] or f"venue {c['venue_source']}"
  caption = c["caption"] or "(no caption in the seed text)"
  return f"{c['title']}. {venue}. {c['table']}: {caption} (seed {c['seed']})"


def _limit_line(t: dict[str, Any]) -> str | None:
  return f"At most {t['limit']} image(s) per set (--limit): not the paper's full sets." if t["limit"] else None


def _used_lines(t: dict[str, Any]) -> list[str]:
  return [f"{u['key']}: {u['source']}, {u['images']} image(s) scored" for u in t["used"]]


_LEGEND = (f"{MISSING_CELL}: the dataset is missing (below); {NOT_COMPUTED_CELL}: a metric this project does not "
           "compute; -: printed so by the paper, or no value.")


def to_markdown(t: dict[str, Any]) -> str:
  header = ["Method", "source", *_header(t)]
  lines = [f"## Paper table: {t['name']}", "", _citation_line(t), "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  group = None
  for row in t["rows"]:
    if row.get("group") and row["group"] != group:
      group = row["group"]
      lines.append(f"| *{group}* |" + " |" * (len(header) - 1))
    name = f"**{row['name']}**" if row.get("ours_row") else row["name"]
    lines.append("| " + " | ".join([name, _source(t, row), *_cells(t, row)]) + " |")
  lines += ["", _LEGEND, "", f"Note: {t['note']}", ""]
  if _limit_line(t):
    lines += [_limit_line(t), ""]
  if t["used"]:
    lines += ["Paper data used:", ""] + [f"- {line}" for line in _used_lines(t)] + [""]
  lines += ["Missing paper data:", ""] + (missing_lines(t) or ["- none"]) + [""]
  return "\n".join(lines)


def to_html(t: dict[str, Any]) -> str:
  esc = html.escape
  head = "".join(f"<th>{esc(h)}</th>" for h in ["Method", "source", *_header(t)])
  body = []
  for row in t["rows"]:
    cls = ' class="ours"' if row["source"] == "ours" else ' class="method"' if row.get("ours_row") else ""
    cells = [row["name"], _source(t, row), *_cells(t, row)]
    body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
  used = "".join(f"<li>{esc(line)}</li>" for line in _used_lines(t))
  missing = "".join(f"<li>{esc(m['key'])}: {esc(m['needs'])}. Pass <code>{esc(m['how'])}</code>.</li>"
                    for m in t["missing"]) or "<li>none</li>"
  limit = f"<p>{esc(_limit_line(t))}</p>" if _limit_line(t) else ""
  return (f"<h2>Paper table: {esc(t['name'])}</h2><p>{esc(_citation_line(t))}</p>"
          f'<table class="paper"><tr>{head}</tr>{"".join(body)}</table><p>{esc(_LEGEND)}</p>'
          f"<p>Note: {esc(t['note'])}</p>{limit}"
          + (f"<h3>Paper data used</h3><ul>{used}</ul>" if used else "")
          + f"<h3>Missing paper data</h3><ul>{missing}</ul>")
