"""The vision-aided CLIP multi-level discriminator (models/vision_aided.py) against PyTorch
re-creations of `vision_aided_loss` (written here from its semantics; the package is not a
dependency): area resize, DiffAugment, CLIP taps, spectral-norm heads, the multilevel loss.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowlight_jax.convert import openai_clip as convert_clip
from lowlight_jax.models import openai_clip
from lowlight_jax.models import vision_aided as va


def _nhwc(a):
  return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def _nchw(a):
  return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


def _max_diff(ours, ref):
  return float(np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64)).max())


def _rel_diff(ours, ref):
  return _max_diff(ours, ref) / max(float(np.abs(np.asarray(ref, np.float64)).max()), 1e-12)


# ---------------------------------------------------------------------------------------------
# Area resize


@pytest.mark.parametrize("in_hw", [(256, 256), (100, 100), (224, 224), (512, 512), (97, 300)])
def test_resize_area_matches_torch_interpolate_area(in_hw):
  x = np.random.default_rng(in_hw[0]).normal(size=(2, 3) + in_hw).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x), size=(224, 224), mode="area").numpy()
  got = jax.jit(va.resize_area, static_argnums=1)(jnp.asarray(_nhwc(x)), (224, 224))
  assert got.shape == (2, 224, 224, 3)
  assert _max_diff(_nchw(got), want) <= 1e-6


# ---------------------------------------------------------------------------------------------
# DiffAugment


def _torch_diff_augment(x, draws):
  """'color,translation,cutout' on NCHW x with the given draws, from the formulas."""
  b, _, h, w = x.shape
  x = x + (torch.from_numpy(draws["brightness"]).view(-1, 1, 1, 1) - 0.5)
  m = x.mean(dim=1, keepdim=True)
  x = (x - m) * (torch.from_numpy(draws["saturation"]).view(-1, 1, 1, 1) * 2) + m
  m = x.mean(dim=[1, 2, 3], keepdim=True)
  x = (x - m) * (torch.from_numpy(draws["contrast"]).view(-1, 1, 1, 1) + 0.5) + m
  # translation: gather from the 1-padded image at clamped shifted indices
  t = torch.from_numpy(draws["translation"]).long()
  gb, gx, gy = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
  gx = torch.clamp(gx + t[:, 0].view(-1, 1, 1) + 1, 0, h + 1)
  gy = torch.clamp(gy + t[:, 1].view(-1, 1, 1) + 1, 0, w + 1)
  xpad = F.pad(x, [1, 1, 1, 1])
  x = xpad.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)
  # cutout
  ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
  o = torch.from_numpy(draws["cutout"]).long()
  gb, gx, gy = torch.meshgrid(torch.arange(b), torch.arange(ch), torch.arange(cw), indexing="ij")
  gx = torch.clamp(gx + o[:, 0].view(-1, 1, 1) - ch // 2, 0, h - 1)
  gy = torch.clamp(gy + o[:, 1].view(-1, 1, 1) - cw // 2, 0, w - 1)
  mask = torch.ones(b, h, w)
  mask[gb, gx, gy] = 0
  return x * mask.unsqueeze(1)


def test_diff_augment_core_matches_torch_recreation():
  b, h, w = 5, 19, 28  # non-square, odd H (cutout 10 x 14, shifts 2 x 4)
  x = np.random.default_rng(0).uniform(-1, 1, (b, 3, h, w)).astype(np.float32)
  sx, sy = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
  draws = {"brightness": np.array([0.0, 0.2, 0.5, 0.9, 0.999], np.float32),
           "saturation": np.array([0.1, 0.0, 0.7, 0.5, 0.99], np.float32),
           "contrast": np.array([0.3, 0.8, 0.0, 0.6, 0.25], np.float32),
           # extremes of both ranges, per example
           "translation": np.array([[-sx, sy], [sx, -sy], [0, 0], [1, -3], [-2, 2]], np.int32),
           "cutout": np.array([[0, 0], [h, w], [h // 2, 3], [1, w - 1], [h - 1, 14]], np.int32)}
  want = _torch_diff_augment(torch.from_numpy(x), draws).numpy()
  got = jax.jit(va.diff_augment_with)(jnp.asarray(_nhwc(x)),
                                      {k: jnp.asarray(v) for k, v in draws.items()})
  assert _max_diff(_nchw(got), want) <= 1e-6
  # The cutout box and translation zero fill are present (the formulas did something).
  assert (np.asarray(got) == 0).all(axis=-1).sum() > b * 10


def test_diff_augment_random_draws_in_range_and_per_example():
  b, h, w = 64, 20, 30
  draws = va.sample_diff_augment_draws(jax.random.key(3), (b, h, w, 3))
  sx, sy = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
  ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
  for name in ("brightness", "saturation", "contrast"):
    d = np.asarray(draws[name])
    assert d.shape == (b,) and d.min() >= 0 and d.max() < 1 and len(np.unique(d)) > b // 2
  t, o = np.asarray(draws["translation"]), np.asarray(draws["cutout"])
  assert t.shape == o.shape == (b, 2)
  assert t[:, 0].min() == -sx and t[:, 0].max() == sx  # inclusive range, all reached at B=64
  assert t[:, 1].min() >= -sy and t[:, 1].max() <= sy and len(np.unique(t[:, 1])) > 3
  assert o[:, 0].min() >= 0 and o[:, 0].max() <= h - ch % 2  # exclusive upper bound
  assert o[:, 1].min() >= 0 and o[:, 1].max() <= w - cw % 2 and len(np.unique(o[:, 1])) > 5
  # The random wrapper is the core applied to those draws; a new key gives new draws.
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (b, h, w, 3)).astype(np.float32))
  np.testing.assert_array_equal(va.diff_augment(x, jax.random.key(3)),
                                va.diff_augment_with(x, draws))
  assert _max_diff(va.diff_augment(x, jax.random.key(4)), va.diff_augment_with(x, draws)) > 0.1
  # Per-example: identical images get different augmentations.
  same = jnp.broadcast_to(x[:1], x.shape)
  aug = np.asarray(va.diff_augment(same, jax.random.key(5)))
  assert _max_diff(aug[0], aug[1]) > 0.1
  # Policy subsets and no-ops.
  assert set(va.sample_diff_augment_draws(jax.random.key(0), x.shape, "color")) == {
      "brightness", "saturation", "contrast"}
  np.testing.assert_array_equal(va.diff_augment(x, jax.random.key(0), ()), x)
  with pytest.raises(ValueError, match="unknown"):
    va.diff_augment(x, jax.random.key(0), "color,rotate")


# ---------------------------------------------------------------------------------------------
# Heads: a PyTorch re-creation of MultiLevelDViT(level=3, 768, 512, 256, down=1)


class _TorchBlurPool(nn.Module):

  def __init__(self, channels):
    super().__init__()
    a = torch.tensor([1.0, 3.0, 3.0, 1.0])
    filt = a[:, None] * a[None, :]
    self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))

  def forward(self, x):
    return F.conv2d(F.pad(x, [1, 1, 1, 1]), self.filt, stride=1, groups=x.shape[1])


class _TorchHeads(nn.Module):

  def __init__(self, in_ch1=768, in_ch2=512, out_ch=256):
    super().__init__()
    sn = nn.utils.spectral_norm
    self.decoder = nn.ModuleList()
    for _ in range(2):
      self.decoder.append(nn.Sequential(
          nn.Identity(), sn(nn.Conv2d(in_ch1, out_ch, 3, stride=1, padding=1)),
          nn.LeakyReLU(0.2), _TorchBlurPool(out_ch), sn(nn.Conv2d(out_ch, 1, 1, stride=2))))
    self.decoder.append(nn.Sequential(sn(nn.Linear(in_ch2, out_ch)), nn.LeakyReLU(0.2)))
    self.out = sn(nn.Linear(out_ch, 1))

  def forward(self, x):
    preds = [self.decoder[i](x[i]).squeeze(1) for i in range(2)]
    return preds + [self.out(self.decoder[2](x[2].float()))]


_SN_LAYERS = ("decoder.0.1", "decoder.0.4", "decoder.1.1", "decoder.1.4", "decoder.2.0", "out")


def _flax_path(tree, key):
  for part in key.split("."):
    tree = tree[part]
  return tree


def _torch_from_flax(variables):
  """A torch re-creation holding the Flax heads' weights and u / v buffers."""
  ref = _TorchHeads()
  with torch.no_grad():
    for key in _SN_LAYERS:
      mod = ref.get_submodule(key)
      p, s = _flax_path(variables["params"], key), _flax_path(variables["batch_stats"], key)
      k = np.asarray(p["kernel"])
      k = k.transpose(3, 2, 0, 1) if k.ndim == 4 else k.T
      mod.weight_orig.copy_(torch.from_numpy(np.array(k)))
      mod.bias.copy_(torch.from_numpy(np.array(p["bias"])))
      mod.weight_u.copy_(torch.from_numpy(np.array(s["weight_u"])))
      mod.weight_v.copy_(torch.from_numpy(np.array(s["weight_v"])))
  return ref


