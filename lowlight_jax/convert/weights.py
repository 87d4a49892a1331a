"""Converting released PyTorch weights to Flax variables, and our converted-weights file format.

`convert(method, state_dict)` maps a torch state dict (numpy arrays, e.g. from
`convert.io.load_state_dict`) to `{'params': ..., ['batch_stats': ...]}` by the naming rule of
docs/CONVENTIONS.md and checks it, entry by entry, against the Flax model's own init tree
(`layout.assign`), so a wrong checkpoint fails with torch-style missing / unexpected / mis-shaped
key lists.

Methods, their released checkpoints and Flax models:
  * `sgz`: SGZ `weight/Epoch99.pth` -> `models.sgz.EnhancementFactorExtractor`;
  * `zero_dce`: Zero-DCE `snapshots/Epoch99.pth` -> `models.dce_net.DCENet`;
  * `scl_lle`: SCL-LLE `checkpoints/SCL-LLE.pth` -> `models.dce_net.DCENet`;
  * `retinexnet_decom`: GEFU `retinexnet/decomp.pth` -> `models.retinexnet.RetinexNet`;
  * `resnet50`: torchvision ImageNet weights -> `models.resnet.ResNet50` (`fc` dropped);
  * `vgg16`: torchvision ImageNet weights -> `models.vgg.VGG16Features` (`classifier` dropped).

Converted files (`save_params` / `load_params`) are flax msgpack: `{format, method, source_name,
source_sha256, variables}`, written atomically (temporary file + `os.replace`).
"""

import hashlib
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from lowlight_jax.convert import layout

PathLike = str | os.PathLike
Variables = dict[str, Any]

METHODS = ("sgz", "zero_dce", "scl_lle", "retinexnet_decom", "resnet50", "vgg16")
#: Networks whose converted files are read by their own loaders (`convert.skf`, `convert.hrnet`), checked against
#: the target the method builds (their shapes depend on the checkpoint: SE blocks or not, transformer depth).
TOWER_KINDS = ("skf_drbn", "skf_snr", "skf_hrnet")
# Methods that share an architecture can load each other's converted files.
_ARCHITECTURE = {"sgz": "sgz_efe", "zero_dce": "dce_net", "scl_lle": "dce_net",
                 "retinexnet_decom": "retinexnet_decom", "resnet50": "resnet50", "vgg16": "vgg16"}
FORMAT = "lowlight_jax.converted_weights/1"
_MAGIC = b"\xa6format"  # msgpack str "format": our files start with a map whose first key is it


def _check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  return method


def build_model(method: str, **kwargs: Any) -> nn.Module:
  """The Flax module whose variables `convert(method, ...)` produces (`kwargs`: its fields)."""
  _check_method(method)
  if method == "sgz":
    from lowlight_jax.models import sgz
    return sgz.EnhancementFactorExtractor(**kwargs)
  if method in ("zero_dce", "scl_lle"):
    from lowlight_jax.models import dce_net
    return dce_net.DCENet(**kwargs)
  if method == "retinexnet_decom":
    from lowlight_jax.models import retinexnet
    return retinexnet.RetinexNet(**kwargs)
  if method == "vgg16":
    from lowlight_jax.models import vgg
    return vgg.VGG16Features(**kwargs)
  from lowlight_jax.models import resnet  # resnet50
  return resnet.ResNet50(**kwargs)


def init_shapes(method: str) -> Variables:
  """`jax.eval_shape` of the model's init on a small image (no compute, no random numbers)."""
  model = build_model(method)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))


def convert(method: str, state_dict: Mapping[str, Any]) -> Variables:
  """Converts a torch state dict of `method`'s released network to validated Flax variables.

  Args:
    method: one of `METHODS`.
    state_dict: torch key -> array in torch layout (as returned by `convert.io.load_state_dict`).

  Returns:
    `{'params': ..., 'batch_stats': ...}` (the latter only for networks with BatchNorm), numpy
    float32 leaves.

  Raises:
    ValueError: the state dict does not match the network (every offending key is listed).
  """
  _check_method(method)
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  if method == "resnet50":
    from lowlight_jax.convert import torchvision_resnet
    return torchvision_resnet.convert_resnet50(sd)
  if method == "vgg16":
    # Only the convolutional trunk is ported; the ImageNet classifier is not needed by any method.
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
  return layout.assign(init_shapes(method), layout.torch_to_flax(sd), strict=True)


def file_sha256(path: PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def save_params(path: PathLike, variables: Mapping[str, Any], *, method: str,
                source: PathLike | None = None, source_sha256: str | None = None) -> None:
  """Writes converted variables with a metadata header, atomically.

  Args:
    path: destination file (its folder is created).
    variables: Flax variables (`params`, optional `batch_stats`); arrays of any kind.
    method: the method name stored in the header (checked by `load_params` users).
    source: the original checkpoint, whose base name and sha256 are recorded.
    source_sha256: the hash, if already known (otherwise computed from `source`).
  """
  if method not in TOWER_KINDS:
    _check_method(method)
  if source is not None and source_sha256 is None:
    source_sha256 = file_sha256(source)
  payload = {
      "format": FORMAT,  # first key: the file then starts with _MAGIC (after the map header byte)
      "method": method,
      "source_name": os.path.basename(os.fspath(source)) if source is not None else "",
      "source_sha256": source_sha256 or "",
      "variables": jax.tree.map(lambda a: np.asarray(a), dict(variables)),
  }
  data = serialization.msgpack_serialize(payload)
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".msgpack", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def is_converted_file(path: PathLike) -> bool:
  """Whether `path` looks like a file written by `save_params`."""
  with open(path, "rb") as f:
    head = f.read(1 + len(_MAGIC))
  return len(head) == 1 + len(_MAGIC) and 0x80 <= head[0] <= 0x8F and head[1:] == _MAGIC


def load_params(path: PathLike) -> tuple[Variables, dict[str, str]]:
  """Reads a `save_params` file -> (variables with numpy leaves, metadata without the variables)."""
  if not is_converted_file(path):
    raise ValueError(f"{path} is not a converted-weights file written by lowlight_jax")
  with open(path, "rb") as f:
    payload = serialization.msgpack_restore(f.read())
  if payload.get("format") != FORMAT:
    raise ValueError(f"{path}: unsupported converted-weights format {payload.get('format')!r}")
  variables = payload.pop("variables")
  return variables, {k: str(v) for k, v in payload.items()}


def load_converted(path: PathLike, kind: str, target_variables: Mapping[str, Any]) -> Variables:
  """A converted file of `kind` (one of `TOWER_KINDS`), checked entry by entry against `target_variables`.

  Raises:
    errors.WeightsError: naming the file: another kind's weights, or entries that do not fit the target.
  """
  from lowlight_jax import errors  # pylint: disable=g-import-not-at-top

  variables, meta = load_params(path)
  if meta.get("method") != kind:
    raise errors.WeightsError(f"{path} holds converted {meta.get('method')!r} weights, not {kind!r}")
  try:
    return layout.assign(target_variables, variables, strict=True)
  except ValueError as e:
    raise errors.WeightsError(f"{path}: {errors.one_line(e)}") from None


def same_architecture(a: str, b: str) -> bool:
  return _ARCHITECTURE[_check_method(a)] == _ARCHITECTURE[_check_method(b)]
