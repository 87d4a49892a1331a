"""SCUF (GEFU) inference: the authors' `src/inference.py` as a library pipeline on SD-Turbo.

Reference code: wangsen99/GEFU (commit 5d28e53) `src/inference.py` (the `__main__` loop), with the generator of
`models.scuf` (converted by `convert.scuf`) and the CLIP image tower of `models.openai_clip`. Conformance:
../shared/conformance/fixtures/gefu_tiny (README "call path" step 5 and quirks 7, 9, 10, 11, 12).

Per image (`ScufPipeline.enhance_uint8`), as `inference.py` does it:

  resized  = PIL LANCZOS resize of the uint8 image to W, H rounded UP to multiples of 8 (same size: a copy)
  x_t      = (ToTensor(resized) - 0.5) / 0.5                       # uint8 / 255 in float32
  v        = 1 - V / 255 (a2b; V for b2a), V = PIL HSV value of `resized` = max(R, G, B), repeated to 3 channels
  img_emb  = L2-normalise(CLIP visual(v, pos_embedding=False))
  decoded  = generator(x_t, text_emb, img_emb, direction)         # in [-1, 1], with the two noises below
  out      = trunc((decoded * 0.5 + 0.5) * 255) as uint8          # ToPILImage's mul(255).byte()
  saved    = PIL LANCZOS resize of `out` back to the input's size

`text_emb` is the text encoder's last hidden state of the prompt tokenised to 77 tokens (padded with the pad
token, truncated, no attention mask); it is computed once when the pipeline is loaded (the authors recompute it
per image: the same value). The two random tensors of the authors' run (`latent_dist.sample()`'s N(0, 1) noise
(1, C, h, w) and the DDPM variance noise (C, h, w), h, w = the model size / 8) are explicit inputs; `rng` draws
them with `jax.random.normal` instead (the authors use unseeded `torch.randn`, so no seed reproduces theirs).

Prompts: `FIXED_PROMPT_B` is the text of GEFU's `data/unpaired_data/fixed_prompt_b.txt` (the fixture README
quotes it). `FIXED_PROMPT_A` (`fixed_prompt_a.txt`, the darkening caption) is not quoted anywhere in
../shared: it is the text the fixture tokenizer decodes the stored `input_ids['prompt_a']` to, with the
tokenizer's spaces before punctuation removed; the CLIP tokenizer lower-cases and collapses white space, so it
reproduces those token ids but may differ from the file in case or white space. Each direction defaults to its
target-domain prompt (a2b: B, normal light; b2a: A, low light), as the authors' `train.py` pairs them.

Placement: every parameter (UNet, the two VAEs, adapters, ProjModel, CLIP tower, and the text encoder until the
prompt is encoded) goes on a mesh through `lowlight_jax.train.sharding` (the trainer's rules: regex rules, then
FSDP of tensors >= `fsdp_min_size` elements over the `fsdp` axis, else replicated). `default_mesh()` is
{'data': 1, 'fsdp': all devices}: on one device everything is replicated; on many the large towers are split.
The per-image computation (x_t, image prompt, CLIP, generator, quantisation) is one jitted call per model
size (jax.jit's cache); the PIL resizes run on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from lowlight_jax import errors
from lowlight_jax.convert import openai_clip as convert_openai_clip
from lowlight_jax.convert import scuf as convert_scuf
from lowlight_jax.convert import sd_turbo
from lowlight_jax.models import openai_clip
from lowlight_jax.models import scuf
from lowlight_jax.train import sharding as sharding_lib

PathLike = str | os.PathLike

FIXED_PROMPT_B = ("natural light, bright lighting, soft illumination, high light, evenly lit, clear visibility, "
                  "daylight, bright atmosphere, well-lit photo.")
FIXED_PROMPT_A = ("low light, dim lighting, low illumination, underexposed, ambient shadows, subdued light, "
                  "silhouetted, dark atmosphere photo.")
DEFAULT_PROMPTS = {"a2b": FIXED_PROMPT_B, "b2a": FIXED_PROMPT_A}
SIZE_MULTIPLE = 8  # `resize_image_to_nearest_factor`: W and H rounded up to multiples of 8
DEFAULT_FSDP_MIN_SIZE = 2**20  # the trainer's default (`run_config.trainer_fields`)

_UINT8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)  # ToTensor: uint8 / 255 in float32


# -------------------------------------------------------------------------------------------- host side


def model_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
  """(H, W) rounded up to multiples of `multiple`: the size the generator runs at."""
  return -(-int(height) // multiple) * multiple, -(-int(width) // multiple) * multiple


def _pil_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """PIL `Image.resize((W, H), LANCZOS)` of an RGB uint8 array (PIL returns a copy when the size is unchanged)."""
  return np.asarray(Image.fromarray(image, "RGB").resize((width, height), Image.Resampling.LANCZOS))


def resize_to_model_size(image_uint8: np.ndarray, multiple: int = SIZE_MULTIPLE) -> np.ndarray:
  """`resize_image_to_nearest_factor` (quirk 10): LANCZOS to W, H rounded up to multiples of `multiple`."""
  return _pil_resize(image_uint8, *model_size(*image_uint8.shape[:2], multiple))


def tokenize(tokenizer: Any, prompt: str) -> np.ndarray:
  """(1, max_length) int32 ids as SD pipelines tokenise: padded to `model_max_length` (77), truncated."""
  ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                  return_tensors="np").input_ids
  return np.asarray(ids, np.int32)


def per_image_key(key: jax.Array, image_uint8: np.ndarray) -> jax.Array:
  """`key` folded with a CRC-32 of the image's shape and pixels: the noise of an image depends only on the seed
  and its content (not on its position in a folder or on which other files are enhanced)."""
  image = np.ascontiguousarray(image_uint8)
  digest = zlib.crc32(image.tobytes(), zlib.crc32(np.asarray(image.shape, np.int64).tobytes()))
  return jax.random.fold_in(key, digest & 0x7FFFFFFF)


def default_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """{'data': 1, 'fsdp': every device}: one image at a time, large params split over all devices."""
  return sharding_lib.make_mesh({"data": 1, "fsdp": -1}, devices)


def place_params(tree: Any, mesh: Mesh, *, rules: Sequence[tuple[str, Sequence[str | None]]] = (),
                 fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE) -> tuple[Any, Any]:
  """(tree on `mesh`, its shardings) with the trainer's sharding rules (`train.sharding.param_shardings`)."""
  shardings = sharding_lib.param_shardings(tree, mesh, rules, fsdp_axis="fsdp", fsdp_min_size=fsdp_min_size,
                                           what="scuf")
  return jax.device_put(tree, shardings), shardings