def _features(b=2, g=7, c1=768, c2=512, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(b, g, g, c1)).astype(np.float32),
          rng.normal(size=(b, g, g, c1)).astype(np.float32),
          rng.normal(size=(b, c2)).astype(np.float32)]


def _torch_features(feats):
  return [torch.from_numpy(_nchw(feats[0])), torch.from_numpy(_nchw(feats[1])),
          torch.from_numpy(feats[2])]


@pytest.fixture(scope="module")
def heads():
  module = va.CLIPDiscriminatorHeads()
  variables = jax.jit(lambda k: module.init(k, [jnp.asarray(f) for f in _features(1)],
                                            update_stats=False))(jax.random.key(0))
  return module, jax.tree.map(np.asarray, variables)


@pytest.fixture(scope="module")
def heads_apply(heads):
  module, _ = heads
  train = jax.jit(lambda v, f: module.apply(v, f, update_stats=True, mutable=["batch_stats"]))
  evaluate = jax.jit(lambda v, f: module.apply(v, f, update_stats=False))
  return train, evaluate


def test_heads_layout_init_and_names(heads):
  module, variables = heads
  # Every torch key of the re-creation has its Flax place (naming rule: weight_orig -> kernel).
  torch_keys = set(_TorchHeads().state_dict())
  flax_keys = set()
  for coll in ("params", "batch_stats"):
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables[coll])[0]:
      key = ".".join(p.key for p in path)
      flax_keys.add(key.replace(".kernel", ".weight_orig"))
      if coll == "params":  # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        fan_in = leaf.size // leaf.shape[-1] if key.endswith("kernel") else None
        if fan_in:
          bound = 1 / np.sqrt(fan_in)
          assert 0.9 * bound < np.abs(leaf).max() <= bound * (1 + 1e-6), key
      else:
        np.testing.assert_allclose(np.linalg.norm(leaf), 1.0, rtol=1e-5, err_msg=key)
  assert flax_keys == {k for k in torch_keys if not k.endswith(".filt")}
  assert variables["params"]["decoder"]["0"]["1"]["kernel"].shape == (3, 3, 768, 256)
  assert variables["batch_stats"]["decoder"]["0"]["1"]["weight_v"].shape == (768 * 9,)
  assert variables["params"]["out"]["kernel"].shape == (256, 1)
  with pytest.raises(ValueError, match="expected 3 features"):
    module.apply(variables, [jnp.zeros((1, 7, 7, 768))] * 2, update_stats=False)


