r"""The README demo: train SGZ on the embedded default data, enhance its test photos, print the gain.

  lowlight demo [--workdir runs/demo] [--config_arg demo]
  python -m launch.demo --workdir runs/demo [--config_arg demo]

Steps: `launch.train` with `configs/sgz.py:demo` (a CPU-sized variant of the recipe, see that file), the test
split's low-light images written to `<workdir>/data/{low,high}`, `launch.enhance` on them into
`<workdir>/enhanced`, and PSNR/SSIM of input vs. ground truth and enhanced vs. ground truth (uint8 PNGs, RGB,
data range 1, no border crop). The table is printed and saved as `<workdir>/demo_results.json`.
"""

import os

from absl import app
from absl import flags

from launch import _common
from launch import _config
from lowlight_jax.io import atomic_io

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Run directory.")
_ARG = flags.DEFINE_string("config_arg", "demo", "Argument of configs/sgz.py.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  _common.check_workdir(workdir)
  config = _config.load_config("sgz" + (f":{_ARG.value}" if _ARG.value else ""), flag="--config_arg")
  import numpy as np

  from lowlight_jax.io import imageio
  from data_pipelines import pipeline
  from lowlight_jax.inference import batch_enhance
  from lowlight_jax.train import evaluation
  from lowlight_jax.train import trainer

  _common.setup_logging()
  trainer.train_and_evaluate(config, workdir)  # Writes <workdir>/config.json.

  # The embedded test photos as files, so the enhance step is exactly what a user runs on their own images.
  low_dir, high_dir = (os.path.join(workdir, "data", d) for d in ("low", "high"))
  test_set = pipeline.make_eval_set(config.data, split="test")
  for element in test_set:
    for folder, key in ((low_dir, "low"), (high_dir, "high")):
      os.makedirs(folder, exist_ok=True)
      imageio.write_png_atomic(os.path.join(folder, element["name"] + ".png"), evaluation.quantize(element[key]))

  setup = trainer.restore_for_inference(config, workdir)
  fn = trainer.make_enhance_fn(setup)(setup.state, setup.frozen)
  enhance_one = lambda image: evaluation.quantize(np.asarray(fn(image[None])["enhanced"][0]))
  out_dir = os.path.join(workdir, "enhanced")
  batch_enhance.enhance_paths(enhance_one, batch_enhance.collect_inputs(low_dir), out_dir)

  rows = []
  for element in test_set:
    name = element["name"]
    low = imageio.read_image(os.path.join(low_dir, name + ".png"))
    high = imageio.read_image(os.path.join(high_dir, name + ".png"))
    enhanced = imageio.read_image(os.path.join(out_dir, name + ".png"))
    row = {"name": name}
    row.update({f"input_{k}": v for k, v in evaluation.image_metrics(low, high).items()})
    row.update({f"enhanced_{k}": v for k, v in evaluation.image_metrics(enhanced, high).items()})
    rows.append(row)
  keys = ["input_psnr", "enhanced_psnr", "input_ssim", "enhanced_ssim"]
  mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  print(f"\n{'image':<16}{'PSNR in':>10}{'PSNR out':>10}{'SSIM in':>10}{'SSIM out':>10}")
  for r in rows + [dict(name="mean", **mean)]:
    print(f"{r['name']:<16}" + "".join(f"{r[k]:>10.3f}" for k in keys))
  print(f"\nPSNR gain on the embedded test split: {mean['enhanced_psnr'] - mean['input_psnr']:+.2f} dB "
        f"(SSIM {mean['input_ssim']:.3f} -> {mean['enhanced_ssim']:.3f}). Run dir: {workdir}")
  atomic_io.write_json_atomic(os.path.join(workdir, "demo_results.json"),
                              {"images": rows, "mean": mean})


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
