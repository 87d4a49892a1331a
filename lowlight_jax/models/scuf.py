"""SCUF (GEFU, ICCV 2025) generator at inference: SD-Turbo one-step translation with VAE LoRA, skip convs
and the cycle-attention adapter, as pure functions over diffusers' Flax models (`sd_compat`).

Paper: Wang et al., "Semantically Consistent Unsupervised Fine-tuning" (GEFU / SCUF). Reference code:
wangsen99/GEFU (commit 5d28e53) `src/inference.py`, `src/my_utils/cyclegan_turbo.py` (`CycleGAN_Turbo`,
`VAE_encode`, `VAE_decode`), `src/my_utils/model.py` (`my_vae_encoder_fwd`, `my_vae_decoder_fwd`,
`make_1step_sched`), `src/adapter.py` (`CAAdapter`, `ProjModel`) and `src/attention_processor.py`
(`CAAttnProcessor2_0`). Conformance: ../shared/conformance/fixtures/gefu_tiny (README quirks 1-12) and
FIXTURES_SKF_GEFU.md section 5.

What `inference.py` computes (`CycleGAN_Turbo.forward_adapter_infer`), and `Generator.generate` here:

  moments, acts = encoder(x)                 # acts: the INPUT of each of the 4 encoder down blocks
  latent = (mean + std * vae_noise) * 0.18215  # logvar clamped to [-30, 20]; vae_noise None = the mode
  ctx = cat(text_emb (77 tokens), ProjModel(clip_embed) (4 tokens))
  eps = unet(latent, 999, ctx)               # cycle-attention processor in every attn2
  x0, prev = DDPM step at t=999 (prev_t = -1, so alpha_prev = 1 and prev == x0 + 1e-10 * sched_noise)
  decoded = clamp(decoder_with_skips(post_quant_conv(prev / 0.18215), acts), -1, 1)

Design (port notes):
  * VAE LoRA (peft, rank r, alpha 8 -> scale alpha / r = 2 in the released model) is a PARAMETER
    transformation: `merge_lora` folds W + scale * B o A into the base kernel. A conv LoRA's A has the base
    conv's kernel, stride and padding and B is 1x1, so B(A(x)) is the conv of x with the kernel
    einsum_r(A[kh, kw, in, r], B[r, out]); for linear layers the same with no spatial axes. The merged VAE is a
    plain diffusers Flax VAE param tree (one per direction: a2b uses the checkpoint's `vae`, b2a its
    `vae_b2a`). Merging is exact up to float rounding (the merged kernel is rounded once to float32; PyTorch
    rounds the two branch outputs and their sum instead).
  * Skip convs (quirk 3): the encoder and decoder forwards are written here over diffusers' Flax VAE
    submodules (`FlaxAutoencoderKL.encoder.conv_in / down_blocks / mid_block / conv_norm_out / conv_out`,
    `quant_conv`, `post_quant_conv`, and the decoder's), called through `module.apply(..., method=fn)`: the
    encoder records the input of each down block; before up block i the decoder adds
    skip_conv_{i+1}(acts[::-1][i]) (1x1, no bias, LoRA merged like the rest; gamma = 1). No diffusers code is
    patched; parameter names are diffusers' own.
  * Cycle attention (FIXTURES section 5, quirk 6): a `flax.linen.intercept_methods` interceptor replaces the
    `__call__` of every `attn2` (the cross-attention of each FlaxBasicTransformerBlock, mid block included)
    while the UNet runs. With hs = the attn2 input (= norm2(h)), text / ca = the first L-n / last n context
    tokens:
        T   = SDPA(to_q(hs), to_k(text), to_v(text))
        Q1  = (ca^T @ to_q_ca)[:, linspace(0, ctx_dim - 1, HW).long()]   # token-axis query, gathered rows
        CA1 = SDPA(Q1, hs, hs)                                             # k = v = the raw attn2 input
        CA2 = SDPA(to_q(CA1), to_k_ca(ca), to_v_ca(ca))                    # the layer's own to_q reused
        attn2(hs) = hs + to_out(T + CA2)
    so the block computes h + norm2(h) + to_out(T + CA2) (the processor always adds its residual). The
    gather indices are torch's float32 `linspace` truncated, reproduced bit-exactly in numpy
    (`torch_linspace_f32`). The UNet params are untouched; the adapter params (`to_q_ca` (n, hidden),
    `to_k_ca` / `to_v_ca` (ctx_dim, hidden) Flax Dense kernels per attn2) are a separate tree mirroring the
    UNet's module paths, so lighten/darken adapters can share one frozen UNet.
  * The UNet timestep is the integer 999 (quirk 2) and the DDPM step follows diffusers 0.25.1
    `DDPMScheduler.step` with the config dict (`ddpm_step`); the authors loop the step over the batch with a
    one-element timestep tensor (batch 1 only); here it is vectorised (the same per-sample result).
  * `timestep_spacing` does not matter: `step(t=999)` uses prev_t = t - num_train_timesteps // 1 = -1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lowlight_jax import errors
from lowlight_jax.models import sd_compat

DIRECTIONS = ("a2b", "b2a")
TIMESTEP = 999  # `CycleGAN_Turbo.timesteps = torch.tensor([999]).long()`
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution
VARIANCE_FLOOR = 1e-20  # DDPMScheduler._get_variance clamps the variance to this

# DDPMScheduler.__init__ defaults for the keys `ddpm_step` reads (a config without them gets these, as
# `DDPMScheduler.from_pretrained` does; sd-turbo's file is an EulerDiscreteScheduler config).
DDPM_DEFAULTS = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
    "thresholding": False, "clip_sample_range": 1.0,
}


# --------------------------------------------------------------------------------------- torch numerics


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
  """`torch.linspace(start, end, steps)` (float32, CPU) bit for bit.

  step = f32((f32(end) - f32(start)) / (steps - 1)); the first half counts up from start, the second half down
  from end, each value a multiply-add rounded once to float32 (FIXTURES_SKF_GEFU.md section 5).
  """
  steps = int(steps)
  if steps < 0:
    raise ValueError(f"linspace: steps must be >= 0, got {steps}")
  start32, end32 = np.float32(start), np.float32(end)
  if steps <= 1:
    return np.full((steps,), start32, np.float32)
  step = np.float32(np.float32(end32 - start32) / np.float32(steps - 1))
  i = np.arange(steps, dtype=np.float64)
  up = np.float64(start32) + np.float64(step) * i
  down = np.float64(end32) - np.float64(step) * (steps - 1 - i)
  return np.where(i < steps // 2, up, down).astype(np.float32)


def ca_gather_indices(context_dim: int, num_positions: int) -> np.ndarray:
  """`torch.linspace(0, context_dim - 1, num_positions).long()`: the rows of the token-axis query that
  `CAAttnProcessor2_0` gathers (truncation toward zero, float32 values)."""
  return np.trunc(torch_linspace_f32(0, context_dim - 1, num_positions)).astype(np.int32)


def _ddpm_config(config: Mapping[str, Any]) -> dict[str, Any]:
  cfg = {key: config.get(key, default) for key, default in DDPM_DEFAULTS.items()}
  for key in ("clip_sample_range",):
    if cfg[key] is None:
      cfg[key] = DDPM_DEFAULTS[key]
  if cfg["thresholding"]:
    raise errors.ConfigError("scheduler config: thresholding=True is not implemented")
  if cfg["variance_type"] not in ("fixed_small", "fixed_small_log"):
    raise errors.ConfigError(f"scheduler config: variance_type={cfg['variance_type']!r} is not implemented "
                             "(supported: 'fixed_small', 'fixed_small_log')")
  if cfg["prediction_type"] not in ("epsilon", "sample", "v_prediction"):
    raise errors.ConfigError(f"scheduler config: prediction_type={cfg['prediction_type']!r} is not implemented "
                             "(supported: 'epsilon', 'sample', 'v_prediction')")
  return cfg


def alphas_cumprod(config: Mapping[str, Any]) -> np.ndarray:
  """DDPMScheduler's `alphas_cumprod` (float32 numpy) from a scheduler config dict, as torch computes it:
  scaled_linear = linspace(sqrt(beta_start), sqrt(beta_end), N, float32) ** 2; linear = linspace(beta_start,
  beta_end, N, float32); squaredcos_cap_v2 = the cosine schedule; `trained_betas` if given; then the cumprod of
  the float32 1 - betas, accumulated in float64 and rounded per element (torch's CPU cumprod accumulates float
  in double; bit-exact with the fixture's table)."""
  cfg = _ddpm_config(config)
  n = int(cfg["num_train_timesteps"])
  if cfg["trained_betas"] is not None:
    betas = np.asarray(cfg["trained_betas"], np.float32)
  elif cfg["beta_schedule"] == "linear":
    betas = torch_linspace_f32(cfg["beta_start"], cfg["beta_end"], n)
  elif cfg["beta_schedule"] == "scaled_linear":
    betas = np.square(torch_linspace_f32(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n))
  elif cfg["beta_schedule"] == "squaredcos_cap_v2":
    def alpha_bar(t):
      return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = np.asarray([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], np.float32)
  else:
    raise errors.ConfigError(f"scheduler config: beta_schedule={cfg['beta_schedule']!r} is not implemented "
                             "(supported: 'linear', 'scaled_linear', 'squaredcos_cap_v2')")
  alphas = (np.float32(1.0) - betas).astype(np.float32)
  return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def ddpm_step(config: Mapping[str, Any], model_output: jax.Array, timestep: int, sample: jax.Array,
              variance_noise: jax.Array | None = None, *, num_inference_steps: int = 1
              ) -> tuple[jax.Array, jax.Array]:
  """diffusers 0.25.1 `DDPMScheduler.step(model_output, timestep, sample)` after `set_timesteps(n)` ->
  (prev_sample, pred_original_sample), in float32, for a whole batch at once.

  The scalar coefficients are computed as torch computes them (float32 0-d tensors); `clip_sample` (default True,
  as diffusers) clips x0 to +-clip_sample_range. For t > 0 the variance (1 - a_prev) / (1 - a_t) * beta_t is
  clamped to 1e-20 and sqrt(variance) * variance_noise is added; `variance_noise=None` adds nothing (the term
  is 1e-10 * noise at t=999 with one step).
  """
  cfg = _ddpm_config(config)
  ac = alphas_cumprod(config)
  t = int(timestep)
  prev_t = t - int(cfg["num_train_timesteps"]) // int(num_inference_steps)
  one = np.float32(1.0)
  alpha_prod_t = ac[t]
  alpha_prod_t_prev = ac[prev_t] if prev_t >= 0 else one
  beta_prod_t = one - alpha_prod_t
  beta_prod_t_prev = one - alpha_prod_t_prev
  current_alpha_t = np.float32(alpha_prod_t / alpha_prod_t_prev)
  current_beta_t = one - current_alpha_t

  model_output = model_output.astype(jnp.float32)
  sample = sample.astype(jnp.float32)
  if cfg["prediction_type"] == "epsilon":
    x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
  elif cfg["prediction_type"] == "sample":
    x0 = model_output
  else:  # v_prediction
    x0 = np.sqrt(alpha_prod_t) * sample - np.sqrt(beta_prod_t) * model_output
  if cfg["clip_sample"]:
    bound = float(cfg["clip_sample_range"])
    x0 = jnp.clip(x0, -bound, bound)
  x0_coeff = np.float32(np.sqrt(alpha_prod_t_prev) * current_beta_t / beta_prod_t)
  sample_coeff = np.float32(np.sqrt(current_alpha_t) * beta_prod_t_prev / beta_prod_t)
  prev = x0_coeff * x0 + sample_coeff * sample
  if t > 0 and variance_noise is not None:
    variance = max(np.float32((one - alpha_prod_t_prev) / (one - alpha_prod_t) * current_beta_t),
                   np.float32(VARIANCE_FLOOR))
    prev = prev + np.sqrt(np.float32(variance)) * jnp.asarray(variance_noise, jnp.float32)
  return prev, x0


# ---------------------------------------------------------------------------------------------- LoRA


def merge_lora(kernel: Any, lora_a: Any, lora_b: Any, scale: float) -> Any:
  """The kernel of base(x) + scale * B(A(x)) as one layer: kernel + scale * einsum_r(A, B).

  Flax layouts: a conv kernel (kh, kw, in, out) with A (kh, kw, in, r) (A has the base conv's kernel, stride and
  padding) and B (r, out) (a 1x1 conv, squeezed); a Dense kernel (in, out) with A (in, r), B (r, out). Numpy
  inputs are merged in float64 and rounded once to the kernel's dtype; jax inputs in their dtype.
  """
  if np.shape(lora_a)[:-1] != np.shape(kernel)[:-1] or np.shape(lora_b) != (np.shape(lora_a)[-1],
                                                                               np.shape(kernel)[-1]):
    raise ValueError(f"LoRA shapes A {np.shape(lora_a)}, B {np.shape(lora_b)} do not fit kernel "
                     f"{np.shape(kernel)}")
  if all(isinstance(x, np.ndarray) for x in (kernel, lora_a, lora_b)):
    delta = np.einsum("...r,ro->...o", lora_a.astype(np.float64), lora_b.astype(np.float64))
    return (kernel.astype(np.float64) + float(scale) * delta).astype(kernel.dtype)
  return kernel + scale * jnp.einsum("...r,ro->...o", lora_a, lora_b).astype(jnp.result_type(kernel))


def merge_lora_tree(params: Mapping[str, Any], lora: Mapping[str, Any], scale: float) -> dict[str, Any]:
  """`params` with every LoRA of `lora` merged into its layer's `kernel` (`merge_lora`).

  `lora` mirrors `params`' module paths; at each LoRA'd layer it holds {'lora_a': A, 'lora_b': B}. Raises
  ValueError when a LoRA'd layer has no kernel in `params`.
  """
  flat = traverse_util.flatten_dict(dict(params))
  flat_lora = traverse_util.flatten_dict(dict(lora))
  layers = {path[:-1] for path in flat_lora}
  for layer in sorted(layers):
    kernel_path = layer + ("kernel",)
    if kernel_path not in flat:
      raise ValueError(f"LoRA for {'/'.join(layer)}, which has no kernel")
    flat[kernel_path] = merge_lora(flat[kernel_path], flat_lora[layer + ("lora_a",)],
                                   flat_lora[layer + ("lora_b",)], scale)
  return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------------ cycle attention


#: Query rows per chunk of the cycle attention's self-attention (`_sdpa(query_chunk=...)`) when the UNet computes
#: its own attention chunked (diffusers' `use_memory_efficient_attention`).
CA_QUERY_CHUNK = 1024


def _sdpa(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, query_chunk: int | None = None) -> jax.Array:
  """`F.scaled_dot_product_attention` on (B, L, heads * d) tensors split as `view(B, L, heads, d)`; scale
  1/sqrt(d); logits and softmax in float32.

  query_chunk: the queries in chunks of this many rows, one chunk at a time (`lax.map`), each rematerialised in the
  backward pass: the (B, heads, L, L) float32 scores of the cycle attention's 4096-token self-attention at 512x512
  (8 GB at batch 8) are never held whole, forward or backward. Each row's softmax still runs over all keys, so
  the values are the unchunked ones. Unused when L is not a multiple larger than one chunk."""
  b, lq, c = q.shape
  if query_chunk and lq > query_chunk and lq % query_chunk == 0:
    chunks = jnp.swapaxes(q.reshape(b, lq // query_chunk, query_chunk, c), 0, 1)
    out = jax.lax.map(jax.checkpoint(lambda qc: _sdpa(qc, k, v, heads)), chunks)
    return jnp.swapaxes(out, 0, 1).reshape(b, lq, c)
  d = c // heads
  q = q.reshape(b, lq, heads, d)
  k = k.reshape(b, k.shape[1], heads, d)
  v = v.reshape(b, v.shape[1], heads, d)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * np.float32(d ** -0.5)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, lq, c)


def cycle_attention(attn: Any, adapter: Mapping[str, Any], hidden_states: jax.Array, context: jax.Array,
                    num_tokens: int) -> jax.Array:
  """`CAAttnProcessor2_0` on a bound diffusers FlaxAttention `attn` (its to_q / to_k / to_v / to_out_0),
  including the processor's residual: returns hs + to_out(T + CA2) (see the module doc)."""
  dtype = attn.dtype
  hs = hidden_states
  text, ca = context[:, :-num_tokens], context[:, -num_tokens:]
  heads = attn.heads
  text_out = _sdpa(attn.query(hs), attn.key(text), attn.value(text), heads)
  w_q, w_k, w_v = (jnp.asarray(adapter[name]).astype(dtype) for name in ("to_q_ca", "to_k_ca", "to_v_ca"))
  ca = ca.astype(dtype)
  # to_q_ca acts on the token axis: (B, ctx_dim, n) @ (n, hidden) -> (B, ctx_dim, hidden); rows gathered.
  query_1 = jnp.einsum("bnd,nh->bdh", ca, w_q)
  query_1 = jnp.take(query_1, ca_gather_indices(ca.shape[-1], hs.shape[1]), axis=1)
  # The adapter's query rows against the hidden states themselves: (L, L) scores, chunked as the UNet's own
  # attention is (`use_memory_efficient_attention`, on with the `scale` config).
  chunk = CA_QUERY_CHUNK if getattr(attn, "use_memory_efficient_attention", False) else None
  ca_1 = _sdpa(query_1, hs.astype(dtype), hs.astype(dtype), heads, query_chunk=chunk)
  ca_2 = _sdpa(attn.query(ca_1), jnp.einsum("bnd,dh->bnh", ca, w_k), jnp.einsum("bnd,dh->bnh", ca, w_v), heads)
  return hs + attn.proj_attn(text_out + ca_2)


def _ca_interceptor(attention_cls, block_cls, adapters, num_tokens, next_fun, args, kwargs, context):
  """`flax.linen.intercept_methods` interceptor: every attn2 of a transformer block runs `cycle_attention`
  with the adapter params found at its module path; everything else runs unchanged."""
  module = context.module
  if (context.method_name != "__call__" or not isinstance(module, attention_cls) or module.name != "attn2"
      or not isinstance(module.parent, block_cls)):
    return next_fun(*args, **kwargs)
  hidden_states = args[0] if args else kwargs["hidden_states"]
  ctx = args[1] if len(args) > 1 else kwargs.get("context")
  node = adapters
  for name in module.path:
    if not isinstance(node, Mapping) or name not in node:
      raise ValueError(f"no cycle-attention adapter params for UNet layer {'/'.join(module.path)}")
    node = node[name]
  return cycle_attention(module, node, hidden_states, ctx, num_tokens)


def unet_with_cycle_attention(unet: Any, unet_params: Mapping[str, Any], adapters: Mapping[str, Any],
                              latents_nchw: jax.Array, timestep: int, context: jax.Array, *,
                              num_tokens: int) -> jax.Array:
  """`CAAdapter.forward_infer`'s UNet call: `unet(latents, timestep, context).sample` (NCHW) with the
  cycle-attention processor in every attn2. `unet` is `sd_compat`'s UNet2DConditionModel; `adapters` mirrors
  its attn2 module paths (`{'down_blocks_0': {'attentions_0': {'transformer_blocks_0': {'attn2': {'to_q_ca':
  ..., 'to_k_ca': ..., 'to_v_ca': ...}}}}, ...}`)."""
  d = sd_compat.diffusers_flax()
  interceptor = functools.partial(_ca_interceptor, d.Attention, d.BasicTransformerBlock, adapters, num_tokens)
  timesteps = jnp.full((1,), timestep, jnp.int32)
  with nn.intercept_methods(interceptor):
    return unet.apply({"params": unet_params}, latents_nchw, timesteps, context).sample


# ------------------------------------------------------------------------------------ VAE with skips


def _encode_with_skips(vae: Any, x_nhwc: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
  """`my_vae_encoder_fwd` + `quant_conv` over the bound FlaxAutoencoderKL's submodules -> (moments, acts)."""
  enc = vae.encoder
  h = enc.conv_in(x_nhwc)
  acts = []
  for block in enc.down_blocks:
    acts.append(h)
    h = block(h, deterministic=True)
  h = enc.mid_block(h, deterministic=True)
  h = enc.conv_out(nn.swish(enc.conv_norm_out(h)))
  return vae.quant_conv(h), acts


def _decode_with_skips(vae: Any, z_nhwc: jax.Array, acts: list[jax.Array], skip_kernels: list[jax.Array]
                       ) -> jax.Array:
  """`post_quant_conv` + `my_vae_decoder_fwd` over the bound FlaxAutoencoderKL's submodules (NHWC)."""
  dec = vae.decoder
  h = dec.conv_in(vae.post_quant_conv(z_nhwc))
  h = dec.mid_block(h, deterministic=True)
  for block, act, kernel in zip(dec.up_blocks, acts[::-1], skip_kernels):
    h = h + jnp.einsum("bhwi,io->bhwo", act, kernel.astype(h.dtype))  # 1x1 conv, no bias; gamma = 1
    h = block(h, deterministic=True)
  return dec.conv_out(nn.swish(dec.conv_norm_out(h)))


def skip_conv_names(num_up_blocks: int) -> tuple[str, ...]:
  return tuple(f"skip_conv_{i + 1}" for i in range(num_up_blocks))


# ---------------------------------------------------------------------------------------- generator


def _nchw(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 3, 1, 2))


def _nhwc(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 2, 3, 1))


@dataclasses.dataclass(frozen=True, eq=False)
class Generator:
  """The SCUF generator's modules and static settings; params are passed to `generate` (see `params_spec`).

  Fields: `unet` (sd_compat UNet2DConditionModel), `vae` (FlaxAutoencoderKL), `proj`
  (models.openai_clip.ProjModel), `scheduler_config` (scheduler_config.json as a dict), `num_tokens` (the CA
  tokens, = ProjModel's), `timestep` (999), `text_encoder` (optional sd_compat CLIPTextEncoder).
  `with_dtype(dtype)` returns a copy computing in `dtype` (the scheduler step always runs in float32).
  """
  unet: Any
  vae: Any
  proj: Any
  scheduler_config: Mapping[str, Any]
  num_tokens: int = 4
  timestep: int = TIMESTEP
  text_encoder: Any = None

  def __post_init__(self):
    _ddpm_config(self.scheduler_config)  # fail early on an unsupported scheduler config

  @property
  def dtype(self):
    return self.unet.dtype

  @property
  def scaling_factor(self) -> float:
    return float(self.vae.scaling_factor)

  def with_dtype(self, dtype) -> Generator:
    text_encoder = self.text_encoder.clone(dtype=dtype) if self.text_encoder is not None else None
    return dataclasses.replace(self, unet=self.unet.clone(dtype=dtype), vae=self.vae.clone(dtype=dtype),
                               proj=self.proj.clone(dtype=dtype), text_encoder=text_encoder)

  def encode_prompt(self, params: Mapping[str, Any], input_ids: jax.Array) -> jax.Array:
    """`text_encoder(input_ids)[0]` (no attention mask), with params['text_encoder']."""
    if self.text_encoder is None or "text_encoder" not in params:
      raise ValueError("this generator has no text encoder (load it with text_encoder=True)")
    return self.text_encoder.apply({"params": params["text_encoder"]}, input_ids).last_hidden_state

  def encode(self, params: Mapping[str, Any], x_t: jax.Array, *, direction: str,
             vae_noise: jax.Array | None = None) -> dict[str, Any]:
    """`VAE_encode(x_t, direction)` -> {'posterior_mean', 'posterior_logvar', 'posterior_std', 'latent' (NCHW,
    float32), 'enc_skips' (list of NCHW float32)}."""
    _check_direction(direction)
    return self.encode_with(params[f"vae_{direction}"], x_t, vae_noise=vae_noise)

  def encode_with(self, vae_params: Mapping[str, Any], x_t: jax.Array, *,
                  vae_noise: jax.Array | None = None) -> dict[str, Any]:
    """`encode` with explicit VAE params (training: LoRA-merged per step)."""
    dtype = self.dtype
    moments, acts = self.vae.apply({"params": vae_params}, _nhwc(x_t).astype(dtype), method=_encode_with_skips)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    logvar = jnp.clip(logvar, *LOGVAR_RANGE)
    std = jnp.exp(0.5 * logvar)
    mean, logvar, std = _nchw(mean), _nchw(logvar), _nchw(std)
    z = mean if vae_noise is None else mean + std * jnp.asarray(vae_noise, jnp.float32)
    return {"posterior_mean": mean, "posterior_logvar": logvar, "posterior_std": std,
            "latent": z * np.float32(self.scaling_factor), "enc_skips": acts}

  def decode(self, params: Mapping[str, Any], prev_sample: jax.Array, enc_skips: list[jax.Array], *,
             direction: str) -> jax.Array:
    """`vae.decode(prev_sample / 0.18215).sample` with the skips (NCHW float32, before the clamp). `enc_skips`
    as `encode` returns them (NHWC, compute dtype)."""
    _check_direction(direction)
    skip_params = params[f"skip_convs_{direction}"]
    kernels = [skip_params[name]["kernel"][0, 0] for name in skip_conv_names(len(enc_skips))]
    z = _nhwc(prev_sample / np.float32(self.scaling_factor)).astype(self.dtype)
    out = self.vae.apply({"params": params[f"vae_{direction}"]}, z, enc_skips, kernels,
                         method=_decode_with_skips)
    return _nchw(out.astype(jnp.float32))

  def decode_with(self, vae_params: Mapping[str, Any], skip_kernels: list[jax.Array], prev_sample: jax.Array,
                  enc_skips: list[jax.Array]) -> jax.Array:
    """`decode` with explicit VAE params and (in, out) skip kernels (training: LoRA-merged per step; the
    reflectance decoder) -> NCHW float32 before the clamp."""
    z = _nhwc(prev_sample / np.float32(self.scaling_factor)).astype(self.vae.dtype)
    out = self.vae.apply({"params": vae_params}, z, enc_skips, list(skip_kernels), method=_decode_with_skips)
    return _nchw(out.astype(jnp.float32))

  def context(self, params: Mapping[str, Any], text_emb: jax.Array, clip_embed: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """(ca_tokens = ProjModel(clip_embed), encoder_hidden_states = cat(text_emb, ca_tokens)), float32."""
    ca_tokens = self.proj.apply({"params": params["proj"]}, jnp.asarray(clip_embed, jnp.float32))
    ca_tokens = ca_tokens.astype(jnp.float32)
    return ca_tokens, jnp.concatenate([jnp.asarray(text_emb, jnp.float32), ca_tokens], axis=1)

  def generate(self, params: Mapping[str, Any], x_t: jax.Array, text_emb: jax.Array, clip_embed: jax.Array, *,
               direction: str = "a2b", vae_noise: jax.Array | None = None,
               sched_noise: jax.Array | None = None) -> dict[str, Any]:
    """`CycleGAN_Turbo.forward_infer(x_t, direction, text_emb, ca_adapter, clip_embed)` with every intermediate.

    Args:
      params: {'unet', 'vae_a2b', 'vae_b2a' (merged VAE trees), 'skip_convs_a2b', 'skip_convs_b2a' ({'skip_conv_i':
        {'kernel': (1, 1, in, out)}}), 'proj', 'ca_adapter', optional 'text_encoder'} (`convert.scuf`).
      x_t: (B, 3, H, W) images in [-1, 1], H and W multiples of 8 (`resize_image_to_nearest_factor`).
      text_emb: (B, 77, ctx_dim) text-encoder states; clip_embed: (B, clip_dim) L2-normalised CLIP embedding.
      direction: 'a2b' (lighten: `vae`) or 'b2a' (darken: `vae_b2a`).
      vae_noise: (B, latent_ch, h, w) N(0, 1) for `latent_dist.sample()`; None = the posterior mean (mode).
      sched_noise: N(0, 1) of the DDPM variance term, (B, latent_ch, h, w) or (latent_ch, h, w); None = no term.

    Returns:
      float32 NCHW arrays: 'posterior_mean', 'posterior_logvar', 'posterior_std', 'latent', 'enc_skip_0'..,
      'ca_tokens', 'encoder_hidden_states', 'unet_out', 'pred_original_sample', 'prev_sample',
      'decoded_preclamp', 'decoded' (the model output in [-1, 1]).
    """
    out = self.encode(params, x_t, direction=direction, vae_noise=vae_noise)
    skips = out.pop("enc_skips")
    for i, act in enumerate(skips):
      out[f"enc_skip_{i}"] = _nchw(act.astype(jnp.float32))
    out["ca_tokens"], ctx = self.context(params, text_emb, clip_embed)
    out["encoder_hidden_states"] = ctx
    eps = unet_with_cycle_attention(self.unet, params["unet"], params["ca_adapter"],
                                    out["latent"].astype(self.dtype), self.timestep, ctx.astype(self.dtype),
                                    num_tokens=self.num_tokens)
    out["unet_out"] = eps.astype(jnp.float32)
    out["prev_sample"], out["pred_original_sample"] = ddpm_step(self.scheduler_config, out["unet_out"],
                                                                self.timestep, out["latent"], sched_noise)
    out["decoded_preclamp"] = self.decode(params, out["prev_sample"], skips, direction=direction)
    out["decoded"] = jnp.clip(out["decoded_preclamp"], -1.0, 1.0)
    return out

  def __call__(self, params, x_t, text_emb, clip_embed, *, direction="a2b", vae_noise=None, sched_noise=None):
    """The model output in [-1, 1] (NCHW): `generate(...)['decoded']`."""
    return self.generate(params, x_t, text_emb, clip_embed, direction=direction, vae_noise=vae_noise,
                         sched_noise=sched_noise)["decoded"]


def _check_direction(direction: str) -> None:
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")


def to_uint8(decoded: jax.Array) -> jax.Array:
  """`ToPILImage()(decoded * 0.5 + 0.5)` at the model resolution: (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8,
  `mul(255).byte()` = truncation toward zero (quirk 11)."""
  x = (jnp.asarray(decoded, jnp.float32) * 0.5 + 0.5) * 255.0
  return jnp.transpose(jnp.trunc(x), (0, 2, 3, 1)).astype(jnp.uint8)
