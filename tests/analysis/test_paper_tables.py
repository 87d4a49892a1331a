"""The papers' tables (`paper_tables`): their shapes, every number against the seed paper's text and against
METHODS.md's "Paper numbers", the plan of which data a preset runs on, and our rows beside the paper's."""

import os
import pathlib
import re

import pytest

from lowlight_jax import errors
from lowlight_jax.analysis import paper_tables as pt

SHARED = pathlib.Path(os.environ.get("LOWLIGHT_SHARED", pathlib.Path(__file__).resolve().parents[2].parent / "shared"))
PRESETS = list(pt.PRESETS.values())


def _cell(preset: pt.Preset, row: str, column: str) -> str:
  r = next(r for r in preset.rows if r.name == row)
  return r.cells[[c.id for c in preset.columns].index(column)]


def test_the_five_presets():
  assert list(pt.PRESETS) == ["sgz_table1", "scl_lle_niqe", "skf_lol", "scuf_lsrw", "dmgnie_traffic"]
  with pytest.raises(errors.ConfigError, match=r"--preset nope: unknown; choose from sgz_table1, scl_lle_niqe"):
    pt.get("nope")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_table_shape(preset):
  keys = [d.key for d in preset.datasets]
  ids = [c.id for c in preset.columns]
  assert len(set(keys)) == len(keys) and len(set(ids)) == len(ids)
  for c in preset.columns:
    assert c.dataset in (*keys, "average", None), c
    assert set(c.over) <= set(keys) and bool(c.over) == (c.dataset == "average"), c
  names = [r.name for r in preset.rows]
  assert len(set(names)) == len(names) and preset.ours_row in names
  for r in preset.rows:
    assert len(r.cells) == len(preset.columns), r.name  # every row has every column
    assert all(c is None or re.fullmatch(r"-?\d+\.\d+", c) for c in r.cells), r.cells
  # The method's own row is complete, and every dataset has at least one column.
  assert None not in next(r for r in preset.rows if r.name == preset.ours_row).cells
  assert {c.dataset for c in preset.columns} >= set(keys)
  assert (SHARED / "seeds" / preset.citation.seed).is_file()
  assert pt.protocol(preset) == {"crop_border": 0, "channel": "rgb"}  # no paper states another


def test_our_metrics_are_the_projects():
  from lowlight_jax.metrics import evaluate  # pylint: disable=g-import-not-at-top
  assert set(pt.COMPUTED) - {"params_m"} == set(evaluate.METRICS)
  assert pt.metrics(pt.SKF_LOL) == ["psnr", "ssim", "lpips", "niqe"]
  assert pt.metrics(pt.SCL_LLE_NIQE) == ["niqe"]
  assert pt.metrics(pt.DMGNIE_TRAFFIC) == ["brisque", "niqe", "lpips"]  # FID with --fid_weights


def _numbers(line: str) -> list[str]:
  """A table line's cells: numbers and '-' (bracketed gains, names and references dropped)."""
  return [t for t in re.split(r"[\s|/]+", line) if re.fullmatch(r"-?\d+\.\d+|-", t)]


@pytest.mark.parametrize("preset", [p for p in PRESETS if p is not pt.SGZ_TABLE1], ids=lambda p: p.name)
def test_rows_are_the_seed_papers(preset):
  """Every row's cells, in order, on one line of the seed paper's text, and its name as printed."""
  text = (SHARED / "seeds" / preset.citation.seed).read_text()
  flat = re.sub(r" +", " ", re.sub(r"</?sup>", "", text))
  lines = [_numbers(line) for line in text.splitlines()]
  for r in preset.rows:
    cells = ["-" if c is None else c for c in r.cells]
    assert any(any(nums[i:i + len(cells)] == cells for i in range(len(nums))) for nums in lines), r.name
    assert r.name in flat, r.name


def test_sgz_rows_are_the_seed_papers():
  """SGZ prints Table 6 transposed: a LOL line and a DCS line of PSNR/SSIM/MSE triples, one per method."""
  text = (SHARED / "seeds" / pt.SGZ_TABLE1.citation.seed).read_text()
  lines = text.splitlines()
  at = lines.index("Method Dark PIE[8] Retinex[46] MBLLEN[33] KinD[50] Zero-DCE[11] Ours")
  assert lines[at].split()[1:] == [r.name for r in pt.SGZ_TABLE1.rows]
  assert lines[at + 1].startswith("LOL ") and lines[at + 2].startswith("DCS ")
  lol, dcs = _numbers(lines[at + 1]), _numbers(lines[at + 2])
  for i, r in enumerate(pt.SGZ_TABLE1.rows):
    assert list(r.cells) == lol[3 * i:3 * i + 3] + dcs[3 * i:3 * i + 3], r.name


