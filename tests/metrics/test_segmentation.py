"""SCL-LLE Table 4 protocol: mIoU by hand; input == enhanced for an identity enhancer."""

import math

import jax.numpy as jnp
import numpy as np

from lowlight_jax.metrics import segmentation as se


def test_two_class_toy_miou_by_hand():
  labels = np.array([[0, 0], [1, 1], [255, 1]])
  preds = np.array([[0, 1], [1, 1], [0, 0]])
  conf = se.confusion_matrix(labels, preds, num_classes=2)
  # rows = truth: class 0 -> (0, 1); class 1 -> (1 pixel predicted 0, 2 predicted 1); the 255 pixel
  # is ignored.
  np.testing.assert_array_equal(conf, [[1, 1], [1, 2]])
  # IoU0 = 1 / (1 + 1 + 1) = 1/3; IoU1 = 2 / (2 + 1 + 1) = 1/2; mIoU = 5/12.
  np.testing.assert_allclose(se.per_class_iou(conf), [1 / 3, 1 / 2])
  assert math.isclose(se.mean_iou(conf), 5 / 12)
  # A class absent from labels and predictions is NaN and does not count.
  conf3 = se.confusion_matrix(labels, preds, num_classes=3)
  assert np.isnan(se.per_class_iou(conf3)[2]) and math.isclose(se.mean_iou(conf3), 5 / 12)


def _threshold_segmenter(x):
  # Two classes by brightness: a fixed, deterministic "segmentation network".
  b = jnp.mean(x, axis=-1, keepdims=True)
  return {"logits": jnp.concatenate([0.35 - b, b - 0.35], axis=-1)}


def test_identity_enhancer_gives_input_miou_and_darkening_hurts():
  rng = np.random.default_rng(0)
  samples = []
  for _ in range(2):
    image = rng.uniform(0.0, 1.0, (12, 16, 3)).astype(np.float32)
    labels = (image.mean(-1) > 0.35).astype(np.int32)
    labels[0, :4] = 255
    samples.append({"image": image, "labels": labels})
  result = se.evaluate_segmentation(lambda x: x, _threshold_segmenter, iter(samples), num_classes=2)
  assert result["num_images"] == 2
  assert set(result) == {"gamma_1", "gamma_2", "gamma_6", "gamma_10", "num_images"}
  for g in ("gamma_1", "gamma_2", "gamma_6", "gamma_10"):
    assert result[g]["input"] == result[g]["enhanced"]
  assert result["gamma_1"]["input"] == 1.0  # labels were made by the same threshold
  assert result["gamma_10"]["input"] < result["gamma_2"]["input"] < 1.0
  # An enhancer that undoes the darkening (here: brightening past the threshold) changes the
  # enhanced column.
  brighter = se.evaluate_segmentation(lambda x: {"enhanced": jnp.sqrt(x)}, _threshold_segmenter,
                                      samples, gammas=(2.0,), num_classes=2)
  assert brighter["gamma_2"]["enhanced"] == 1.0 > brighter["gamma_2"]["input"]