def test_heads_match_torch_spectral_norm_train_and_eval(heads, heads_apply):
  module, variables = heads
  train, evaluate = heads_apply
  ref = _torch_from_flax(variables).train()
  feats = _features(seed=1)
  for step in range(2):  # the second forward continues from the updated u / v
    with torch.no_grad():
      want = [t.numpy() for t in ref(_torch_features(feats))]
    got, state = train(variables, [jnp.asarray(f) for f in feats])
    assert [g.shape for g in got] == [(2, 3, 3), (2, 3, 3), (2, 1)]
    for g, w in zip(got, want):
      assert g.dtype == jnp.float32 and _rel_diff(g, w) <= 1e-5, step
    for key in _SN_LAYERS:
      mod, s = ref.get_submodule(key), _flax_path(state["batch_stats"], key)
      assert _max_diff(s["weight_u"], mod.weight_u.numpy()) <= 1e-6, (step, key)
      assert _max_diff(s["weight_v"], mod.weight_v.numpy()) <= 1e-6, (step, key)
      if mod.weight_u.numel() > 1:  # a 1-vector stays +-1
        assert _max_diff(s["weight_u"], _flax_path(variables["batch_stats"], key)["weight_u"]) > 0
    variables = {**variables, **state}
    feats = _features(seed=2)
  # Eval mode: the stored u, v, no iteration, nothing updated.
  ref.eval()
  with torch.no_grad():
    want = [t.numpy() for t in ref(_torch_features(feats))]
  got = evaluate(variables, [jnp.asarray(f) for f in feats])
  for g, w in zip(got, want):
    assert _rel_diff(g, w) <= 1e-5


