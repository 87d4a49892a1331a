"""VGG-16 features in the torchvision layout: structure and parity with torchvision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from lowlight_jax.convert import layout
from lowlight_jax.models import vgg


def test_param_count_and_truncation():
  x = jnp.zeros((1, 32, 32, 3))
  full = jax.eval_shape(vgg.VGG16Features().init, jax.random.key(0), x)
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(full)) == 14_714_688
  assert sorted(full["params"]["features"], key=int) == [
      "0", "2", "5", "7", "10", "12", "14", "17", "19", "21", "24", "26", "28"]
  short = jax.eval_shape(vgg.VGG16Features(stop_at="relu2_2").init, jax.random.key(0), x)
  assert sorted(short["params"]["features"], key=int) == ["0", "2", "5", "7"]
  with pytest.raises(ValueError, match="stop_at"):
    vgg.VGG16Features(stop_at="relu9_9").init(jax.random.key(0), x)


@pytest.mark.parity
def test_parity_with_torchvision():
  torch.manual_seed(0)
  net = torchvision.models.vgg16(weights=None).features.eval()
  sd = {f"features.{k}": v.numpy() for k, v in net.state_dict().items()}
  x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
  taps = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3", 29: "relu5_3"}
  ref, h = {}, torch.from_numpy(x)
  with torch.no_grad():
    for i, layer in enumerate(net):
      h = layer(h)
      if i in taps:
        ref[taps[i]] = h.permute(0, 2, 3, 1).numpy()
  model = vgg.VGG16Features(precision=jax.lax.Precision.HIGHEST)
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  target = jax.eval_shape(model.init, jax.random.key(0), xj)
  variables = layout.assign(target, layout.torch_to_flax(sd))
  out = model.apply(variables, xj)
  assert sorted(out) == sorted(taps.values())
  for name, r in ref.items():
    err = np.max(np.abs(np.asarray(out[name]) - r)) / np.max(np.abs(r))
    assert err <= 1e-4, (name, err)
