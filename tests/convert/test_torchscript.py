"""The torch-free, code-free TorchScript archive reader and OpenAI's TorchScript CLIP `.pt`."""

import io
import pickle
import pickletools
import struct
import warnings
import zipfile

import jax
import numpy as np
import pytest
import torch
from torch import nn

from lowlight_jax import errors
from lowlight_jax.convert import openai_clip as convert_clip
from lowlight_jax.convert import torch_pickle
from lowlight_jax.convert import torchscript

# torch.jit is deprecated in new torch; it is still what wrote OpenAI's released files.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _assert_same_state_dict(got, path):
  want = torch.jit.load(str(path), map_location="cpu").state_dict()
  assert list(got) == list(want)
  for k, v in want.items():
    ref = v.numpy()
    assert got[k].dtype == ref.dtype, k
    assert got[k].shape == ref.shape, k
    np.testing.assert_array_equal(got[k], ref, err_msg=k)


# ---------------------------------------------------------------------------------------------
# Layout: parameters vs. buffers vs. plain attributes


class _Mixed(nn.Module):

  def __init__(self):
    super().__init__()
    self.lin = nn.Linear(3, 4)
    self.no_bias = nn.Linear(4, 2, bias=False)  # bias is a None parameter: not state
    self.bn = nn.BatchNorm1d(4)                 # buffers, one of them int64
    self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
    self.scale = nn.Parameter(torch.randn(4, dtype=torch.float64))
    self.register_buffer("half_buf", torch.randn(3).half())
    self.register_buffer("flag", torch.tensor([True, False]))
    self.register_buffer("scratch", torch.ones(2), persistent=False)  # TorchScript keeps it
    self.plain = torch.full((5,), 7.0)          # a plain tensor attribute: not state
    self.count = 3
    self.sizes = [1, 2]                         # typed containers: restore_type_tag
    self.names = {"a": 1.5}

  def forward(self, x):
    x = self.bn(self.lin(x)) * self.scale.float()
    for block in self.blocks:
      x = block(x)
    return self.no_bias(x) + self.plain.sum() + self.scratch.sum() + self.half_buf.float().sum()


def test_scripted_module_state_dict_exact(tmp_path):
  torch.manual_seed(0)
  m = _Mixed().eval()
  with torch.no_grad():
    m.bn.running_mean.normal_()
    m.bn.num_batches_tracked.fill_(5)
  path = tmp_path / "mixed.pt"
  torch.jit.save(torch.jit.script(m), str(path))
  assert torchscript.is_torchscript(path)
  got = torchscript.load_state_dict(path)
  _assert_same_state_dict(got, path)
  assert "plain" not in got and "no_bias.bias" not in got and "scratch" in got
  assert got["bn.num_batches_tracked"].dtype == np.int64 and got["half_buf"].dtype == np.float16
  assert got["flag"].dtype == np.bool_ and "blocks.1.weight" in got
  # A plain torch.save checkpoint is not a TorchScript archive.
  plain = tmp_path / "plain.pt"
  torch.save(m.state_dict(), plain)
  assert not torchscript.is_torchscript(plain)
  assert not torchscript.is_torchscript(tmp_path / "missing.pt")
  with pytest.raises(pickle.UnpicklingError, match="not a TorchScript archive"):
    torchscript.load_state_dict(plain)


def test_plain_reader_points_to_this_one(tmp_path):
  path = tmp_path / "lin.pt"
  torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="convert.torchscript"):
    torch_pickle.load(path)


# ---------------------------------------------------------------------------------------------
# A tiny OpenAI-layout CLIP (visual tower in GEFU's src/CLIP/model.py naming, a token of the text
# side), traced like OpenAI's released JIT files.


class _LayerNorm(nn.LayerNorm):

  def forward(self, x):
    return super().forward(x.float()).to(x.dtype)


class _Block(nn.Module):

  def __init__(self, d, heads):
    super().__init__()
    self.attn = nn.MultiheadAttention(d, heads)
    self.ln_1 = _LayerNorm(d)
    self.mlp = nn.Sequential()
    self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
    self.mlp.add_module("c_proj", nn.Linear(4 * d, d))
    self.ln_2 = _LayerNorm(d)

  def forward(self, x):  # (L, N, D)
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False)[0]
    h = self.mlp.c_fc(self.ln_2(x))
    return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class _Transformer(nn.Module):

  def __init__(self, d, layers, heads):
    super().__init__()
    self.resblocks = nn.Sequential(*[_Block(d, heads) for _ in range(layers)])

  def forward(self, x):
    return self.resblocks(x)