def test_heads_gradient_treats_u_v_as_constants_like_torch(heads):
  module, variables = heads
  ref = _torch_from_flax(variables).train()
  feats = _features(seed=3)
  sum(t.sum() for t in ref(_torch_features(feats))).backward()

  def total(params):
    out, _ = module.apply({**variables, "params": params}, [jnp.asarray(f) for f in feats],
                          update_stats=True, mutable=["batch_stats"])
    return sum(o.sum() for o in out)

  grads = jax.jit(jax.grad(total))(variables["params"])
  for key in ("decoder.0.1", "decoder.1.4", "decoder.2.0", "out"):
    mod, g = ref.get_submodule(key), _flax_path(grads, key)
    w = mod.weight_orig.grad.numpy()
    w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
    assert _rel_diff(g["kernel"], w) <= 1e-4, key
    assert _rel_diff(g["bias"], mod.bias.grad.numpy()) <= 1e-5, key


def test_heads_bfloat16_compute_close_to_float32(heads, heads_apply):
  module, variables = heads
  train, _ = heads_apply
  feats = [jnp.asarray(f) for f in _features(seed=4)]
  want, want_state = train(variables, feats)
  bf16 = va.CLIPDiscriminatorHeads(dtype=jnp.bfloat16)
  got, state = jax.jit(lambda v, f: bf16.apply(v, f, update_stats=True,
                                               mutable=["batch_stats"]))(variables, feats)
  for g, w in zip(got, want):
    assert g.dtype == jnp.float32
    assert _max_diff(g, w) <= 0.05 * max(1.0, float(np.abs(w).max()))
  # The spectral state is computed in float32 from the float32 params: identical.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state, want_state)
  loss = va.multilevel_sigmoid_loss(got, True)
  assert loss.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Loss


def _torch_multilevel_loss(logits, for_real, alpha=1.0):
  fn = nn.BCEWithLogitsLoss(reduction="none")
  target = torch.tensor(alpha if for_real else 0.0)
  total = 0
  for each in logits:
    loss = fn(each, target.expand_as(each))
    if loss.dim() > 2:
      loss = loss.mean([1, 2]).reshape(-1, 1)
    total = total + loss
  return total


