"""Segmentation before/after enhancement on darkened labelled images: SCL-LLE's Table 4 protocol.

Paper: Liang et al., "Semantically Contrastive Learning for Low-Light Image Enhancement", AAAI 2022,
section "Semantic Segmentation with LLE" / Table 4: Cityscapes val cities (Frankfurt, Lindau,
Munster) darkened with the "standard positive gamma transformation" x -> x^gamma, gamma in
{1, 2, 6, 10}; each darkened image is segmented by the frozen DeepLabV3+ as it is ("Input") and
after enhancement; mIoU over the 19 classes.
Reference code for the metric: VainF/DeepLabV3Plus-Pytorch
`metrics/stream_metrics.py::StreamSegMetrics` (SCL-LLE's `metrics/`): one confusion matrix
accumulated over the whole set (pixels whose label is outside [0, num_classes), e.g. 255, are
ignored), IoU_c = TP / (TP + FP + FN), mIoU = nanmean over classes (a class absent from both labels
and predictions does not count).

Protocol choices made explicit: darkening acts on the [0, 1] float image (no 8-bit requantisation);
predictions are the argmax of the logits at the input size; mIoU is returned as a fraction (the
paper prints percentages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

PAPER_GAMMAS = (1.0, 2.0, 6.0, 10.0)
IGNORE_INDEX = 255


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

  Pixels whose label is outside [0, num_classes) (the ignore id 255 among them) are not counted.
  """
  labels = np.asarray(labels).astype(np.int64).ravel()
  preds = np.asarray(preds).astype(np.int64).ravel()
  if labels.shape != preds.shape:
    raise ValueError(f"labels and predictions differ in size: {labels.shape} vs {preds.shape}")
  keep = (labels >= 0) & (labels < num_classes)
  idx = num_classes * labels[keep] + np.clip(preds[keep], 0, num_classes - 1)
  return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
  """TP / (TP + FP + FN) per class; NaN where a class occurs neither in labels nor predictions."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
  """nanmean of `per_class_iou` (VainF `StreamSegMetrics` "Mean IoU"); NaN for an empty matrix."""
  iou = per_class_iou(confusion)
  return float(np.nanmean(iou)) if np.any(np.isfinite(iou)) else float("nan")


def gamma_darken(image: np.ndarray, gamma: float) -> np.ndarray:
  """x -> x^gamma on [0, 1] (gamma 1 is the identity)."""
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  return image if gamma == 1 else np.power(image, np.float32(gamma))


def evaluate_segmentation(enhance_fn: Callable[[Any], Any], segment_fn: Callable[[Any], Any],
                          samples: Iterable[Mapping[str, np.ndarray]], *,
                          gammas: Sequence[float] = PAPER_GAMMAS, num_classes: int = 19
                          ) -> dict[str, dict[str, float]]:
  """Table 4: mIoU of the darkened input and of its enhancement, per gamma.

  Args:
    enhance_fn: (1, H, W, 3) [0, 1] -> (1, H, W, 3) enhanced image (array or {'enhanced': array}).
    segment_fn: (1, H, W, 3) [0, 1] -> (1, H, W, num_classes) logits (or {'logits': array}).
    samples: elements {'image': HxWx3 normal-light [0, 1], 'labels': HxW ids (255 = ignore)};
      iterated once, so a lazy generator of full-resolution images is fine.
    gammas: darkening exponents.
    num_classes: classes of the confusion matrix (19 for Cityscapes).

  Returns:
    {f'gamma_{g:g}': {'input': mIoU, 'enhanced': mIoU}} (fractions), plus 'num_images'.
  """
  gammas = tuple(float(g) for g in gammas)
  conf = {(g, kind): np.zeros((num_classes, num_classes), np.int64) for g in gammas
          for kind in ("input", "enhanced")}

  def predict(x):
    out = segment_fn(x)
    logits = out["logits"] if isinstance(out, Mapping) else out
    return np.asarray(jax.device_get(logits))[0].argmax(axis=-1)

  n = 0
  for sample in samples:
    image, labels = np.asarray(sample["image"], np.float32), np.asarray(sample["labels"])
    if labels.shape != image.shape[:2]:
      raise ValueError(f"labels {labels.shape} do not match image {image.shape[:2]}")
    for g in gammas:
      dark = gamma_darken(image, g)[None]
      out = enhance_fn(dark)
      enhanced = np.asarray(jax.device_get(out["enhanced"] if isinstance(out, Mapping) else out))
      conf[(g, "input")] += confusion_matrix(labels, predict(dark), num_classes)
      conf[(g, "enhanced")] += confusion_matrix(labels, predict(np.clip(enhanced, 0.0, 1.0)),
                                                num_classes)
    n += 1
  result: dict[str, Any] = {
      f"gamma_{g:g}": {kind: mean_iou(conf[(g, kind)]) for kind in ("input", "enhanced")}
      for g in gammas}
  result["num_images"] = n
  return result


def method_fns(method: Any, params: Any, frozen: Any, model_state: Any = None
               ) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
  """Jitted (enhance_fn, segment_fn) of an SCL-LLE `Method`; its frozen DeepLabV3+ segments."""
  model_state = {} if model_state is None else model_state
  enhance = jax.jit(lambda x: method.enhance(params, model_state, frozen, x)["enhanced"])
  segment = jax.jit(lambda x: method.segment(frozen, x))
  return enhance, segment