def _paper_numbers() -> dict[str, str]:
  """METHODS.md's 'Paper numbers' paragraph of each seed, one line each."""
  out = {}
  for section in re.split(r"\n## ", (SHARED / "METHODS.md").read_text()):
    seed = re.search(r"seed `([^`]+)`", section.splitlines()[0])
    para = re.search(r"Paper numbers.*?(?=\n\n|\n- |\Z)", section, re.S)
    if seed and para:
      out[seed.group(1)] = " ".join(para.group(0).split())
  return out


# METHODS.md's numbers: a pattern over its paragraph, and the (row, column) of each number it captures.
_METHODS_NUMBERS = {
    "sgz_table1": (r"LOL ([\d.]+) dB / ([\d.]+) SSIM / ([\d.]+) MSE; DarkCityScape ([\d.]+) / ([\d.]+);",
                   [("Ours", "lol/psnr"), ("Ours", "lol/ssim"), ("Ours", "lol/mse"), ("Ours", "darkcityscape/psnr"),
                    ("Ours", "darkcityscape/ssim")]),
    "scl_lle_niqe": (r"NIQE avg ([\d.]+) / UNIQUE ([\d.]+) over DICM, LIME, MEF, VV, NPE",
                     [("Ours", "average/niqe"), ("Ours", "average/unique")]),
    "skf_lol": (r"DRBN ([\d.]+) -> DRBN-SKF ([\d.]+) / ([\d.]+) / ([\d.]+); RetinexNet ([\d.]+) -> ([\d.]+); "
                r"LLFlow-L-SKF ([\d.]+) / ([\d.]+) / ([\d.]+)",
                [("DRBN [48] CVPR’20", "lol/psnr"), ("DRBN-SKF(Ours)", "lol/psnr"), ("DRBN-SKF(Ours)", "lol/ssim"),
                 ("DRBN-SKF(Ours)", "lol/lpips"), ("RetinexNet [43] BMVC’18", "lol/psnr"),
                 ("RetinexNet-SKF(Ours)", "lol/psnr"), ("LLFlow-L-SKF(Ours)", "lol/psnr"),
                 ("LLFlow-L-SKF(Ours)", "lol/ssim"), ("LLFlow-L-SKF(Ours)", "lol/lpips")]),
    "scuf_lsrw": (r"LSRW ([\d.]+) / ([\d.]+) / ([\d.]+); LOL ([\d.]+) / ([\d.]+) / ([\d.]+);",
                  [("Ours", "lsrw/psnr"), ("Ours", "lsrw/ssim"), ("Ours", "lsrw/lpips"), ("Ours", "lol_v2/psnr"),
                   ("Ours", "lol_v2/ssim"), ("Ours", "lol_v2/lpips")]),
    "dmgnie_traffic": (r"BRISQUE ([\d.]+), NIQE ([\d.]+), FID ([\d.]+), LPIPS ([\d.]+) \(x100\); CycleGAN ([\d.]+) FID",
                       [("Ours", "lq_tll_qd/brisque"), ("Ours", "lq_tll_qd/niqe"), ("Ours", "lq_tll_qd/fid"),
                        ("Ours", "lq_tll_qd/lpips"), ("CycleGAN", "lq_tll_qd/fid")]),
}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_methods_md_agrees(preset):
  """Each number METHODS.md lists for the table is the library's, rounded as METHODS.md prints it."""
  paragraph = _paper_numbers()[preset.citation.seed]
  pattern, cells = _METHODS_NUMBERS[preset.name]
  match = re.search(pattern, paragraph)
  assert match, paragraph
  assert len(match.groups()) == len(cells)
  for listed, (row, column) in zip(match.groups(), cells):
    ours = _cell(preset, row, column)
    digits = len(listed.partition(".")[2])
    assert len(ours.partition(".")[2]) >= digits and round(float(ours), digits) == float(listed), (row, column)
  if preset is pt.DMGNIE_TRAFFIC:
    assert preset.columns[[c.id for c in preset.columns].index("lq_tll_qd/lpips")].scale == 100.0