class _Visual(nn.Module):

  def __init__(self, resolution=16, patch=8, width=64, layers=2, heads=1, out_dim=12):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
    self.class_embedding = nn.Parameter(torch.randn(width))
    self.positional_embedding = nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width))
    self.ln_pre = _LayerNorm(width)
    self.transformer = _Transformer(width, layers, heads)
    self.ln_post = _LayerNorm(width)
    self.proj = nn.Parameter(torch.randn(width, out_dim) * width ** -0.5)

  def forward(self, x):
    x = self.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + self.positional_embedding
    x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
    return self.ln_post(x[:, 0, :]) @ self.proj


class _Clip(nn.Module):

  def __init__(self):
    super().__init__()
    self.visual = _Visual()
    self.token_embedding = nn.Embedding(10, 32)
    self.positional_embedding = nn.Parameter(torch.randn(5, 32))
    self.ln_final = _LayerNorm(32)
    self.text_projection = nn.Parameter(torch.randn(32, 12))
    self.logit_scale = nn.Parameter(torch.tensor(4.6))
    # OpenAI's JIT files carry these as int tensors (clip.load calls `.item()` on them).
    self.register_buffer("input_resolution", torch.tensor(16))

  def forward(self, image):
    return self.visual(image)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
  torch.manual_seed(0)
  model = _Clip().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if ".ln_" in name or name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p) + (1.0 if name.endswith("weight") else 0.0))
  d = tmp_path_factory.mktemp("clip")
  x = torch.rand(2, 3, 16, 16)
  with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter("ignore", torch.jit.TracerWarning)  # MHA's shape checks
    traced = torch.jit.trace(model, x)
  files = {"fp32": d / "clip_fp32.pt", "fp16": d / "ViT-tiny.pt"}
  torch.jit.save(traced, str(files["fp32"]))
  torch.jit.save(traced.half(), str(files["fp16"]))  # OpenAI's file is fp16 on disk
  # The state dict as `clip.load(..., jit=False)` hands it to build_model, saved plainly.
  files["plain_fp16"] = d / "clip_state_dict_fp16.pt"
  torch.save(torch.jit.load(str(files["fp16"])).state_dict(), files["plain_fp16"])
  return files


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_clip_archive_state_dict_exact(clip_files, which):
  path = clip_files[which]
  assert torchscript.is_torchscript(path)
  got = torchscript.load_state_dict(path)
  _assert_same_state_dict(got, path)
  assert got["visual.conv1.weight"].dtype == (np.float16 if which == "fp16" else np.float32)
  assert "visual.transformer.resblocks.1.attn.in_proj_weight" in got
  assert got["input_resolution"].dtype == np.int64


def test_clip_archive_loads_like_its_state_dict(clip_files):
  model, variables = convert_clip.load_clip_image_encoder(clip_files["fp16"])
  model_sd, variables_sd = convert_clip.load_clip_image_encoder(clip_files["plain_fp16"])
  assert (model.width, model.layers, model.patch_size, model.output_dim, model.input_resolution,
          model.num_heads) == (64, 2, 8, 12, 16, 1)
  assert model == model_sd
  jax.tree.map(np.testing.assert_array_equal, variables, variables_sd)
  assert all(v.dtype == np.float32 for v in jax.tree.leaves(variables))
  x = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  got = np.asarray(model.apply(variables, x))
  want = np.asarray(model_sd.apply(variables_sd, x))
  assert got.shape == (2, 12)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  # And the traced fp32 archive matches torch running it (plain CLIP adds its positional table:
  # at the table's own resolution that is `pos_embedding=True`).
  model32, variables32 = convert_clip.load_clip_image_encoder(clip_files["fp32"])
  with torch.no_grad():
    ref = torch.jit.load(str(clip_files["fp32"]))(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  got32 = model32.apply(variables32, x, pos_embedding=True)
  np.testing.assert_allclose(np.asarray(got32), ref.numpy(), atol=2e-5)


def _one_line_error(call, *needles):
  with pytest.raises(errors.WeightsError) as info:
    call()
  msg = str(info.value)
  assert "\n" not in msg
  for needle in needles:
    assert str(needle) in msg, msg
  return msg


def test_other_torchscript_module_is_not_a_clip(tmp_path):
  path = tmp_path / "ViT-B-32.pt"
  torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())), str(path))
  msg = _one_line_error(lambda: convert_clip.load_clip_image_encoder(path), path,
                        "visual.conv1.weight", "TorchScript")
  assert msg.count(str(path)) == 1