@pytest.mark.parametrize("real,alpha", [(True, 1.0), (False, 1.0), (True, 0.8)])
def test_multilevel_sigmoid_loss_matches_torch(real, alpha):
  rng = np.random.default_rng(7)
  logits = [rng.normal(scale=4, size=(3, 3, 3)).astype(np.float32),
            rng.normal(scale=4, size=(3, 3, 3)).astype(np.float32),
            rng.normal(scale=30, size=(3, 1)).astype(np.float32)]  # large: the stable form
  want = _torch_multilevel_loss([torch.from_numpy(a) for a in logits], real, alpha).numpy()
  got = va.multilevel_sigmoid_loss([jnp.asarray(a) for a in logits], real, alpha=alpha)
  assert got.shape == (3,) and want.shape == (3, 1)
  assert _max_diff(got, want[:, 0]) <= 1e-5


# ---------------------------------------------------------------------------------------------
# CLIP taps: a tiny random OpenAI-layout tower (224 input, 7 x 7 grid, width 64, 9 blocks)


class _TorchBlock(nn.Module):

  def __init__(self, d, heads):
    super().__init__()
    self.attn = nn.MultiheadAttention(d, heads)
    self.ln_1 = nn.LayerNorm(d)
    self.mlp = nn.Sequential(collections.OrderedDict(
        [("c_fc", nn.Linear(d, 4 * d)), ("act", nn.Identity()), ("c_proj", nn.Linear(4 * d, d))]))
    self.ln_2 = nn.LayerNorm(d)

  def forward(self, x):  # (L, N, D)
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False)[0]
    h = self.mlp.c_fc(self.ln_2(x))
    return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class _TorchVisual(nn.Module):

  def __init__(self, width=64, layers=9, patch=32, resolution=224, out_dim=32):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
    self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
    self.positional_embedding = nn.Parameter(
        torch.randn((resolution // patch) ** 2 + 1, width) * width ** -0.5)
    self.ln_pre = nn.LayerNorm(width)
    self.transformer = nn.Module()
    self.transformer.resblocks = nn.Sequential(*[_TorchBlock(width, width // 64)
                                                 for _ in range(layers)])
    self.ln_post = nn.LayerNorm(width)
    self.proj = nn.Parameter(torch.randn(width, out_dim) * width ** -0.5)

  def features(self, images):
    """vision_aided_loss CLIP(conv_multi_level) on NCHW [-1, 1] images."""
    x = F.interpolate(images * 0.5 + 0.5, size=(224, 224), mode="area")
    x = (x - torch.tensor(va.CLIP_MEAN)[:, None, None]) / torch.tensor(va.CLIP_STD)[:, None, None]
    x = self.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + self.positional_embedding
    x = self.ln_pre(x).permute(1, 0, 2)
    out = []
    points = [0, 4, 8, len(self.transformer.resblocks)]
    for a, b in zip(points[:-1], points[1:]):
      x = self.transformer.resblocks[a:b](x)
      out.append(x.permute(1, 0, 2))
    emb = self.ln_post(out[-1][:, 0]) @ self.proj
    grids = [o[:, 1:].permute(0, 2, 1).reshape(-1, o.shape[-1], 7, 7) for o in out[:2]]
    return grids + [emb]


@pytest.fixture(scope="module")
def tiny_clip():
  torch.manual_seed(0)
  ref = _TorchVisual().eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if "ln_" in name:
        p.copy_(0.1 * torch.randn_like(p) + (1.0 if name.endswith("weight") else 0.0))
  sd = {f"visual.{k}": v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  variables = convert_clip.convert_clip_visual(sd)
  cfg = openai_clip.config_from_params(variables)
  assert cfg == dict(width=64, layers=9, patch_size=32, output_dim=32, input_resolution=224)
  return ref, openai_clip.VisionTransformer(**cfg), jax.tree.map(jnp.asarray, variables)


def test_block_outputs_option_leaves_the_embedding_unchanged(tiny_clip):
  _, model, variables = tiny_clip
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, 64, 96, 3)).astype(np.float32))
  plain = model.apply(variables, x)
  emb, taps = model.apply(variables, x, block_outputs=(4, 9))
  np.testing.assert_array_equal(emb, plain)
  assert [t.shape for t in taps] == [(1, 7, 64)] * 2  # 2 x 3 grid + class token
  emb2, tokens, taps2 = model.apply(variables, x, return_tokens=True, block_outputs=(9,))
  np.testing.assert_array_equal(emb2, plain)
  np.testing.assert_array_equal(taps2[0], taps[1])
  assert tokens.shape == (1, 6, 64) and _max_diff(tokens, taps[1][:, 1:]) > 0.1  # ln_post
  with pytest.raises(ValueError, match="block taps"):
    model.apply(variables, x, block_outputs=(10,))


@pytest.mark.parametrize("hw", [(100, 100), (256, 192)])
def test_clip_features_match_torch_recreation(tiny_clip, hw):
  ref, model, variables = tiny_clip
  x = np.random.default_rng(hw[1]).uniform(-1, 1, (2, 3) + hw).astype(np.float32)
  with torch.no_grad():
    want = [t.numpy() for t in ref.features(torch.from_numpy(x))]
  got = jax.jit(lambda p, im: va.clip_features(model, p, im))(variables, jnp.asarray(_nhwc(x)))
  assert [g.shape for g in got] == [(2, 7, 7, 64), (2, 7, 7, 64), (2, 32)]
  assert _rel_diff(got[0], _nhwc(want[0])) <= 1e-5
  assert _rel_diff(got[1], _nhwc(want[1])) <= 1e-5
  assert _rel_diff(got[2], want[2]) <= 1e-5
  assert va.feature_shapes(model, 2) == [g.shape for g in got]


def test_gradient_flows_to_images_not_to_clip():
  # A smaller random tower (3 blocks, taps after 1 and 2, 96 px input: 3 x 3 grid) keeps the
  # compile of the backward pass short.
  model = openai_clip.VisionTransformer(width=64, layers=3, patch_size=32, output_dim=16,
                                        input_resolution=96)
  # Random params drawn in numpy (no init compile): N(0, 0.1^2), LayerNorm scales 1.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 3)),
                                             pos_embedding=True))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: np.ones(s.shape, np.float32) if path[-1].key == "scale"
      else (0.1 * rng.normal(size=s.shape)).astype(np.float32), shapes)
  taps = (1, 2)
  heads = va.CLIPDiscriminatorHeads(out_ch=16)
  hv = va.init_heads(heads, jax.random.key(1), model, taps)
  images = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 40, 56, 3)).astype(np.float32))

  def g_loss(images, clip_params, heads_variables):
    logits, state = va.discriminate(heads, heads_variables, model, clip_params, images,
                                    jax.random.key(3), taps=taps)
    return va.multilevel_sigmoid_loss(logits, True).mean(), (logits, state)

  (loss, (logits, state)), (g_img, g_clip) = jax.jit(
      jax.value_and_grad(g_loss, argnums=(0, 1), has_aux=True))(images, variables, hv)
  assert np.isfinite(float(loss)) and [l.shape for l in logits] == [(2, 1, 1), (2, 1, 1), (2, 1)]
  g_img = np.asarray(g_img)
  assert np.isfinite(g_img).all() and np.abs(g_img).max() > 0
  assert (np.abs(g_img).reshape(2, -1).max(axis=1) > 0).all()  # every example
  assert all(float(np.abs(g).max()) == 0 for g in jax.tree.leaves(g_clip))  # frozen tower
  # The new spectral state differs; eval mode returns the input state untouched.
  assert _max_diff(state["batch_stats"]["decoder"]["0"]["1"]["weight_u"],
                   hv["batch_stats"]["decoder"]["0"]["1"]["weight_u"]) > 0
  eval_logits, same = jax.jit(lambda im: va.discriminate(
      heads, hv, model, variables, im, None, diffaug=False, update_stats=False, taps=taps))(images)
  jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], hv["batch_stats"])
  assert _max_diff(eval_logits[2], logits[2]) > 0  # no DiffAugment / no power iteration here