# ------------------------------------------------------------------------------------------ device side


def _forward(generator: scuf.Generator, direction: str, clip_dtype: Any, params: Mapping[str, Any],
             text_emb: jax.Array, resized: jax.Array, vae_noise: jax.Array, sched_noise: jax.Array
             ) -> dict[str, jax.Array]:
  """(1, H, W, 3) uint8 at the model size -> decoded (1, 3, H, W) in [-1, 1], its uint8 image, the CLIP
  embedding."""
  x = jnp.asarray(_UINT8_TO_UNIT)[resized]  # a table: bit-exact torch `.float().div(255)`
  x_t = jnp.transpose((x - 0.5) / 0.5, (0, 3, 1, 2))
  clip_embed = openai_clip.image_embedding(params["clip"], openai_clip.illumination_prompt(resized, direction),
                                           dtype=clip_dtype)
  decoded = generator(params["generator"], x_t, text_emb, clip_embed, direction=direction, vae_noise=vae_noise,
                      sched_noise=sched_noise)
  return {"decoded": decoded, "out_uint8_model_res": scuf.to_uint8(decoded), "clip_embed": clip_embed}


@dataclasses.dataclass(frozen=True, eq=False)
class ScufPipeline:
  """A loaded SCUF model ready to enhance images (see the module doc). Build it with `ScufPipeline.load`.

  Fields: `generator` (models.scuf.Generator), `params` ({'generator': ..., 'clip': ...} on `mesh`),
  `shardings` (theirs), `text_emb` ((1, 77, ctx_dim) float32, replicated), `input_ids` ((1, 77) int32 host),
  `prompt`, `direction`, `clip_patch_size`, `mesh`, `clip_dtype`, `matmul_precision`.
  """
  generator: scuf.Generator
  params: Mapping[str, Any]
  shardings: Any
  text_emb: jax.Array
  input_ids: np.ndarray
  prompt: str
  direction: str
  clip_patch_size: int
  mesh: Mesh
  clip_dtype: Any = jnp.float32
  matmul_precision: str | None = None

  @classmethod
  def load(cls, sd_turbo_dir: PathLike, clip_image_file: PathLike, weights_pkl: PathLike, *,
           direction: str = "a2b", prompt: str | None = None, dtype: Any = jnp.float32,
           clip_dtype: Any = jnp.float32, mesh: Mesh | None = None,
           sharding_rules: Sequence[tuple[str, Sequence[str | None]]] = (),
           fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE, matmul_precision: str | None = None) -> ScufPipeline:
    """Reads the three sources (nothing is random-initialised) and places the params on `mesh`.

    Args:
      sd_turbo_dir: the SD-Turbo diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/).
      clip_image_file: OpenAI-layout CLIP state dict (`visual.*`; .pt/.pth pickle or .npz), e.g. ViT-B/32.
      weights_pkl: the authors' SCUF checkpoint (`test_model.pkl`).
      direction: 'a2b' (lighten, the authors' inference) or 'b2a' (darken).
      prompt: the text prompt; None = the direction's fixed prompt (a2b: FIXED_PROMPT_B, b2a: FIXED_PROMPT_A).
      dtype: the generator's compute dtype (params stay float32).
      clip_dtype: the CLIP tower's compute dtype (float16 = the authors' CUDA run; float32 = their CPU run).
      mesh: where the params go; None = `default_mesh()` (all devices, FSDP over them).
      sharding_rules, fsdp_min_size: `train.sharding` rules (paths 'generator/unet/...', 'clip/params/...').
      matmul_precision: `jax.default_matmul_precision` for the per-image call (e.g. 'highest' on GPU/TPU for
        float32 parity); None = the backend's default.

    Raises:
      FileNotFoundError: a missing folder or file (named).
      errors.WeightsError: a checkpoint of another method, or a CLIP file of another layout (named).
    """
    if direction not in scuf.DIRECTIONS:
      raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
    if not os.path.isdir(sd_turbo_dir):
      what = "is not a folder" if os.path.exists(sd_turbo_dir) else "not found"
      raise FileNotFoundError(f"SD-Turbo folder {what}: {os.fspath(sd_turbo_dir)} (expected "
                              f"{sd_turbo.PIPELINE_HINT})")
    prompt = DEFAULT_PROMPTS[direction] if prompt is None else prompt
    # Cheap, independent checks first: the CLIP file's layout, then the checkpoint (read before the UNet).
    _, clip_variables = convert_openai_clip.load_clip_image_encoder(clip_image_file)
    generator, gen_params = convert_scuf.load_scuf(weights_pkl, sd_turbo_dir, dtype=dtype, text_encoder=True)
    tokenizer = sd_turbo.load_tokenizer(sd_turbo_dir)
    input_ids = tokenize(tokenizer, prompt)

    mesh = default_mesh() if mesh is None else mesh
    params, shardings = place_params({"generator": gen_params, "clip": clip_variables}, mesh,
                                     rules=sharding_rules, fsdp_min_size=fsdp_min_size)
    replicated = sharding_lib.replicated(mesh)
    encode = jax.jit(generator.encode_prompt, out_shardings=replicated)
    with jax.default_matmul_precision(matmul_precision):
      text_emb = encode(params["generator"], jax.device_put(input_ids, replicated))
    # The text encoder is needed for the prompt only.
    params = {"generator": {k: v for k, v in params["generator"].items() if k != "text_encoder"},
              "clip": params["clip"]}
    shardings = {"generator": {k: v for k, v in shardings["generator"].items() if k != "text_encoder"},
                 "clip": shardings["clip"]}
    patch = openai_clip.config_from_params(clip_variables)["patch_size"]
    return cls(generator=generator, params=params, shardings=shardings, text_emb=text_emb.astype(jnp.float32),
               input_ids=input_ids, prompt=prompt, direction=direction, clip_patch_size=int(patch), mesh=mesh,
               clip_dtype=clip_dtype, matmul_precision=matmul_precision)

  # ----------------------------------------------------------------------------------------------- shapes

  @property
  def vae_factor(self) -> int:
    """Image pixels per latent pixel (8 for SD's VAE)."""
    return 2 ** (len(self.generator.vae.block_out_channels) - 1)

  @property
  def min_input_size(self) -> int:
    """The smallest input height / width: the model size (rounded up to 8) must hold one CLIP patch."""
    return max(1, self.clip_patch_size - SIZE_MULTIPLE + 1)

  def noise_shapes(self, height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(vae_noise, sched_noise) shapes for an input of `height` x `width`: (1, C, h, w), (C, h, w)."""
    mh, mw = model_size(height, width)
    c = int(self.generator.vae.latent_channels)
    h, w = mh // self.vae_factor, mw // self.vae_factor
    return (1, c, h, w), (c, h, w)

  @functools.cached_property
  def _jitted(self):
    fn = functools.partial(_forward, self.generator, self.direction, self.clip_dtype)
    return jax.jit(fn, out_shardings=sharding_lib.replicated(self.mesh))

  # -------------------------------------------------------------------------------------------- enhancing

  def enhance_uint8(self, image_uint8: np.ndarray, *, vae_noise: Any = None, sched_noise: Any = None,
                    rng: jax.Array | None = None) -> dict[str, np.ndarray]:
    """One RGB uint8 (H, W, 3) image through the authors' inference loop.

    Args:
      image_uint8: the input as `Image.open(path).convert('RGB')` gives it.
      vae_noise: (1, C, h, w) N(0, 1) for `latent_dist.sample()` (h, w = model size / 8); None = drawn from rng.
      sched_noise: (C, h, w) N(0, 1) of the DDPM variance term; None = drawn from rng.
      rng: a jax key for the noises not given.

    Returns:
      {'resized_uint8': (H', W', 3) the model-size input, 'decoded': (1, 3, H', W') float32 in [-1, 1],
       'out_uint8_model_res': (H', W', 3), 'out_uint8': (H, W, 3) the saved image, 'clip_embed': (1, D),
       'vae_noise', 'sched_noise': the noises used}; numpy arrays.

    Raises:
      errors.InputError: not an (H, W, 3) uint8 image, or smaller than `min_input_size`.
      ValueError: a noise of the wrong shape, or a noise missing without `rng`.
    """
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise errors.InputError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype}{image.shape}")
    height, width = image.shape[:2]
    if min(height, width) < self.min_input_size:
      raise errors.InputError(f"image is {width}x{height} pixels; SCUF needs at least "
                              f"{self.min_input_size}x{self.min_input_size} (one {self.clip_patch_size}x"
                              f"{self.clip_patch_size} CLIP patch after rounding up to multiples of {SIZE_MULTIPLE})")
    vae_shape, sched_shape = self.noise_shapes(height, width)
    if (vae_noise is None or sched_noise is None) and rng is None:
      raise ValueError("give vae_noise and sched_noise, or rng to draw them")
    if rng is not None:
      vae_key, sched_key = jax.random.split(rng)
      if vae_noise is None:
        vae_noise = jax.random.normal(vae_key, vae_shape, jnp.float32)
      if sched_noise is None:
        sched_noise = jax.random.normal(sched_key, sched_shape, jnp.float32)
    vae_noise = np.asarray(vae_noise, np.float32)
    sched_noise = np.asarray(sched_noise, np.float32)
    for name, value, want in (("vae_noise", vae_noise, vae_shape), ("sched_noise", sched_noise, sched_shape)):
      if value.shape != want:
        raise ValueError(f"{name} has shape {value.shape}; a {width}x{height} input needs {want}")

    resized = resize_to_model_size(image)
    with jax.default_matmul_precision(self.matmul_precision):
      out = jax.device_get(self._jitted(self.params, self.text_emb, resized[None], vae_noise, sched_noise))
    model_res = np.asarray(out["out_uint8_model_res"][0])
    return {"resized_uint8": resized, "decoded": np.asarray(out["decoded"]), "out_uint8_model_res": model_res,
            "out_uint8": _pil_resize(model_res, height, width), "clip_embed": np.asarray(out["clip_embed"]),
            "vae_noise": vae_noise, "sched_noise": sched_noise}