def test_scl_lle_average_is_image_weighted():
  """The note's claim: every row's Average is the mean over DICM 64, LIME 10, MEF 17, VV 24, NPE 8 images."""
  weights = {"dicm": 64, "lime": 10, "mef": 17, "vv": 24, "npe": 8}
  for r in pt.SCL_LLE_NIQE.rows:
    for metric in ("niqe", "unique"):
      mean = sum(float(_cell(pt.SCL_LLE_NIQE, r.name, f"{k}/{metric}")) * n for k, n in weights.items())
      mean /= sum(weights.values())
      assert abs(mean - float(_cell(pt.SCL_LLE_NIQE, r.name, f"average/{metric}"))) <= 0.0101, (r.name, metric)


# ---------------------------------------------------------------- which data a preset runs on

def _folder(root: pathlib.Path, paired: bool, image: bool = True) -> str:
  for sub in (("low", "high") if paired else ("",)):
    (root / sub).mkdir(parents=True, exist_ok=True)
    if image:
      (root / sub / "a.png").write_bytes(b"")  # the plan looks at names only
  return str(root)


def test_plan_uses_the_sets_here_and_lists_the_rest():
  plan = pt.plan(pt.SCL_LLE_NIQE, [], here={"dicm", "lime", "lowcut"})
  assert plan.keys == ["dicm", "lime"] and [d.key for d in plan.missing] == ["mef", "vv", "npe"]
  missing = pt.missing_list(plan)
  assert [m["how"] for m in missing] == ["--data mef=PATH", "--data vv=PATH", "--data npe=PATH"]
  assert missing[0]["needs"].startswith("MEF low-light images") and "a folder of images" in missing[0]["needs"]
  # Nothing here: every dataset is missing (DMGNIE's data is private).
  plan = pt.plan(pt.DMGNIE_TRAFFIC, [], here={"dicm", "lime"})
  assert plan.chosen == () and [d.key for d in plan.missing] == ["lq_tll_qd", "lq_tll_sz", "lq_tell"]


def test_data_flag(tmp_path):
  lol = _folder(tmp_path / "LOL", paired=True)
  mef = _folder(tmp_path / "MEF", paired=False)
  plan = pt.plan(pt.SKF_LOL, [f"lol={lol}"], here=())
  assert plan.chosen == ((pt.SKF_LOL.dataset("lol"), lol),) and [d.key for d in plan.missing] == ["lol_v2"]
  # --data replaces the conformance subset.
  plan = pt.plan(pt.SCL_LLE_NIQE, [f"dicm={mef}", f"mef={mef}"], here={"dicm", "lime"})
  assert [(d.key, path) for d, path in plan.chosen] == [("dicm", mef), ("lime", None), ("mef", mef)]
  cases = {
      "nope=x": r"--data nope=x: preset skf_lol has no dataset 'nope'; choose from lol, lol_v2",
      "lol": r"--data lol: give KEY=PATH with KEY one of lol, lol_v2",
      f"lol={tmp_path / 'absent'}": r"absent does not exist",
      f"lol={mef}": r"is not a folder with low/ and high/",
      f"lol={_folder(tmp_path / 'empty', paired=True, image=False)}": r"empty: no images in .*empty/low",
  }
  for item, message in cases.items():
    with pytest.raises(errors.UserError, match=message):
      pt.plan(pt.SKF_LOL, [item], here=())
  with pytest.raises(errors.ConfigError, match="lol given twice"):
    pt.plan(pt.SKF_LOL, [f"lol={lol}", f"lol={lol}"], here=())


def test_flags_that_contradict_the_preset():
  plan = pt.plan(pt.SCL_LLE_NIQE, [], here={"dicm", "lime"})
  pt.check_flags(plan, sets=["lime", "dicm"], metrics=["niqe"], crop_border=0, channel="rgb")  # agree
  for flags, message in [({"metrics": ["psnr"]}, r"--metrics psnr: preset scl_lle_niqe uses niqe"),
                         ({"sets": ["dicm"]}, r"--sets dicm: preset scl_lle_niqe uses dicm,lime .*--data KEY=PATH"),
                         ({"crop_border": 4}, r"--crop_border 4: preset scl_lle_niqe uses 0"),
                         ({"channel": "y"}, r"--channel y: .* uses rgb")]:
    with pytest.raises(errors.ConfigError, match=message):
      pt.check_flags(plan, **flags)


# ---------------------------------------------------------------- our rows beside the paper's