# ---------------------------------------------------------------------------------------------
# Safety


def _touch_cmd(marker):
  return f"touch {marker}".encode()


def _evil_data_pkl(marker):
  """A TorchScript module pickle whose attribute dict holds `os.system('touch <marker>')`."""
  cmd = _touch_cmd(marker)
  return (b"\x80\x02c__torch__\nM\n)\x81}("                        # GLOBAL, NEWOBJ, dict, MARK
          b"X\x08\x00\x00\x00trainingK\x00"                         # training: 0
          b"X\x04\x00\x00\x00evilcos\nsystem\n"                     # evil: os.system(
          b"X" + struct.pack("<I", len(cmd)) + cmd + b"\x85R"       #   cmd)
          b"ub.")                                                   # SETITEMS, BUILD, STOP


def _replace_data_pkl(src, dst, data):
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for n in zin.namelist():
      zout.writestr(n, data if n.endswith("/data.pkl") else zin.read(n))


def test_malicious_data_pkl_refused(tmp_path):
  marker = tmp_path / "pwned"
  src, path = tmp_path / "lin.pt", tmp_path / "evil.pt"
  torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(src))
  _replace_data_pkl(src, path, _evil_data_pkl(marker))
  assert torchscript.is_torchscript(path)
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="os.system.*not on the allowlist"):
    torchscript.load_state_dict(path)
  _one_line_error(lambda: convert_clip.load_clip_image_encoder(path), path, "os.system",
                  "nothing was executed")
  assert not marker.exists()


def test_malicious_payload_is_live(tmp_path):
  # Control: an unpickler that resolves `__torch__` classes but leaves other globals to the stock
  # lookup does run the payload, so the refusal above is real.
  marker = tmp_path / "pwned"
  data = _evil_data_pkl(marker)
  pickletools.dis(data, out=io.StringIO())  # well-formed

  class _Obj:
    def __setstate__(self, state):
      self.state = state

  class _Stock(pickle.Unpickler):
    def find_class(self, module, name):
      return _Obj if module == "__torch__" else super().find_class(module, name)

  _Stock(io.BytesIO(data)).load()
  assert marker.exists()


@pytest.mark.parametrize("data,match", [
    # A __torch__ class constructed with arguments (REDUCE) instead of NEWOBJ().
    (b"\x80\x02c__torch__\nM\nK\x01\x85R.", "constructed with arguments"),
    # A malformed class name.
    (b"\x80\x02c__torch__.a-b\nM\n)\x81}b.", "malformed TorchScript class name"),
    # A module that contains itself.
    (b"\x80\x02c__torch__\nM\n)\x81q\x00}X\x04\x00\x00\x00selfh\x00sb.", "cyclic"),
])
def test_odd_pickles_refused(tmp_path, data, match):
  src, path = tmp_path / "lin.pt", tmp_path / "odd.pt"
  torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(src))
  _replace_data_pkl(src, path, data)
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match=match):
    torchscript.load_state_dict(path)


def test_code_is_never_run(tmp_path, monkeypatch):
  # The code/ records are only scanned as text: a class body with arbitrary statements is inert.
  marker = tmp_path / "pwned"
  src, path = tmp_path / "lin.pt", tmp_path / "code.pt"
  torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(src))
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
    for n in zin.namelist():
      data = zin.read(n)
      if n.endswith("code/__torch__/torch/nn/modules/linear.py"):
        data = (f"import os\nos.system('touch {marker}')\n").encode() + data
      zout.writestr(n, data)
  got = torchscript.load_state_dict(path)
  _assert_same_state_dict(got, src)
  assert not marker.exists()
