"""FID: the Flax InceptionV3 vs torchvision's Inception3 with pytorch-fid's block changes (random
weights, built here), the resize vs torch, and the Fréchet distance vs pytorch-fid's formula."""

import jax
import numpy as np
import pytest
from scipy import linalg
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import inception as tv_inception

from lowlight_jax.metrics import fid


# pytorch-fid's FID blocks: pools without counting padding; Mixed_7c max-pools its pool branch.
class _FIDInceptionA(tv_inception.InceptionA):

  def forward(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    return torch.cat([b1, b5, b3, bp], 1)


class _FIDInceptionC(tv_inception.InceptionC):

  def forward(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    return torch.cat([b1, b7, bd, bp], 1)


class _FIDInceptionE(tv_inception.InceptionE):

  def __init__(self, in_channels, pool):
    super().__init__(in_channels)
    self.pool = pool

  def forward(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    if self.pool == "avg":
      p = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    else:
      p = F.max_pool2d(x, 3, 1, 1)
    return torch.cat([b1, b3, bd, self.branch_pool(p)], 1)


def _fid_inception_torch():
  """pytorch-fid `fid_inception_v3()` with random weights (callers drop `fc` to get pool3)."""
  net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                        num_classes=1008)
  net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (_FIDInceptionA(192, 32), _FIDInceptionA(256, 64),
                                              _FIDInceptionA(288, 64))
  net.Mixed_6b, net.Mixed_6c = _FIDInceptionC(768, 128), _FIDInceptionC(768, 160)
  net.Mixed_6d, net.Mixed_6e = _FIDInceptionC(768, 160), _FIDInceptionC(768, 192)
  net.Mixed_7b, net.Mixed_7c = _FIDInceptionE(1280, "avg"), _FIDInceptionE(2048, "max")
  g = torch.Generator().manual_seed(0)
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics and affine terms
      m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
      m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
      m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
      m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
  return net.eval()


@pytest.mark.parity
def test_inception_matches_torch_fid_variant(tmp_path):
  torch.manual_seed(0)
  net = _fid_inception_torch()
  path = tmp_path / "pt_inception.pth"
  torch.save(net.state_dict(), path)  # the pt_inception-2015-12-05 layout, fc included
  variables = fid.load_variables(path)
  n_params = sum(p.numel() for k, p in net.named_parameters() if not k.startswith("fc."))
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == n_params
  # 139x150 px leaves 3x3 maps at Mixed_7*, so padding-aware pools differ from plain ones.
  x = np.random.default_rng(0).random((2, 139, 150, 3)).astype(np.float32)
  net.fc = torch.nn.Identity()
  with torch.no_grad():
    # pytorch-fid's normalize_input: x -> 2x - 1.
    want = net(torch.from_numpy(x).permute(0, 3, 1, 2) * 2 - 1).numpy()
  ours = np.asarray(jax.jit(fid.InceptionV3(resize_input=False).apply)(variables, x))
  assert ours.shape == want.shape == (2, 2048)
  scale = np.abs(want).max()
  assert scale > 0
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5 * scale)


def test_resize_matches_torch_bilinear():
  x = np.random.default_rng(1).random((1, 37, 610, 3)).astype(np.float32)  # up in H, down in W
  ours = np.asarray(fid.resize_299(x))
  want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                       align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, want, rtol=0, atol=2e-6)


def _pytorch_fid_distance(mu1, s1, mu2, s2):
  """pytorch-fid `calculate_frechet_distance` (scipy sqrtm of the product)."""
  covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
  covmean = covmean.real
  diff = mu1 - mu2
  return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_distance():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((16, 16)), rng.standard_normal((16, 16))
  s1, s2 = a @ a.T / 16, b @ b.T / 16 + 0.1 * np.eye(16)
  mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
  want = _pytorch_fid_distance(mu1, s1, mu2, s2)
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
  assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-9
  # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
  v1, v2 = rng.random(8) + 0.1, rng.random(8) + 0.1
  closed = np.sum((mu1[:8] - mu2[:8])**2) + np.sum((np.sqrt(v1) - np.sqrt(v2))**2)
  got = fid.frechet_distance(mu1[:8], np.diag(v1), mu2[:8], np.diag(v2))
  assert got == pytest.approx(closed, rel=1e-12)


def test_fid_from_features_uses_sample_statistics():
  rng = np.random.default_rng(2)
  f1, f2 = rng.standard_normal((50, 6)), rng.standard_normal((40, 6)) + 0.5
  want = _pytorch_fid_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0),
                               np.cov(f2, rowvar=False))
  assert fid.fid_from_features(f1, f2) == pytest.approx(want, rel=1e-9)
  with pytest.raises(ValueError, match="N >= 2"):
    fid.statistics(f1[:1])
