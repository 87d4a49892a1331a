"""torchvision-layout ResNet-50 (lowlight_jax/models/resnet.py) vs torchvision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.models import resnet as tv_resnet

from lowlight_jax.convert import layout
from lowlight_jax.convert.torchvision_resnet import convert_resnet50
from lowlight_jax.models import resnet


def _torch_resnet(stage_sizes, seed: int) -> torch.nn.Module:
  """A torchvision ResNet with random weights AND random BatchNorm affine/running statistics."""
  torch.manual_seed(seed)
  model = tv_resnet.ResNet(tv_resnet.Bottleneck, list(stage_sizes))
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 2.0)
  return model.eval()


def _torch_features(model, x: torch.Tensor) -> dict[str, np.ndarray]:
  h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
  out = {}
  for i, layer in enumerate([model.layer1, model.layer2, model.layer3, model.layer4]):
    h = layer(h)
    out[f"c{i + 2}"] = h.detach().numpy().transpose(0, 2, 3, 1)
  return out


def _rel_err(a, b) -> float:
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def _state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parity
def test_resnet50_matches_torchvision_eval():
  tmodel = tv_resnet.resnet50(weights=None)
  with torch.no_grad():
    for m in tmodel.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 2.0)
  tmodel.eval()
  x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    want = _torch_features(tmodel, x)
  variables = convert_resnet50(_state_dict(tmodel))
  got = jax.jit(resnet.ResNet50().apply)(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  for k, stride in zip(("c2", "c3", "c4", "c5"), (4, 8, 16, 32)):
    assert got[k].shape == want[k].shape and want[k].shape[1] == 64 // stride
    assert _rel_err(got[k], want[k]) <= 1e-4, k


def test_param_count_and_names():
  shapes = jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  # torchvision resnet50: 25,557,032 parameters, of which fc holds 2048 * 1000 + 1000.
  assert sum(np.prod(v.shape) for v in jax.tree.leaves(shapes["params"])) == 25_557_032 - 2_049_000
  torch_keys = {k for k in tv_resnet.resnet50(weights=None).state_dict()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
  flax_keys = set(layout.flax_to_torch(jax.tree.map(lambda s: np.zeros(s.shape), shapes)))
  assert flax_keys == torch_keys


def test_tiny_variant_eval_and_train_modes():
  tmodel = _torch_resnet((1, 1, 1, 1), seed=1)
  x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
  xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  variables = convert_resnet50(_state_dict(tmodel), stage_sizes=(1, 1, 1, 1))
  model = resnet.ResNet50(stage_sizes=(1, 1, 1, 1))
  with torch.no_grad():
    want_eval = _torch_features(tmodel, x)
    tmodel.train()
    want_train = _torch_features(tmodel, x)
  got_eval = jax.jit(model.apply)(variables, xj)
  got_train, updates = jax.jit(lambda v, a: model.apply(v, a, train=True, mutable=["batch_stats"]))(
      variables, xj)
  for k in want_eval:
    assert _rel_err(got_eval[k], want_eval[k]) <= 1e-5, k
    assert _rel_err(got_train[k], want_train[k]) <= 1e-5, k
    assert _rel_err(got_train[k], want_eval[k]) > 1e-2  # the two modes really differ
  # Running means move with torch momentum 0.1 (= flax 0.9).
  new_mean = updates["batch_stats"]["layer2"]["0"]["bn1"]["mean"]
  np.testing.assert_allclose(np.asarray(new_mean), tmodel.layer2[0].bn1.running_mean.numpy(),
                             atol=1e-6)


def test_convert_validates_keys():
  sd = _state_dict(_torch_resnet((1, 1, 1, 1), seed=2))
  assert "fc.weight" in sd
  convert_resnet50(sd, stage_sizes=(1, 1, 1, 1))  # fc.* is dropped silently
  broken = dict(sd)
  del broken["layer3.0.downsample.1.running_var"]
  broken["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"layer3\.0\.downsample\.1\.running_var") as e:
    convert_resnet50(broken, stage_sizes=(1, 1, 1, 1))
  assert "layer5.0.conv1.weight" in str(e.value)
  with pytest.raises(ValueError, match="layer1.1.conv1.weight"):
    convert_resnet50(sd, stage_sizes=(2, 1, 1, 1))
