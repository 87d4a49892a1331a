r"""Converts released PyTorch weights to a lowlight_jax converted-weights file (msgpack + metadata).

  lowlight convert --method ... --input FILE --output PATH
  python -m launch.convert_weights --method {sgz,zero_dce,scl_lle,retinexnet_decom,resnet50,vgg16} \
      --input FILE(.pth/.pt/.bin/.safetensors/.npz) --output PATH [--key state_dict]
  # SKF (the network's shape - SE blocks or not, SNR's transformer depth - comes from the checkpoint's keys):
  python -m launch.convert_weights --method skf_drbn --input model_lol.pt --output drbn_skf.msgpack
  python -m launch.convert_weights --method skf_snr --input SNR_SKF_LOL.pth --output snr_skf.msgpack
  python -m launch.convert_weights --method skf_hrnet --input hrnet_w48_pascal_context_cls59_480x480.pth \
      --output hrnet_w48.msgpack

The SKF files load wherever the originals do: `--config.init_from`, `--config.hrnet.weights`, and
`launch.enhance --method skf_drbn|skf_snr --weights ... --seg-weights ...`.

The torch file is read without torch and without executing pickled code
(`lowlight_jax.convert.torch_pickle`); the result is checked against the Flax model and loads with
`lowlight_jax.convert.weights.load_params` or `lowlight_jax.inference.released.load_released`.
A missing or unreadable --input, or weights that do not fit --method, are one error line (exit 2).
"""

import os
import pickle

from absl import app
from absl import flags

from launch import _common  # (quiet TensorFlow before jax imports)
from lowlight_jax import errors

_METHODS = ["sgz", "zero_dce", "scl_lle", "retinexnet_decom", "resnet50", "vgg16", "skf_drbn", "skf_snr",
            "skf_hrnet"]
_METHOD = flags.DEFINE_enum("method", None, _METHODS, "Released network the weights belong to.")
_INPUT = flags.DEFINE_string("input", None, "Checkpoint (.pth/.pt/.bin/.safetensors/.npz).")
_OUTPUT = flags.DEFINE_string("output", None, "Destination of the converted file.")
_SEG_VARIANT = flags.DEFINE_enum("seg_variant", "w48", ["w48", "tiny", "mini"],
                                 "skf_hrnet: the HRNet ('tiny', 'mini': the small test networks).")
flags.DEFINE_alias("seg-variant", "seg_variant")
_KEY = flags.DEFINE_string("key", None, "Key of the state dict in the checkpoint (default: auto).")
flags.mark_flags_as_required(["method", "input", "output"])


def _convert_skf(kind: str, path: str):
  """An SKF network's checkpoint -> (variables, what it holds); errors name the file (WeightsError)."""
  if kind == "skf_hrnet":
    from lowlight_jax.convert import hrnet as hrnet_convert
    from lowlight_jax.methods import skf_common
    config = skf_common.HRNET_VARIANTS[_SEG_VARIANT.value]
    return (hrnet_convert.load_hrnet(path, config),
            f"HRNet {_SEG_VARIANT.value} ({config.num_classes} classes)")
  from lowlight_jax.convert import skf
  network = "DRBN" if kind == "skf_drbn" else "SNR"
  variables, info = skf.network_variables(network, path)
  what = f"{network}{'-SKF' if info['skf'] else ''}"
  if "n_layers" in info:
    what += f" ({info['n_layers']} transformer layers)"
  return variables, what


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  path = _INPUT.value
  if not os.path.exists(path):
    raise errors.InputError(f"--input {path}: no such file")
  if os.path.isdir(path):
    raise errors.InputError(f"--input {path} is a folder; give the weights file")
  if os.path.abspath(_OUTPUT.value) == os.path.abspath(path):
    raise errors.OutputError(f"--output {_OUTPUT.value} is the --input file; give another path")
  import jax
  from lowlight_jax.convert import io, weights

  if _METHOD.value in weights.TOWER_KINDS:
    variables, what = _convert_skf(_METHOD.value, path)
    weights.save_params(_OUTPUT.value, variables, method=_METHOD.value, source=path)
    n = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
    print(f"{_METHOD.value}: {what} -> {n:,} parameters; wrote {_OUTPUT.value}")
    return
  try:
    state_dict = io.load_state_dict(path, key=_KEY.value)
  except errors.UserError:
    raise
  except (ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:  # Not a (supported) weights file.
    raise errors.InputError(f"--input {path}: {errors.one_line(e)}") from e
  try:
    variables = weights.convert(_METHOD.value, state_dict)
  except errors.UserError:
    raise
  except ValueError as e:  # The tensors do not fit the network (every offending key is listed).
    raise errors.WeightsError(f"--input {path} does not fit --method {_METHOD.value}: {errors.one_line(e)}") from e
  weights.save_params(_OUTPUT.value, variables, method=_METHOD.value, source=_INPUT.value)
  n = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
  print(f"{_METHOD.value}: {len(state_dict)} tensors -> {n:,} parameters; wrote {_OUTPUT.value}")


def run():
  _common.run(main)


if __name__ == "__main__":
  run()