def _result(rows, params=10561):
  return {"rows": rows, "sets": [{"name": s, "images": n} for s, n in {(r["set"], r["images"]) for r in rows}],
          "entries": {"sgz": {"params": {"total": params}}}}


def test_table_puts_ours_beside_the_papers(tmp_path):
  plan = pt.plan(pt.SCL_LLE_NIQE, [], here={"dicm", "lime"})
  result = _result([{"name": n, "set": s, "niqe": v, "images": 2} for n, s, v in
                    [("input", "dicm", 4.0), ("sgz", "dicm", 3.25), ("input", "lime", 4.5), ("sgz", "lime", 3.5)]])
  t = pt.table(plan, result, ["sgz"], limit=2)
  assert [c["id"] for c in t["columns"]][:3] == ["dicm/niqe", "dicm/unique", "lime/niqe"]
  paper = [r for r in t["rows"] if r["source"] == "paper"]
  assert [r["name"] for r in paper] == [r.name for r in pt.SCL_LLE_NIQE.rows]
  assert paper[-1]["ours_row"] and paper[-1]["average/niqe"] == 3.46 and paper[0]["dicm/niqe"] == 4.26
  ours = {r["entry"]: r for r in t["rows"] if r["source"] == "ours"}
  assert list(ours) == ["input", "sgz"]
  assert ours["sgz"]["dicm/niqe"] == 3.25 and ours["sgz"]["lime/niqe"] == 3.5
  assert ours["sgz"]["mef/niqe"] is None and ours["sgz"]["dicm/unique"] is None
  assert ours["sgz"]["average/niqe"] is None  # three of the five sets are missing
  assert [m["key"] for m in t["missing"]] == ["mef", "vv", "npe"]
  md = pt.to_markdown(t)
  assert "| sgz | ours: sgz | 3.25 | n/a | 3.50 | n/a | — | n/a |" in md
  assert "| **Ours** | paper: the method | 3.51 | 0.87 |" in md
  assert md.index("Missing paper data:") < md.index("- mef: MEF low-light images")
  for line in pt.missing_lines(t):
    assert line in md and line.endswith(f"Pass `--data {line[2:].split(':')[0]}=PATH`.")
  assert "<td>—</td>" in pt.to_html(t) and "--data mef=PATH" in pt.to_html(t)

  # All five sets: the Average is image-weighted.
  given = [f"{k}={_folder(tmp_path / k, paired=False)}" for k in ("mef", "vv", "npe")]
  plan = pt.plan(pt.SCL_LLE_NIQE, given, here={"dicm", "lime"})
  counts = {"dicm": 1, "lime": 3, "mef": 1, "vv": 1, "npe": 2}
  values = {"dicm": 3.0, "lime": 4.0, "mef": 5.0, "vv": 6.0, "npe": 2.0}
  t = pt.table(plan, _result([{"name": "sgz", "set": k, "niqe": values[k], "images": counts[k]} for k in counts]),
               ["sgz"])
  ours = next(r for r in t["rows"] if r.get("entry") == "sgz")
  assert ours["average/niqe"] == pytest.approx((3 + 12 + 5 + 6 + 4) / 8) and t["missing"] == []


def test_scale_and_parameters(tmp_path):
  data = [f"lq_tll_qd={_folder(tmp_path / 'qd', paired=True)}"]
  plan = pt.plan(pt.DMGNIE_TRAFFIC, data, here=())
  t = pt.table(plan, _result([{"name": "sgz", "set": "lq_tll_qd", "lpips": 0.4296, "niqe": 5.0, "brisque": 30.0,
                               "images": 3}]), ["sgz"])
  ours = next(r for r in t["rows"] if r.get("entry") == "sgz")
  assert ours["lq_tll_qd/lpips"] == pytest.approx(42.96) and ours["lq_tll_qd/fid"] is None
  assert ours["lq_tll_sz/lpips"] is None
  md = pt.to_markdown(t)
  assert "| sgz | ours: sgz | 30.000 | 5.000 | - | 42.960 | — |" in md  # FID: no --fid_weights
  assert "*Supervised Learning Methods*" in md
  plan = pt.plan(pt.SKF_LOL, [f"lol={_folder(tmp_path / 'lol', paired=True)}"], here=())
  t = pt.table(plan, _result([{"name": "sgz", "set": "lol", "psnr": 18.0, "images": 1}]), ["sgz"])
  assert next(r for r in t["rows"] if r.get("entry") == "sgz")["params_m"] == pytest.approx(0.010561)
