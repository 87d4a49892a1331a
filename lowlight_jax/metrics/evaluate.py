"""Scores a folder of enhanced images, optionally against references paired by file stem.

`evaluate_folders` is the library side of `python -m launch.evaluate`: it reads every image once
with the project's one reader (`lowlight_jax.io.imageio.read_image`: EXIF orientation applied, the
extensions of `imageio.list_images`, hidden files ignored), pairs predictions and references by file
stem (nothing pairing is an `InputError` naming both folders), computes the requested metrics with
an explicit protocol, survives unreadable or mismatched files (each gets an `error` entry in the
report), writes the JSON report atomically and, if asked, an HTML report with a table and a grid of
input / output / reference crops embedded as base64 JPEG thumbnails.

Report layout (JSON):
  {"pred_dir", "ref_dir", "input_dir", "metrics": [...], "fid_ref_dir" (what FID compared with; null without fid),
   "protocol": {...},
   "mean": {metric: value}, "count": {metric: number of images averaged},
   "images": {stem: {"pred": path, "ref": path | null, metric: value, ...,
                     "error": msg (only on failure)}},
   "set": {"fid": value} (set-level metrics), "errors": [{"name", "error"}],
   "unpaired": {"pred_only": [...], "ref_only": [...]}}
Non-finite values (e.g. PSNR of identical images) are written as null and left out of the means.
"""

import base64
import dataclasses
import functools
import html
import io
import json
import math
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import numpy as np
from PIL import Image
import tqdm

from lowlight_jax import errors as errors_lib
from lowlight_jax.io import atomic_io
from lowlight_jax.io import imageio
from lowlight_jax.metrics import full_reference

#: The one list of image extensions (`imageio.list_images`), the same as `launch.enhance` reads.
IMAGE_EXTENSIONS = imageio.IMAGE_EXTENSIONS
FULL_REFERENCE = ('psnr', 'ssim', 'lpips', 'lpips_vgg')
NO_REFERENCE = ('niqe', 'brisque')
SET_LEVEL = ('fid',)
METRICS = FULL_REFERENCE + NO_REFERENCE + SET_LEVEL
# Direction of "better", for the HTML table.
HIGHER_IS_BETTER = {'psnr': True, 'ssim': True, 'lpips': False, 'lpips_vgg': False, 'niqe': False,
                    'brisque': False, 'fid': False}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How images are scored. Images are read as 8-bit RGB (data range 255) by `read_rgb8`.

  Attributes:
    crop_border: pixels removed from each side before every per-image metric.
    channel: PSNR/SSIM on 'rgb', 'y' (BT.601 luma) or 'grey' (MATLAB rgb2gray), quantised as MATLAB
      does for uint8 images. NIQE and BRISQUE always follow their official protocol (MATLAB
      rgb2gray).
  """
  crop_border: int = 0
  channel: str = 'rgb'


def list_images(folder: str | os.PathLike) -> dict[str, pathlib.Path]:
  """{stem: path} of the image files directly in `folder` (`imageio.list_images`: sorted, hidden files
  ignored); duplicate stems are an InputError naming both files."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise errors_lib.InputError(f'{folder} is not a folder')
  out: dict[str, pathlib.Path] = {}
  for p in imageio.list_images(folder):
    if p.stem in out:
      raise errors_lib.InputError(
          f'two images share the stem {p.stem!r} in {folder}: {out[p.stem].name}, {p.name}')
    out[p.stem] = p
  return out


