"""PyTorch re-creations of the authors' SGZ pipelines, timed beside ours by `launch.benchmark --peer`.

Only the benchmark imports this (the library never imports torch). Both peers run the authors' architecture and
arithmetic (`modeling/fpn.py`, `model.py enhance_net_nopool` with conv_type='dsc', `Myloss.py`, `train.py`) on 2
CPU threads, the machine's cores, like our XLA CPU backend:

  inference   downsample by 1/s (bilinear), the DSC enhancement-factor extractor, align-corners upsample, the 8
              curve iterations; the same weights as ours;
  train step  the enhancer's forward at scale 1, the frozen USS (torchvision ResNet-50 + the FPN head, eval-mode
              BatchNorm as our default `bn_use_batch_stats=False`) on the enhanced image, the released loss
              (1600 TV + spa + 5 color + 10 exposure + 0.1 focal), backward, global-norm clip 0.1 and Adam with
              coupled weight decay 1e-4: what `configs/sgz.py` trains.
"""

from __future__ import annotations

import numpy as np

from lowlight_jax.analysis import speed


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  return torch


def _dsc_state(params) -> dict:
  """Flax SGZ params -> the authors' state dict (torch tensors)."""
  from lowlight_jax.convert import layout  # pylint: disable=g-import-not-at-top
  torch = _torch()
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layout.flax_to_torch({"params": params}).items()}


def _efe(sd, x):
  """`enhance_net_nopool` (conv_type='dsc') on x (N, 3, H, W) -> x_r."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch = _torch()

  def dsc(v, name):
    w = sd[f"{name}.depth_conv.weight"]
    v = F.conv2d(v, w, sd[f"{name}.depth_conv.bias"], padding=1, groups=w.shape[0])
    return F.conv2d(v, sd[f"{name}.point_conv.weight"], sd[f"{name}.point_conv.bias"])

  x1 = F.relu(dsc(x, "e_conv1"))
  x2 = F.relu(dsc(x1, "e_conv2"))
  x3 = F.relu(dsc(x2, "e_conv3"))
  x4 = F.relu(dsc(x3, "e_conv4"))
  x5 = F.relu(dsc(torch.cat([x3, x4], 1), "e_conv5"))
  x6 = F.relu(dsc(torch.cat([x2, x5], 1), "e_conv6"))
  return torch.tanh(dsc(torch.cat([x1, x6], 1), "e_conv7"))


def _curves(x, x_r):
  for _ in range(8):
    x = x + x_r * (x * x - x)
  return x


def sgz_inference(params, repeats: int) -> dict:
  """Images/s of the released test pipeline at 1200x900, batch 1, scale factors 12 and 1."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch = _torch()
  sd = _dsc_state(params)

  def forward(x, scale):
    x_down = x if scale == 1 else F.interpolate(x, scale_factor=1 / scale, mode="bilinear")
    x_r = _efe(sd, x_down)
    if scale != 1:
      x_r = F.interpolate(x_r, scale_factor=scale, mode="bilinear", align_corners=True)
    return _curves(x, x_r)

  out = {}
  with torch.no_grad():
    for scale in (12, 1):
      x = torch.rand(1, 3, 900, 1200) * 0.3
      reps = repeats if scale == 12 else 1
      out[f"scale_{scale}_batch_1_images_per_s"] = 1 / speed.mean_seconds(lambda: forward(x, scale), reps)
  return out


