"""SKF at the command line: released-weight enhancement (`launch.enhance --method skf_drbn --weights
--seg-weights`), `launch.convert_weights` for the SKF networks, and the errors that name bad weights files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import skf_drbn as skf_config
from lowlight_jax.convert import hrnet as hrnet_convert
from lowlight_jax.convert import layout
from lowlight_jax.convert import skf as skf_convert
from lowlight_jax.convert import weights as convert_weights
from lowlight_jax.methods import base
from lowlight_jax.methods import skf_common
from lowlight_jax.models import hrnet as hrnet_lib
from lowlight_jax.train import evaluation


@pytest.fixture(scope="module")
def files(tmp_path_factory, conformance_dir):
  """The DRBN-SKF fixture checkpoint, a tiny HRNet saved as the authors' checkpoint layout (`model.` keys), the
  same HRNet with 19 classes, and a 45x38 input image."""
  root = tmp_path_factory.mktemp("skf_cli")
  model = hrnet_lib.HRNet(config=skf_common.HRNET_TINY)
  hrnet_vars = skf_common.init_hrnet(model, jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
  torch_sd = layout.flax_to_torch(jax.device_get(hrnet_vars))
  np.savez(root / "hrnet_tiny.npz", **{f"model.{k}": v for k, v in torch_sd.items()})
  wrong = dict(torch_sd)
  wrong[hrnet_convert.CLASSIFIER_KEY] = wrong[hrnet_convert.CLASSIFIER_KEY][:19]
  wrong[hrnet_convert.CLASSIFIER_KEY.replace("weight", "bias")] = wrong[
      hrnet_convert.CLASSIFIER_KEY.replace("weight", "bias")][:19]
  np.savez(root / "hrnet_19_classes.npz", **wrong)
  inputs = root / "in"
  inputs.mkdir()
  image = np.asarray(Image.open(conformance_dir / "inputs/LIME/3.png").convert("RGB"))[:38, :45]
  Image.fromarray(image).save(inputs / "a.png")
  return {"root": root, "drbn": conformance_dir / "fixtures/skf_drbn_net_weights.npz",
          "snr": conformance_dir / "fixtures/skf_snr_net_weights.npz", "hrnet": root / "hrnet_tiny.npz",
          "hrnet_19": root / "hrnet_19_classes.npz", "inputs": inputs, "image": image,
          "hrnet_vars": hrnet_vars}


def _expected(files) -> np.ndarray:
  """The method's own `enhance` on variables converted in-process (no CLI, no trainer placement)."""
  config = skf_config.get_config("smoke")
  config.loss_weights.sch = config.loss_weights.adversarial = 0.0
  method = base.load_method(config)
  params = {"enhancer": skf_convert.load_drbn(str(files["drbn"]), {"params": jax.eval_shape(
      lambda: dict(method.init(jax.random.key(0), method.example_batch())))["params"]["enhancer"]})["params"]}
  x = jnp.asarray(files["image"], jnp.float32)[None] / 255.0
  out = method.enhance(params, {}, {"hrnet": files["hrnet_vars"]}, x)["enhanced"]
  return evaluation.quantize(np.asarray(out[0]))


def test_released_drbn_skf_enhances_like_the_method_from_originals_and_converted_files(files, run_module, tmp_path):
  common = ["--input", str(files["inputs"]), "--seg-variant", "tiny"]
  res = run_module(["launch.enhance", "--method", "skf_drbn", "--weights", str(files["drbn"]), "--seg-weights",
                    str(files["hrnet"]), "--output", str(tmp_path / "orig"), *common])
  assert res.returncode == 0, res.stderr[-3000:]
  got = np.asarray(Image.open(tmp_path / "orig" / "a.png"))
  assert got.shape == files["image"].shape  # Any size: padded to multiples of 4 and cropped back.
  np.testing.assert_array_equal(got, _expected(files))

  # Converted files (launch.convert_weights) give the same image.
  for kind, src, extra, what in (("skf_drbn", files["drbn"], [], "DRBN-SKF -> 599,132 parameters"),
                                 ("skf_hrnet", files["hrnet"], ["--seg-variant", "tiny"], "(59 classes)")):
    res = run_module(["launch.convert_weights", "--method", kind, "--input", str(src), "--output",
                      str(tmp_path / f"{kind}.msgpack"), *extra])
    assert res.returncode == 0, res.stderr[-3000:]
    assert what in res.stdout
    assert convert_weights.load_params(tmp_path / f"{kind}.msgpack")[1]["method"] == kind
  res = run_module(["launch.enhance", "--method", "skf_drbn", "--weights", str(tmp_path / "skf_drbn.msgpack"),
                    "--seg-weights", str(tmp_path / "skf_hrnet.msgpack"), "--output", str(tmp_path / "conv"),
                    *common])
  assert res.returncode == 0, res.stderr[-3000:]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "conv" / "a.png")), got)


def test_convert_weights_reads_the_network_from_the_checkpoint(files, run_module, tmp_path):
  res = run_module(["launch.convert_weights", "--method", "skf_snr", "--input", str(files["snr"]), "--output",
                    str(tmp_path / "snr.msgpack")])
  assert res.returncode == 0, res.stderr[-3000:]
  depth = skf_convert.snr_transformer_depth(np.load(files["snr"]))
  assert f"SNR-SKF ({depth} transformer layers)" in res.stdout
  assert skf_convert.released_info("SNR", str(tmp_path / "snr.msgpack")) == {"skf": True, "n_layers": depth}
  # The wrong network: one line naming the file and what it holds; nothing written.
  res = run_module(["launch.convert_weights", "--method", "skf_drbn", "--input", str(files["snr"]), "--output",
                    str(tmp_path / "x.msgpack")])
  assert res.returncode == 2 and "looks like SNR-SKF" in res.stderr and str(files["snr"]) in res.stderr
  assert not (tmp_path / "x.msgpack").exists()


@pytest.mark.parametrize("case", ["wrong_network", "wrong_classes", "missing_seg", "no_seg"])
def test_bad_weights_are_one_line_naming_the_file(case, files, run_module, tmp_path):
  weights, seg, expected = {
      "wrong_network": (files["snr"], files["hrnet"], [str(files["snr"]), "looks like SNR-SKF"]),
      "wrong_classes": (files["drbn"], files["hrnet_19"], [str(files["hrnet_19"]), "has 19 classes, the model 59"]),
      "missing_seg": (files["drbn"], tmp_path / "nope.pth", ["--seg-weights", "nope.pth", "is not a file"]),
      "no_seg": (files["drbn"], None, ["--seg-weights"]),
  }[case]
  args = ["launch.enhance", "--method", "skf_drbn", "--weights", str(weights), "--seg-variant", "tiny",
          "--input", str(files["inputs"]), "--output", str(tmp_path / "out")]
  if seg is not None:
    args += ["--seg-weights", str(seg)]
  res = run_module(args)
  assert res.returncode != 0
  last = res.stderr.strip().splitlines()[-1]
  for text in expected:
    assert text in last, (case, res.stderr[-2000:])
  assert "Traceback" not in res.stderr
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