def read_rgb8(path: str | os.PathLike) -> np.ndarray:
  """An image file as HxWx3 uint8 RGB, read by `imageio.read_image` (EXIF orientation applied, every
  mode to RGB: alpha composited onto black, 16-bit greyscale rounded to 8 bits).

  Raises:
    imageio.ImageDecodeError (a ValueError) naming the file if it cannot be decoded.
  """
  rgb = imageio.read_image(path)
  return np.floor(rgb * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def _examples(files: dict[str, pathlib.Path], n: int = 3) -> str:
  names = [p.name for p in files.values()]
  return ', '.join(names[:n]) + (', ...' if len(names) > n else '')


def _crop(img: np.ndarray, border: int) -> np.ndarray:
  return img[border:-border, border:-border] if border else img


class _Scorers:
  """Builds the per-image metric functions once (jitted where they run in JAX)."""

  def __init__(self, metrics: Sequence[str], protocol: Protocol):
    self.fns: dict[str, Callable[..., float]] = {}
    fr = dict(data_range=255.0, channel=protocol.channel, quantize=protocol.channel != 'rgb')
    if 'psnr' in metrics:
      f = jax.jit(functools.partial(full_reference.psnr, **fr))
      self.fns['psnr'] = lambda p, r: float(f(p.astype(np.float32), r.astype(np.float32)))
    if 'ssim' in metrics:
      g = jax.jit(functools.partial(full_reference.ssim, **fr))
      self.fns['ssim'] = lambda p, r: float(g(p.astype(np.float32), r.astype(np.float32)))
    for name, net in (('lpips', 'alex'), ('lpips_vgg', 'vgg')):
      if name in metrics:
        from lowlight_jax.metrics import lpips  # pylint: disable=g-import-not-at-top
        variables = lpips.load_variables(net)
        h = jax.jit(functools.partial(lpips.lpips, net=net, data_range=255.0))
        self.fns[name] = (lambda h, v: lambda p, r: float(
            h(p.astype(np.float32), r.astype(np.float32), variables=v)))(h, variables)
    if 'niqe' in metrics:
      from lowlight_jax.metrics import niqe  # pylint: disable=g-import-not-at-top
      model = niqe.load_model()
      self.fns['niqe'] = lambda p, r: niqe.niqe(p, data_range=255.0, model=model)
    if 'brisque' in metrics:
      from lowlight_jax.metrics import brisque  # pylint: disable=g-import-not-at-top
      model_b = brisque.load_model()
      self.fns['brisque'] = lambda p, r: brisque.brisque(p, data_range=255.0, model=model_b)


def _finite_or_none(v: float) -> float | None:
  return v if v is not None and math.isfinite(v) else None


def thumbnail(img: np.ndarray, crop: int = 256, size: int = 160) -> str:
  """Centre crop (up to `crop` px square) resized to `size` px, as a base64 JPEG data URI."""
  h, w = img.shape[:2]
  c = min(crop, h, w)
  top, left = (h - c) // 2, (w - c) // 2
  im = Image.fromarray(img[top:top + c, left:left + c]).resize((size, size), Image.BICUBIC)
  buf = io.BytesIO()
  im.save(buf, format='JPEG', quality=85)
  return 'data:image/jpeg;base64,' + base64.b64encode(buf.getvalue()).decode('ascii')


def _fmt(v: Any) -> str:
  return '' if v is None else f'{v:.4f}' if isinstance(v, float) else html.escape(str(v))


def render_html(report: dict[str, Any], thumbs: dict[str, dict[str, str]]) -> str:
  """The HTML report: settings, the metrics table (mean first) and the crop grid."""
  metrics = [m for m in report['metrics'] if m not in SET_LEVEL]
  arrow = lambda m: ' &uarr;' if HIGHER_IS_BETTER.get(m) else ' &darr;'
  head = ''.join(f'<th>{html.escape(m)}{arrow(m)}</th>' for m in metrics)
  means = ''.join(f'<td>{_fmt(report["mean"].get(m))}</td>' for m in metrics)
  rows = [f'<tr class="mean"><td>mean</td>{means}<td></td></tr>']
  for name, rec in report['images'].items():
    cells = ''.join(f'<td>{_fmt(rec.get(m))}</td>' for m in metrics)
    rows.append(
        f'<tr><td>{html.escape(name)}</td>{cells}<td class="err">{_fmt(rec.get("error"))}</td></tr>'
    )
  set_level = ''.join(
      f'<p><b>{html.escape(k)}</b>: {_fmt(v)}</p>' for k, v in report.get('set', {}).items())
  grid = []
  for name, t in thumbs.items():
    cells = ''.join(
        f'<figure><img src="{src}" alt="{html.escape(kind)}"><figcaption>{html.escape(kind)}'
        '</figcaption></figure>' for kind, src in t.items())
    grid.append(f'<div class="row"><h3>{html.escape(name)}</h3>{cells}</div>')
  settings = html.escape(
      json.dumps({k: report[k] for k in ('pred_dir', 'ref_dir', 'input_dir', 'protocol')},
                 indent=1))
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>lowlight-jax evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
tr.mean {{ font-weight: bold; background: #eef; }} td.err {{ color: #b00; text-align: left; }}
.row {{ display: flex; gap: 8px; align-items: flex-start; }}
.row h3 {{ width: 10em; font-size: 0.9em; }}
figure {{ margin: 0; text-align: center; font-size: 0.8em; }}
</style></head><body>
<h1>Evaluation report</h1>
<pre>{settings}</pre>
{set_level}
<table><tr><th>image</th>{head}<th>error</th></tr>
{chr(10).join(rows)}
</table>
<h2>Crops</h2>
{chr(10).join(grid)}
</body></html>
"""


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike | None = None, *,
                     metrics: Sequence[str] = ('psnr', 'ssim', 'lpips', 'niqe', 'brisque'),
                     input_dir: str | os.PathLike | None = None, protocol: Protocol = Protocol(),
                     out_json: str | os.PathLike | None = None,
                     out_html: str | os.PathLike | None = None,
                     fid_weights: str | os.PathLike | None = None, grid_limit: int = 24,
                     progress: bool = True, fid_ref_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Scores every image of `pred_dir` and returns (and optionally writes) the report described
  above.

  Args:
    pred_dir: enhanced images.
    ref_dir: references, paired with predictions by file stem; needed by full-reference metrics and
      FID.
    metrics: names from `METRICS`.
    input_dir: optional low-light inputs (paired by stem) shown in the HTML grid.
    protocol: crop border and PSNR/SSIM channel.
    out_json: report path (written atomically).
    out_html: HTML report path.
    fid_weights: pt_inception-2015-12-05 .pth weights, required for 'fid'.
    grid_limit: images shown in the HTML grid.
    progress: show a tqdm progress bar.
    fid_ref_dir: the images FID compares the predictions with (default: every image of `ref_dir`), e.g. day frames
      of the same cameras for night-to-day enhancement, whose references are not a distribution to match.
  """
  metrics = list(dict.fromkeys(metrics))
  unknown = [m for m in metrics if m not in METRICS]
  if unknown:
    raise errors_lib.ConfigError(f'unknown metrics {unknown}; choose from {list(METRICS)}')
  needs_ref = [m for m in metrics if m in FULL_REFERENCE or (m in SET_LEVEL and fid_ref_dir is None)]
  if needs_ref and ref_dir is None:
    raise errors_lib.ConfigError(f'metrics {needs_ref} need reference images (--ref)')
  if 'fid' in metrics and fid_weights is None:
    raise errors_lib.ConfigError('fid needs InceptionV3 weights (pt_inception-2015-12-05 .pth, --fid_weights)')

  preds = list_images(pred_dir)
  refs = list_images(ref_dir) if ref_dir is not None else {}
  inputs = list_images(input_dir) if input_dir is not None else {}
  if not preds:
    raise errors_lib.InputError(
        f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in the predictions folder {pred_dir}')
  if ref_dir is not None and not set(preds) & set(refs):
    raise errors_lib.InputError(
        f'no prediction in {pred_dir} has a reference in {ref_dir} with the same file stem '
        f'({len(preds)} prediction(s), e.g. {_examples(preds)}; {len(refs)} reference(s)'
        f'{", e.g. " + _examples(refs) if refs else ""})')
  scorers = _Scorers(metrics, protocol)  # loads assets first: a missing asset fails before any work
  fid_model = None
  if 'fid' in metrics:
    from lowlight_jax.metrics import fid  # pylint: disable=g-import-not-at-top
    fid_model = fid.FeatureExtractor(fid.load_variables(fid_weights))
  pred_feats, ref_feats = [], []

  images: dict[str, dict[str, Any]] = {}
  errors: list[dict[str, str]] = []
  thumbs: dict[str, dict[str, str]] = {}
  values: dict[str, list[float]] = {m: [] for m in metrics if m not in SET_LEVEL}
  for name, path in tqdm.tqdm(preds.items(), desc='evaluate', unit='img', disable=not progress):
    rec: dict[str, Any] = {'pred': str(path), 'ref': str(refs[name]) if name in refs else None}
    images[name] = rec
    try:
      pred = read_rgb8(path)
      ref = read_rgb8(refs[name]) if name in refs else None
      if ref is not None and ref.shape != pred.shape:
        raise ValueError(f'prediction {pred.shape[:2]} and reference {ref.shape[:2]} sizes differ')
      if fid_model is not None:
        pred_feats.append(fid_model(pred))
      p = _crop(pred, protocol.crop_border)
      r = _crop(ref, protocol.crop_border) if ref is not None else None
      for m, fn in scorers.fns.items():
        if m in FULL_REFERENCE and r is None:
          continue  # unpaired prediction: listed under `unpaired`
        v = _finite_or_none(fn(p, r))
        rec[m] = v
        if v is not None:
          values[m].append(v)
      if len(thumbs) < grid_limit:
        t = {}
        if name in inputs:
          try:
            t['input'] = thumbnail(read_rgb8(inputs[name]))
          except ValueError:
            pass  # the grid is a convenience; the table still has the scores
        t['output'] = thumbnail(pred)
        if ref is not None:
          t['reference'] = thumbnail(ref)
        thumbs[name] = t
    except Exception as e:  # pylint: disable=broad-except  one bad file must not end the run
      rec['error'] = str(e) if isinstance(e, ValueError) else f'{type(e).__name__}: {e}'
      errors.append({'name': name, 'error': rec['error']})

  set_values: dict[str, Any] = {}
  if fid_model is not None:
    from lowlight_jax.metrics import fid  # pylint: disable=g-import-not-at-top
    fid_refs = refs if fid_ref_dir is None else list_images(fid_ref_dir)
    if not fid_refs:
      raise errors_lib.InputError(f'fid: no image files in {fid_ref_dir if fid_ref_dir is not None else ref_dir}')
    for name, path in tqdm.tqdm(fid_refs.items(), desc='fid refs', unit='img', disable=not progress):
      try:
        ref_feats.append(fid_model(read_rgb8(path)))
      except ValueError as e:
        errors.append({'name': f'ref:{name}', 'error': str(e)})
    if len(pred_feats) < 2 or len(ref_feats) < 2:
      set_values['fid'] = None
      errors.append({'name': '*', 'error': 'fid needs at least two readable images on each side'})
    else:
      set_values['fid'] = _finite_or_none(
          fid.fid_from_features(np.stack(pred_feats), np.stack(ref_feats)))

  report = {
      'pred_dir': str(pred_dir), 'ref_dir': None if ref_dir is None else str(ref_dir),
      'input_dir': None if input_dir is None else str(input_dir), 'metrics': metrics,
      'fid_ref_dir': str(fid_ref_dir if fid_ref_dir is not None else ref_dir) if fid_model is not None else None,
      'protocol': {'data_range': 255, 'crop_border': protocol.crop_border,
                   'psnr_ssim_channel': protocol.channel,
                   'niqe_brisque': 'official MATLAB: rgb2gray of the 8-bit image',
                   'lpips': 'v0.1 linear heads, inputs mapped to [-1, 1]',
                   'fid': 'pytorch-fid InceptionV3 pool3, bilinear resize to 299'},
      'mean': {m: (float(np.mean(v)) if v else None) for m, v in values.items()},
      'count': {m: len(v) for m, v in values.items()},
      'images': images,
      'set': set_values,
      'errors': errors,
      'unpaired': {'pred_only': sorted(set(preds) - set(refs)) if ref_dir is not None else [],
                   'ref_only': sorted(set(refs) - set(preds))},
  }
  if out_json is not None:
    atomic_io.write_json_atomic(out_json, report, indent=1, allow_nan=False)
  if out_html is not None:
    atomic_io.write_text_atomic(out_html, render_html(report, thumbs))
  return report