def _uss(num_classes: int = 21):
  """The authors' `fpn` (torchvision ResNet-50 + `fpn_module`), random weights, as a torch.nn.Module."""
  torch = _torch()
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torchvision.models import resnet50  # pylint: disable=g-import-not-at-top

  class Head(nn.Module):

    def __init__(self):
      super().__init__()
      self.toplayer = nn.Conv2d(2048, 256, 1)
      self.latlayer1 = nn.Conv2d(1024, 256, 1)
      self.latlayer2 = nn.Conv2d(512, 256, 1)
      self.latlayer3 = nn.Conv2d(256, 256, 1)
      for i in range(1, 5):
        setattr(self, f"smooth{i}_1", nn.Conv2d(256, 256, 3, padding=1))
        setattr(self, f"smooth{i}_2", nn.Conv2d(256, 128, 3, padding=1))
      self.classify = nn.Conv2d(512, num_classes, 3, padding=1)

    @staticmethod
    def _up_add(x, y):
      return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=False) + y

    def forward(self, c2, c3, c4, c5):
      p5 = self.toplayer(c5)
      p4 = self._up_add(p5, self.latlayer1(c4))
      p3 = self._up_add(p4, self.latlayer2(c3))
      p2 = self._up_add(p3, self.latlayer3(c2))
      ps = [getattr(self, f"smooth{i}_2")(getattr(self, f"smooth{i}_1")(p)) for i, p in
            zip(range(1, 5), (p5, p4, p3, p2))]
      size = ps[3].shape[2:]
      cat = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in ps[:3]] + [ps[3]]
      return self.classify(torch.cat(cat, 1))

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      r = resnet50(weights=None)
      self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
      self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
      self.head = Head()

    def forward(self, x):
      c2 = self.layer1(self.stem(x))
      c3 = self.layer2(c2)
      c4 = self.layer3(c3)
      c5 = self.layer4(c4)
      return self.head(c2, c3, c4, c5)

  return Net()


def _losses(x, x_r, enhanced, logits):
  """The released total: 1600 TV(x_r) + spa8(4) + 5 color + 10 exposure(16, 0.6) + 0.1 focal(gamma 2)."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch = _torch()
  b, _, h, w = x_r.shape
  tv = 2 * (((x_r[:, :, 1:] - x_r[:, :, :-1]) ** 2).sum() / ((h - 1) * w)
            + ((x_r[:, :, :, 1:] - x_r[:, :, :, :-1]) ** 2).sum() / (h * (w - 1))) / b
  pe = F.avg_pool2d(enhanced.mean(1, keepdim=True), 4)
  pl = F.avg_pool2d(x.mean(1, keepdim=True), 4)
  kernels = torch.zeros(8, 1, 3, 3)
  for i, (dy, dx) in enumerate(((0, -1), (0, 1), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))):
    kernels[i, 0, 1, 1] = 1
    kernels[i, 0, 1 + dy, 1 + dx] = -1
  weights = torch.tensor([1.0] * 4 + [0.5] * 4).view(1, 8, 1, 1)
  spa = (weights * (F.conv2d(pl, kernels, padding=1) - F.conv2d(pe, kernels, padding=1)) ** 2).sum(1).mean()
  m = enhanced.mean((2, 3))
  d_rg, d_rb, d_gb = m[:, 0] - m[:, 1], m[:, 0] - m[:, 2], m[:, 2] - m[:, 1]
  color = torch.sqrt(d_rg ** 4 + d_rb ** 4 + d_gb ** 4).mean()
  exposure = ((F.avg_pool2d(enhanced.mean(1, keepdim=True), 16) - 0.6) ** 2).mean()
  target = logits.argmax(1, keepdim=True).detach()
  p = logits.softmax(1).gather(1, target).clamp(1e-7, 1 - 1e-7)
  focal = (-(1 - p) ** 2 * p.log()).mean()
  return 1600 * tv + spa + 5 * color + 10 * exposure + 0.1 * focal


def sgz_train_step(params, batch: int, size: int, steps: int) -> dict:
  """Steps/s of one SGZ training step (see the module doc) on random images of size x size, batch `batch`."""
  torch = _torch()
  sd = {k: v.clone().requires_grad_(True) for k, v in _dsc_state(params).items()}
  uss = _uss().eval()
  for p in uss.parameters():
    p.requires_grad_(False)
  opt = torch.optim.Adam(list(sd.values()), lr=1e-4, weight_decay=1e-4)  # coupled L2, as released
  x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.3

  def step():
    opt.zero_grad(set_to_none=True)
    x_r = _efe(sd, x)
    enhanced = _curves(x, x_r)
    loss = _losses(x, x_r, enhanced, uss(enhanced))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(sd.values()), 0.1)
    opt.step()
    return loss

  sec = speed.mean_seconds(step, steps)
  return {"steps_per_s": 1 / sec, "images_per_s": batch / sec, "batch": batch, "size": size}
