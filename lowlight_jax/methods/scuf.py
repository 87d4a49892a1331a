"""SCUF / GEFU training (Wang et al., "Semantically Consistent Unsupervised Fine-tuning", ICCV 2025): unpaired
cycle fine-tuning of SD-Turbo with the illumination image prompt, the cycle-attention adapter, caption and
reflectance consistency and a vision-aided CLIP discriminator, on the trainer's sharded step.

Reference code: wangsen99/GEFU (commit 5d28e53) `src/train.py` (the step), `src/my_utils/cyclegan_turbo.py`
(`initialize_vae`, `VAE_encode`, `VAE_decode`, `REF_vae`, `forward_unet_out`, `forward_adapter(_dec)`,
`get_traininable_params_vae_ref`), `src/my_utils/training_utils.py` (data), `src/my_utils/enhancer.py` (DecomNet,
`enhance_loss`), and `vision_aided_loss` (`Discriminator(cv_type='clip', loss_type='multilevel_sigmoid')`:
`lowlight_jax.models.vision_aided`). The generator's forward is `lowlight_jax.models.scuf` (conformance-checked
against the authors' inference).

Groups:
  generator       the trained part of CycleGAN-Turbo-with-adapter: VAE LoRA (rank 4, alpha 8, peft 'gaussian'
                  init) of the a2b and b2a VAEs and of the reflectance decoder, the skip convs (base 1x1 kernels,
                  init 1e-5, and their LoRA) of each, the ProjModel and the cycle-attention adapter of every attn2
                  (`to_q_ca` ~ N(0, 1), `to_k_ca` / `to_v_ca` copied from the UNet's own to_k / to_v).
  discriminator   the two CLIP multi-level heads `a` (judges fake normal-light images) and `b` (fake low-light).
Frozen towers (never in an optimizer; each loaded from the user's files straight onto its shardings): `unet`
(the SD-Turbo UNet; the released "frozen copy" `unet_distill` is a deep copy of the same frozen weights taken
before the adapter was installed, so here it is the same params applied WITHOUT the cycle-attention interceptor),
`vae` (the base of all three VAEs: only their LoRA / skip convs differ), `text_encoder`, `clip` (OpenAI
ViT-B/32: the illumination prompt and the discriminator's backbone, as both load `clip.load('ViT-B/32')`),
`decomnet` (RetinexNet DecomNet, the reflectance teacher) and `lpips` (LPIPS-VGG).

One step, the released order (`loss.update_order='released'`): four generator updates, each with its own
gradient clip and AdamW step, then two discriminator updates:
  1. cycle a:  fake_b = a2b(a, emb(1 - V(a))), rec_a = b2a(fake_b, emb(V(a)));
               L1(rec_a, a) + 10 LPIPS + reflectance(rec_a_R, R(a)) + MSE(fake_b_R, sg(rec_a_R))
               + caption(rec_a latent, frozen-UNet latent of a under its caption)
  2. cycle b:  the same from b (b2a then a2b; emb(1 - V(b)) then emb(V(b))).
  3. GAN:      fake_a = b2a(b, emb(1 - V(b))), fake_b = a2b(a, emb(1 - V(a)));
               0.5 * (D_a(fake_b) + D_b(fake_a)) with the "real" target.
  4. identity: idt_a = a2b(b, emb(V(b))), idt_b = b2a(a, emb(V(a))); L1 + LPIPS each, reflectance L1 + 1 - SSIM of
               both, caption(idt_a, caption latent of b) + caption(idt_b, caption latent of a).
  5. D fake:   0.5 * (D_a(sg fake_b) + D_b(sg fake_a)) with the fake target, on step 3's fakes (computed once).
  6. D real:   0.5 * (D_a(b) + D_b(a)) with the real target.
Each forward samples its own VAE posterior noise and each discriminator call its own DiffAugment, as released; the
spectral-norm power iteration advances at every discriminator call (steps 3, 5, 6). `loss.update_order='joint'`
sums 1-4 into one generator update and 5-6 into one discriminator update (half the optimizer work; not the
released dynamics). `microbatches=N` computes each generator update's gradient over N strided slices of the batch,
one slice at a time (`train.microbatch`: the batch's gradient, every term being a mean over examples; the memory
of batch / N).

Port notes (paper vs released code; each released behaviour a config switch where cheap):
  * The reflectance decoder's skip convs are never optimised in the released code:
    `get_traininable_params_vae_ref` appends `vae_b2a`'s skip convs a second time instead of `vae_ref`'s, so
    vae_ref's 1x1 skip kernels stay at their 1e-5 init (their LoRA is trained) and vae_b2a's are stepped twice
    per optimizer step. We train vae_ref's skip kernels (the paper's intent: a trained third decoder);
    `loss.released_ref_skip_frozen=True` keeps them frozen at 1e-5 (held in `model_state`, never updated). The
    double step of vae_b2a's kernels is not reproduced.
  * Captions: the released dataset tokenizes a batch's captions and keeps `input_ids[0]`, so at batch > 1 every
    image is conditioned on the FIRST image's caption. We condition each image on its own caption (identical at
    the released batch size 1).
  * The DDPM step's variance term at t = 999 has standard deviation 1e-10 (alpha_prev = 1): dropped (it is
    below float32 resolution of the latents).
  * LoRA is merged into each VAE's kernels in float32 at every step (exact gradients for A and B, one VAE-sized
    temporary per direction); in bfloat16 compute the merged kernel is rounded once, where PyTorch's bf16 LoRA
    branch would round the two branch outputs. `model.vae_dtype='float32'` keeps the VAEs in float32.
  * Without captions (no CSVs) the caption term is skipped with a warning; the rest is unchanged.
  * The ProjModel starts from Flax's default init (PyTorch's Linear default differs); the authors start it,
    and the adapter, from `pretrained_ca_adapter_path` when given: `config.init_from` takes such a file.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from lowlight_jax import errors
from lowlight_jax.convert import sd_turbo
from lowlight_jax.losses import scuf as scuf_losses
from lowlight_jax.methods import base
from lowlight_jax.metrics import lpips as lpips_lib
from lowlight_jax.models import openai_clip
from lowlight_jax.models import policy as policy_lib
from lowlight_jax.models import retinexnet
from lowlight_jax.models import scuf as scuf_model
from lowlight_jax.models import sd_compat
from lowlight_jax.models import vision_aided
from lowlight_jax.ops import conv as conv_lib
from lowlight_jax.train import microbatch
from lowlight_jax.train import sharding as sharding_lib

PyTree = Any
logger = logging.getLogger(__name__)

#: Activations split over the batch mesh axes (see `sharding.constrain_batch`; a no-op outside the trainer's mesh).
_pin = sharding_lib.constrain_batch

DIRECTIONS = scuf_model.DIRECTIONS
# The frozen towers the step's loop bodies use (`Method._frozen_at`).
LOOP_TOWERS = ("unet", "vae", "clip", "lpips")
CLIP_SIZES = {  # VisionTransformer fields: the real ViT-B/32 and a tiny random stand-in for smoke runs.
    "ViT-B/32": dict(width=768, layers=12, patch_size=32, output_dim=512, input_resolution=224),
    "tiny": dict(width=64, layers=12, patch_size=32, output_dim=32, input_resolution=224),
}


def sd_turbo_folder(config: ml_collections.ConfigDict) -> str:
  """`config.sd_turbo`, or (smoke) the tiny random family written once into the weights cache."""
  if config.sd_turbo:
    return os.fspath(config.sd_turbo)
  if not config.get("smoke_family", False):
    raise errors.ConfigError("sd_turbo: set it to an SD-Turbo folder in diffusers layout (stabilityai/sd-turbo "
                             "as saved by diffusers), or use configs/scuf.py:smoke")
  from lowlight_jax.convert import sd_family  # pylint: disable=g-import-not-at-top
  from lowlight_jax.train import towers  # pylint: disable=g-import-not-at-top
  folder = os.path.join(towers.default_cache_dir(config.weights_cache), "sd_turbo_tiny_random_v1")
  return os.fspath(sd_family.write_tiny_family(folder, seed=0))


def lora_layers(vae_params: PyTree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{flax path of a LoRA'd VAE layer: its kernel shape} for a FlaxAutoencoderKL param tree (or its shapes):
  the authors' peft targets (`convert.scuf_export.vae_lora_layers`), skip convs excluded."""
  from lowlight_jax.convert import scuf_export  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(dict(vae_params))
  return {path: tuple(flat[path + ("kernel",)].shape) for path in scuf_export.vae_lora_layers(vae_params)}


def _prompt_text(config: ml_collections.ConfigDict, key: str) -> str:
  path = config.prompts.get(f"{key}_file")
  if path:
    from data_pipelines import captions  # pylint: disable=g-import-not-at-top
    return captions.read_prompt_file(path)
  return config.prompts[key]


class Method(base.BaseMethod):
  """SCUF training on the trainer's generator/discriminator step."""

  groups = ("generator", "discriminator")
  inference_towers = ("unet", "vae", "text_encoder", "clip")

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m, lc = config.model, config.loss
    if lc.update_order not in ("released", "joint"):
      raise errors.ConfigError(f"loss.update_order: {lc.update_order!r} is not 'released' or 'joint'")
    dt = self.policy.compute_dtype
    vae_dt = policy_lib.dtype(m.vae_dtype, "model.vae_dtype") if m.get("vae_dtype") else dt
    # `abstract_sd_turbo` (benchmarks only): the real SD-Turbo shapes from `models.sd_turbo_configs`, no folder,
    # no weights (the method can be traced and compiled, not trained).
    self.abstract = bool(config.get("abstract_sd_turbo", False))
    # diffusers' chunked self-attention (its `jax_memory_efficient_attention`): the UNet's 4096-token self-attention
    # at 512x512 without materialising the (heads, 4096, 4096) scores; same values up to float rounding.
    unet_kwargs = {"use_memory_efficient_attention": True} if m.get("memory_efficient_attention") else {}
    if self.abstract:
      from lowlight_jax.models import sd_turbo_configs  # pylint: disable=g-import-not-at-top
      self.folder = None
      self.unet_spec = sd_turbo.config_spec("unet", sd_turbo_configs.UNET_CONFIG, dtype=dt, **unet_kwargs)
      self.vae_spec = sd_turbo.config_spec("vae", sd_turbo_configs.VAE_CONFIG, dtype=vae_dt)
      self.text_spec = sd_turbo.config_spec("text_encoder", sd_turbo_configs.TEXT_ENCODER_CONFIG, dtype=dt)
      from lowlight_jax.convert import sd_family  # pylint: disable=g-import-not-at-top
      scheduler_config = dict(sd_family.SCHEDULER_CONFIG)  # sd-turbo's scheduler_config.json
    else:
      self.folder = sd_turbo_folder(config)
      self.unet_spec = sd_turbo.unet_spec(self.folder, dtype=dt, **unet_kwargs)
      self.vae_spec = sd_turbo.vae_spec(self.folder, dtype=vae_dt)
      self.text_spec = sd_turbo.text_encoder_spec(self.folder, dtype=dt)
      scheduler_config = sd_turbo.load_scheduler_config(self.folder)
    if m.clip_size not in CLIP_SIZES:
      raise errors.ConfigError(f"model.clip_size: {m.clip_size!r}; known: {sorted(CLIP_SIZES)}")
    self.clip_config = CLIP_SIZES[m.clip_size]
    self.clip = openai_clip.VisionTransformer(**self.clip_config, dtype=dt)
    ctx_dim = int(self.unet_spec.config.get("cross_attention_dim") or 0)
    proj = openai_clip.ProjModel(cross_attention_dim=ctx_dim, clip_extra_context_tokens=int(m.num_tokens))
    self.generator = scuf_model.Generator(unet=self.unet_spec.module, vae=self.vae_spec.module, proj=proj,
                                          scheduler_config=scheduler_config,
                                          num_tokens=int(m.num_tokens))
    self.heads = vision_aided.CLIPDiscriminatorHeads(dtype=dt)
    self.decomnet = retinexnet.RetinexNet(dtype=dt)
    self.lpips = lpips_lib.LPIPS("vgg")
    self.rank, self.lora_scale = int(m.lora_rank), float(m.lora_alpha) / float(m.lora_rank)
    self.lora_shapes = lora_layers(self.vae_spec.target)
    self.ref_skip_frozen = bool(lc.released_ref_skip_frozen)
    loops, grads = m.get("pair_loops", "scan"), m.get("conv_gradients", "auto")
    if loops not in ("scan", "unrolled"):
      raise errors.ConfigError(f"model.pair_loops: {loops!r} is not 'scan' or 'unrolled'")
    if grads not in ("auto", "lax", "canonical"):
      raise errors.ConfigError(f"model.conv_gradients: {grads!r} is not 'auto', 'lax' or 'canonical'")
    if m.get("remat_vae", "blocks") not in ("blocks", "layers"):
      raise errors.ConfigError(f"model.remat_vae: {m.remat_vae!r} is not 'blocks' or 'layers'")
    self.remat_vae_layers = m.get("remat_vae", "blocks") == "layers"
    self.sequential_decoders = bool(m.get("sequential_decoders", True))
    self.unroll = loops == "unrolled"
    # ops/conv.py: XLA's CPU backend runs JAX's convolution gradients inside a loop body as naive loops.
    self.canonical_convs = grads == "canonical" or (grads == "auto" and jax.default_backend() == "cpu")
    self.microbatches = int(config.get("microbatches", 1))
    if self.microbatches < 1 or int(config.batch_size) % self.microbatches:
      raise errors.ConfigError(f"microbatches: {self.microbatches} does not split batch_size {config.batch_size} "
                               "into equal slices")
    if self.abstract:
      self.prompt_ids = {d: np.zeros((1, 77), np.int32) for d in DIRECTIONS}
    else:
      tokenizer = sd_turbo.load_tokenizer(self.folder)
      ids = lambda text: np.asarray(tokenizer(text, max_length=tokenizer.model_max_length, padding="max_length",
                                              truncation=True, return_tensors="np").input_ids, np.int32)
      # a2b (lighten) is conditioned on the normal-light prompt ('fixed_prompt_b'), b2a on the low-light one.
      self.prompt_ids = {"a2b": ids(_prompt_text(config, "normal")), "b2a": ids(_prompt_text(config, "low"))}
    # A shape-only method (`abstract_sd_turbo`) has the full objective: the caption term on (caption ids in its
    # example batch), as the authors' recipe with its caption CSVs.
    self.use_captions = (self.abstract or bool(config.data.get("captions_low"))) and float(lc.caption) > 0
    if float(lc.caption) > 0 and not self.use_captions:
      logger.warning("scuf: no caption CSVs (data.captions_low / captions_high): the caption-consistency term is "
                     "off")

  # -- shapes and init ------------------------------------------------------------------------------------

  def example_batch(self) -> dict[str, jax.Array]:
    s = int(self.config.data.crop or self.config.data.resize or 64)
    batch = {"low": jnp.zeros((1, s, s, 3)), "high": jnp.zeros((1, s, s, 3))}
    if self.use_captions:
      batch.update(low_caption_ids=jnp.zeros((1, 77), jnp.int32), high_caption_ids=jnp.zeros((1, 77), jnp.int32))
    return batch

  def _skip_shapes(self) -> dict[str, tuple[int, int]]:
    """{skip_conv_i: (in, out)} of the VAE (`convert.scuf.skip_conv_shapes`)."""
    from lowlight_jax.convert import scuf as convert_scuf  # pylint: disable=g-import-not-at-top
    return {name: shape[2:] for name, shape in convert_scuf.skip_conv_shapes(self.vae_spec.target).items()}

  def _init_lora(self, rng, decoder_only: bool) -> dict:
    flat = {}
    layers = sorted(p for p in self.lora_shapes if not decoder_only or p[0] == "decoder")
    for i, path in enumerate(layers):
      shape = self.lora_shapes[path]
      # peft 'gaussian': lora_A ~ N(0, 1 / r), lora_B = 0.
      flat[path + ("lora_a",)] = jax.random.normal(jax.random.fold_in(rng, i), shape[:-1] + (self.rank,)) / self.rank
      flat[path + ("lora_b",)] = jnp.zeros((self.rank, shape[-1]))
    return traverse_util.unflatten_dict(flat)

  def _init_skips(self, rng, with_kernel: bool = True) -> dict:
    out = {}
    for i, (name, (cin, cout)) in enumerate(sorted(self._skip_shapes().items())):
      entry = {"lora_a": jax.random.normal(jax.random.fold_in(rng, i), (1, 1, cin, self.rank)) / self.rank,
               "lora_b": jnp.zeros((self.rank, cout))}
      if with_kernel:
        entry["kernel"] = jnp.full((1, 1, cin, cout), 1e-5)
      out[name] = entry
    return out

  def _init_ca_adapter(self, rng, unet_params) -> dict:
    """to_q_ca ~ N(0, 1) (`torch.randn(hidden, n)`), to_k_ca / to_v_ca = the attn2's own to_k / to_v."""
    flat = traverse_util.flatten_dict(dict(unet_params))
    layers = sorted({p[:p.index("attn2") + 1] for p in flat if "attn2" in p})
    out = {}
    for i, path in enumerate(layers):
      hidden = flat[path + ("to_q", "kernel")].shape[-1]
      out[path + ("to_q_ca",)] = jax.random.normal(jax.random.fold_in(rng, i), (int(self.config.model.num_tokens),
                                                                                 hidden))
      out[path + ("to_k_ca",)] = jnp.asarray(flat[path + ("to_k", "kernel")], jnp.float32)
      out[path + ("to_v_ca",)] = jnp.asarray(flat[path + ("to_v", "kernel")], jnp.float32)
    return traverse_util.unflatten_dict(out)

  def init(self, rng, batch):
    keys = jax.random.split(rng, 12)
    frozen = {
        "unet": self.unet_spec.module.init_weights(keys[0]),
        "vae": self.vae_spec.module.init_weights(keys[1]),
        "text_encoder": self.text_spec.module.init(keys[2], jnp.zeros((1, 77), jnp.int32))["params"],
        "clip": self.clip.init(keys[3], jnp.zeros((1, 224, 224, 3)))["params"],
        "decomnet": self.decomnet.init(keys[4], jnp.zeros((1, 16, 16, 3)))["params"],
        "lpips": self.lpips.init(keys[5], jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3)))["params"],
    }
    gen = {f"lora_{d}": self._init_lora(jax.random.fold_in(keys[6], i), False) for i, d in enumerate(DIRECTIONS)}
    gen["lora_ref"] = self._init_lora(keys[7], True)
    gen.update({f"skip_{d}": self._init_skips(jax.random.fold_in(keys[8], i)) for i, d in enumerate(DIRECTIONS)})
    gen["skip_ref"] = self._init_skips(keys[9], with_kernel=not self.ref_skip_frozen)
    gen["proj"] = self.generator.proj.init(keys[10], jnp.zeros((1, self.clip_config["output_dim"])))["params"]
    gen["ca_adapter"] = self._init_ca_adapter(keys[11], frozen["unet"])
    feats = [jnp.zeros(shape, jnp.float32) for shape in vision_aided.feature_shapes(self.clip, 1)]
    d_vars = {k: self.heads.init(jax.random.fold_in(keys[11], 7 + i), feats, update_stats=False)
              for i, k in enumerate(("a", "b"))}
    params = {"generator": gen, "discriminator": {k: v["params"] for k, v in d_vars.items()}}
    model_state = {"discriminator": {k: {c: v[c] for c in v if c != "params"} for k, v in d_vars.items()}}
    if self.ref_skip_frozen:
      model_state["skip_ref_kernels"] = {name: jnp.full((1, 1, cin, cout), 1e-5)
                                         for name, (cin, cout) in self._skip_shapes().items()}
    return base.Variables(params=params, model_state=model_state, frozen=frozen)

  # -- the generator ----------------------------------------------------------------------------------------
  #
  # Direction-generic: a direction's trained params are SELECTED by an index (0: a2b, 1: b2a) rather than picked
  # by Python branches, so the two cycle updates are one `lax.scan` body, the cycle's two translations one scan
  # body, and the GAN / identity / discriminator pairs one `lax.map` body: each network appears a few times in
  # the compiled step instead of once per call (XLA compile time grows with the graph; the released step calls
  # the UNet 12 times). Not `vmap`: batching over selected kernels makes batch-grouped convolutions in the
  # backward pass, which XLA's SPMD partitioner rejects once the kernels are FSDP-sharded. On CPU the convolutions'
  # gradients are built in XLA's canonical form (`model.conv_gradients`, ops/conv.py): in a loop body JAX's own run
  # as naive loops there.

  def _scan(self, body, init, xs):
    """`lax.scan` over a pair (the two cycle updates, a cycle's two translations), or the pair written out when
    `model.pair_loops` is 'unrolled' (a larger program: the 8-device smoke step compiled in 6 min as loops and had
    not compiled after 15 min unrolled, 2 cores)."""
    return jax.lax.scan(body, init, xs, unroll=self.unroll)

  def _map(self, fn, xs):
    """`lax.map` of a pair (the GAN / identity / discriminator pairs), unrolled as `_scan` is."""
    return self._scan(lambda carry, x: (carry, fn(x)), None, xs)[1]

  def _grad(self, fn, gen, data, rng):
    """((loss, aux stacked over micro-batches), grads) of fn(gen, data, rng) -> (loss, aux): the gradient
    accumulated over `microbatches` strided slices of the batch (`train.microbatch`; data's batch axis is 1, after
    the stacked source / direction axis)."""
    return microbatch.value_and_grad(fn, gen, data, rng, self.microbatches, axis=1)

  @staticmethod
  def mean_over_slices(terms):
    """Batch-mean terms stacked over micro-batches -> the batch's."""
    return jax.tree.map(lambda t: jnp.mean(t, axis=0), terms)

  @classmethod
  def gan_aux(cls, terms, fakes, states):
    """The GAN loss's aux stacked over micro-batches -> the batch's: mean terms, the fakes (2, B, ...) back in batch
    order, the heads' new state (the spectral-norm power iteration depends on the weights only: every slice computes
    the same one)."""
    return cls.mean_over_slices(terms), microbatch.unsplit(fakes, axis=1), jax.tree.map(lambda t: t[0], states)

  def _frozen_at(self, frozen, i):
    """The frozen towers a loop body uses, made to depend on its index `i` (`sharding.gathered_per_iteration`:
    their FSDP all-gathers stay in the body instead of being hoisted out of the step's loops)."""
    towers = {k: frozen[k] for k in LOOP_TOWERS if k in frozen}
    return {**frozen, **sharding_lib.gathered_per_iteration(towers, i, self.config.sharding)}

  def _remat(self):
    return sd_compat.remat_blocks(policy_lib.REMAT[self.policy.remat], vae_layers=self.remat_vae_layers)

  @staticmethod
  def _select(i, first, second):
    """`first` where i == 0 else `second`, leaf by leaf (i a traced scalar, possibly vmapped)."""
    return jax.tree.map(lambda a, b: jnp.where(i == 0, a, b), first, second)

  def _merge_vae(self, frozen, lora) -> PyTree:
    """The frozen VAE with a LoRA merged (float32), in the VAE's compute dtype: its convolutions cast their
    kernels and biases to it anyway, and diffusers' GroupNorms (no dtype of their own) then compute in it too
    instead of promoting every normalised activation to float32 (statistics stay float32). A no-op in float32."""
    base_vae = jax.tree.map(lambda x: x.astype(jnp.float32), frozen["vae"])
    merged = scuf_model.merge_lora_tree(base_vae, lora, self.lora_scale)
    return jax.tree.map(lambda x: x.astype(self.vae_spec.module.dtype), merged)

  def _skip_kernels(self, skips, base_kernels=None) -> list[jax.Array]:
    out = []
    for name in sorted(skips):
      entry = skips[name]
      kernel = entry["kernel"] if base_kernels is None else base_kernels[name]
      out.append(scuf_model.merge_lora(kernel.astype(jnp.float32), entry["lora_a"], entry["lora_b"],
                                       self.lora_scale)[0, 0])
    return out

  def _direction(self, gen, frozen, i) -> tuple[PyTree, list[jax.Array]]:
    """Direction i's merged VAE params and (in, out) skip kernels."""
    lora = self._select(i, gen["lora_a2b"], gen["lora_b2a"])
    skips = self._select(i, gen["skip_a2b"], gen["skip_b2a"])
    return self._merge_vae(frozen, lora), self._skip_kernels(skips)

  def _reflectance_decoder(self, gen, frozen, model_state) -> tuple[PyTree, list[jax.Array]]:
    base_kernels = model_state.get("skip_ref_kernels") if self.ref_skip_frozen else None
    return self._merge_vae(frozen, gen["lora_ref"]), self._skip_kernels(gen["skip_ref"], base_kernels)

  def _encode(self, vae, x, rng):
    """`VAE_encode`: a posterior sample (the mean with `loss.sample_posterior=False`) -> (latent, skips)."""
    latent_shape = (x.shape[0], int(self.vae_spec.config.get("latent_channels", 4)), x.shape[2] // 8,
                    x.shape[3] // 8)
    noise = jax.random.normal(rng, latent_shape) if self.config.loss.sample_posterior else None
    with self._remat():
      out = self.policy.remat_fn(lambda v, i, n: self.generator.encode_with(v, i, vae_noise=n))(
          vae, _pin(x), noise)
    return _pin(out["latent"]), [_pin(t) for t in out["enc_skips"]]

  def _step_latent(self, eps, latent):
    prev, _ = scuf_model.ddpm_step(self.generator.scheduler_config, eps.astype(jnp.float32),
                                   self.generator.timestep, latent, None)
    return prev

  def translate(self, direction, ref, gen, frozen, x, text_emb, clip_emb, rng):
    """`forward_adapter_dec` (`ref` given) / `forward_adapter` (ref None): NCHW [-1, 1] -> (decoded in [-1, 1],
    output latent, reflectance NHWC in (0, 1) or None). `direction` = (merged VAE, skip kernels)."""
    vae, kernels = direction
    latent, skips = self._encode(vae, x, rng)
    _, ctx = self.generator.context({"proj": gen["proj"]}, text_emb, clip_emb)
    with self._remat():
      eps = _pin(scuf_model.unet_with_cycle_attention(self.generator.unet, frozen["unet"], gen["ca_adapter"],
                                                      latent.astype(self.generator.dtype), self.generator.timestep,
                                                      _pin(ctx.astype(self.generator.dtype)),
                                                      num_tokens=self.generator.num_tokens))
      out_latent = _pin(self._step_latent(eps, latent))
      main = (vae, kernels, out_latent, skips)
      refl = None
      decode = self.policy.remat_fn(self.generator.decode_with)
      if ref is None:
        decoded = decode(*main)
      elif self.policy.remat != "none" and self.sequential_decoders:
        # Both 512x512 decoders of this latent rematerialised as a pair whose backward passes run one after the
        # other (`policy.sequential_pair`): XLA's CPU scheduler interleaved them under FSDP, both decoders'
        # activations alive at the step's peak. scuf_memory, batch 8: 8 devices with FSDP 10.4 GB (13.1 GB
        # interleaved); one device 54.9 GB, 51.0 GB without the pair (`model.sequential_decoders`).
        decoded, r = policy_lib.sequential_pair(self.generator.decode_with, self.generator.decode_with,
                                                self._remat)(main, (ref[0], ref[1], out_latent, skips))
      else:
        decoded, r = decode(*main), decode(ref[0], ref[1], out_latent, skips)
      decoded = _pin(jnp.clip(decoded, -1.0, 1.0))
      if ref is not None:
        refl = _pin(jax.nn.sigmoid(jnp.transpose(r, (0, 2, 3, 1))))
    return decoded, out_latent, refl

  def caption_latent(self, direction, frozen, x, caption_emb, rng):
    """`forward_unet_out`: the frozen UNet WITHOUT the adapter, conditioned on the caption alone -> the output
    latent. The encoder is the trained direction's (gradients reach its LoRA, as released)."""
    latent, _ = self._encode(direction[0], x, rng)
    timesteps = jnp.full((1,), self.generator.timestep, jnp.int32)
    with self._remat():
      eps = self.generator.unet.apply({"params": frozen["unet"]}, latent.astype(self.generator.dtype), timesteps,
                                      _pin(caption_emb.astype(self.generator.dtype))).sample
    return _pin(self._step_latent(_pin(eps), latent))

  # -- frozen helpers ---------------------------------------------------------------------------------------

  def _text(self, frozen, ids):
    return self.text_spec.module.apply({"params": frozen["text_encoder"]}, ids).last_hidden_state.astype(
        jnp.float32)

  def _clip_embed(self, frozen, images_nhwc, direction):
    v = openai_clip.illumination_prompt(images_nhwc, direction)
    emb = self.clip.apply({"params": frozen["clip"]}, v, pos_embedding=False)
    return openai_clip.l2_normalize(emb)

  def _lpips(self, frozen, x_nchw, y_nchw):
    nhwc = lambda t: jnp.transpose(t, (0, 2, 3, 1)).astype(jnp.float32)
    fn = self.policy.remat_fn(lambda a, b: self.lpips.apply({"params": frozen["lpips"]}, a, b))
    return jnp.mean(fn(_pin(nhwc(x_nchw)), _pin(nhwc(y_nchw))))

  def _discriminate(self, heads_params, heads_state, frozen, images_nchw, rng, target_real):
    """One set of heads on NCHW [-1, 1] images -> (mean multilevel sigmoid loss, new heads state)."""
    logits, new_state = vision_aided.discriminate(
        self.heads, {"params": heads_params, **heads_state}, self.clip, frozen["clip"],
        _pin(jnp.transpose(images_nchw, (0, 2, 3, 1))), rng, diffaug=bool(self.config.loss.diffaug),
        update_stats=True)
    return jnp.mean(vision_aided.multilevel_sigmoid_loss(logits, target_real)), new_state

  def _discriminators(self, d_params, d_state, frozen, images, rngs, target_real):
    """Both heads in one `lax.map` body: images[j] judged by head j (0: 'a', normal-light fakes; 1: 'b') ->
    (losses (2,), new states {'a', 'b'})."""
    def one(j, img, key):
      hp = self._select(j, d_params["a"], d_params["b"])
      hs = self._select(j, d_state["a"], d_state["b"])
      return self._discriminate(hp, hs, self._frozen_at(frozen, j), img, key, target_real)
    losses, states = self._map(lambda a: one(*a), (jnp.arange(2), images, rngs))
    return losses, {k: jax.tree.map(lambda t, j=j: t[j], states) for j, k in enumerate(("a", "b"))}

  # -- the step ---------------------------------------------------------------------------------------------

  def _prepare(self, frozen, batch):
    """What no gradient reaches, stacked by source (index 0: a = low, 1: b = normal) or direction (0: a2b):
    images, fixed-prompt embeddings, CLIP prompts ('r' = 1 - V, 'v' = V of the source), DecomNet reflectances,
    caption embeddings."""
    img = _pin(jnp.stack([batch["low"], batch["high"]]).astype(jnp.float32), 1)  # (2, B, H, W, 3)
    bsz, h, w = img.shape[1:4]
    # Pinned: the partitioner replicated the frozen towers' work on this (2, B) -> (2B) merge.
    flat = _pin(img.reshape((2 * bsz, h, w, 3)))
    # One call per frozen network: the four CLIP prompts, both DecomNet teachers, all prompt / caption texts.
    prompts = _pin(jnp.concatenate([openai_clip.illumination_prompt(flat, "a2b"),
                                    openai_clip.illumination_prompt(flat, "b2a")]))
    emb = openai_clip.l2_normalize(self.clip.apply({"params": frozen["clip"]}, prompts, pos_embedding=False))
    emb = _pin(emb.reshape((2, 2, bsz) + emb.shape[1:]), 2)  # (r | v, source, B, D)
    teacher = _pin(self.decomnet.apply({"params": frozen["decomnet"]}, flat)["R"].astype(jnp.float32))
    ids = [jnp.asarray(self.prompt_ids[d]) for d in DIRECTIONS]
    if self.use_captions:
      ids += [batch["low_caption_ids"], batch["high_caption_ids"]]
    texts = self._text(frozen, jnp.concatenate(ids))
    text = jnp.stack([jnp.broadcast_to(texts[k:k + 1], (bsz,) + texts.shape[1:]) for k in range(2)])
    data = {"x": jnp.transpose(img * 2.0 - 1.0, (0, 1, 4, 2, 3)), "text": _pin(text, 1), "emb_r": emb[0],
            "emb_v": emb[1], "teacher": _pin(teacher.reshape((2, bsz) + teacher.shape[1:]), 1)}
    if self.use_captions:
      data["caps"] = _pin(texts[2:].reshape((2, bsz) + texts.shape[1:]), 1)
    return jax.lax.stop_gradient(data)

  def _cycle_loss(self, gen, frozen, model_state, data, i, rng):
    """Cycle objective of source i (0: a -> fake b -> rec a, 1: b -> fake a -> rec b) -> (loss, terms)."""
    w = self.config.loss
    pick = lambda t: self._select(i, t[0], t[1])
    x, teacher = pick(data["x"]), pick(data["teacher"])
    fwd, back = self._direction(gen, frozen, i), self._direction(gen, frozen, 1 - i)
    ref = self._reflectance_decoder(gen, frozen, model_state)
    # The two translations (forward with the 1 - V prompt, back with the V prompt) as one scan body.
    steps = (jax.tree.map(lambda p, q: jnp.stack([p, q]), fwd, back),
             jnp.stack([pick(data["text"]), self._select(i, data["text"][1], data["text"][0])]),
             jnp.stack([pick(data["emb_r"]), pick(data["emb_v"])]),
             jax.random.split(jax.random.fold_in(rng, 0)), jnp.arange(2))

    def body(image, xs):
      direction, text, emb, key, t = xs
      decoded, latent, refl = self.translate(direction, ref, gen, self._frozen_at(frozen, t), image, text, emb, key)
      return decoded, (decoded, latent, refl)

    _, (decoded, latents, refls) = self._scan(body, x, steps)
    rec, rec_lat, fake_r, rec_r = decoded[1], latents[1], refls[0], refls[1]
    terms = {"l1": scuf_losses.l1(rec, x) * w.cycle,
             "lpips": self._lpips(frozen, rec, x) * w.cycle_lpips,
             "reflectance": (scuf_losses.reflectance(rec_r, teacher)
                             + scuf_losses.cross_direction_reflectance(fake_r, rec_r)) * w.reflectance}
    if self.use_captions:
      cap = self.caption_latent(fwd, frozen, x, pick(data["caps"]), jax.random.fold_in(rng, 1))
      terms["caption"] = scuf_losses.caption_consistency(rec_lat, cap) * w.caption
    return sum(terms.values()), terms

  def _gan_loss(self, gen, d_params, d_state, frozen, data, rng):
    """fake_b = a2b(a, 1 - V(a)), fake_a = b2a(b, 1 - V(b)) (one map body); the heads' 'real' target ->
    (loss, (terms, fakes (2, ...) [fake_b, fake_a], new head states))."""
    w = self.config.loss

    def fake(j, key):
      pick = lambda t: self._select(j, t[0], t[1])
      frozen_j = self._frozen_at(frozen, j)
      decoded, _, _ = self.translate(self._direction(gen, frozen_j, j), None, gen, frozen_j, pick(data["x"]),
                                     pick(data["text"]), pick(data["emb_r"]), key)
      return decoded

    keys = jax.random.split(rng, 4)
    fakes = self._map(lambda a: fake(*a), (jnp.arange(2), keys[:2]))
    losses, states = self._discriminators(jax.lax.stop_gradient(d_params), d_state, frozen, fakes, keys[2:], True)
    terms = {"gan_a": losses[0] * w.gan, "gan_b": losses[1] * w.gan}
    return sum(terms.values()), (terms, fakes, states)

  def _identity_loss(self, gen, frozen_all, model_state, data, rng):
    """idt_a = a2b(b, V(b)), idt_b = b2a(a, V(a)) (one map body over the direction j; the source is 1 - j)."""
    w = self.config.loss
    ref = self._reflectance_decoder(gen, frozen_all, model_state)

    def one(j, key):
      frozen = self._frozen_at(frozen_all, j)
      src = lambda t: self._select(j, t[1], t[0])  # the source image's entry (b for a2b)
      x, direction = src(data["x"]), self._direction(gen, frozen, j)
      text = self._select(j, data["text"][0], data["text"][1])
      out, latent, refl = self.translate(direction, ref, gen, frozen, x, text, src(data["emb_v"]),
                                         jax.random.fold_in(key, 0))
      terms = {"l1": scuf_losses.l1(out, x) * w.idt, "lpips": self._lpips(frozen, out, x) * w.idt_lpips,
               "reflectance": scuf_losses.reflectance(refl, src(data["teacher"])) * w.reflectance}
      if self.use_captions:
        # The caption latent of the SOURCE image through its own direction's encoder (b: b2a).
        cap = self.caption_latent(self._direction(gen, frozen, 1 - j), frozen, x, src(data["caps"]),
                                  jax.random.fold_in(key, 1))
        terms["caption"] = scuf_losses.caption_consistency(latent, cap) * w.caption
      return terms

    terms = self._map(lambda a: one(*a), (jnp.arange(2), jax.random.split(rng)))
    totals = {f"idt_{k}": jnp.sum(v) for k, v in terms.items()}
    return sum(totals.values()), totals

  def train_step(self, ctx, params, opt_state, model_state, frozen, batch, rng):
    with conv_lib.loop_friendly_convs(self.canonical_convs):  # Flax builds the modules while this traces
      return self._train_step(ctx, params, opt_state, model_state, frozen, batch, rng)

  def _train_step(self, ctx, params, opt_state, model_state, frozen, batch, rng):
    w = self.config.loss
    data = self._prepare(frozen, batch)
    keys = {n: jax.random.fold_in(rng, i) for i, n in enumerate(("cycle", "gan", "idt", "d_fake", "d_real"))}
    params, opt_state = dict(params), dict(opt_state)
    d_state = model_state["discriminator"]
    metrics = {}

    def apply(group, grads, p, o, loss):
      p, o, upd, ok = ctx.apply_gradients(group, grads, p, o)
      return p, o, upd["grad_norm"], ok & jnp.isfinite(loss)

    def named(prefix, stacked):
      return {f"generator/{prefix}_{src}_{k}": v[j] for k, v in stacked.items() for j, src in enumerate("ab")}

    mean_over_slices, gan_aux = self.mean_over_slices, self.gan_aux
    if w.update_order == "released":
      # Updates 1-2: cycle a, then cycle b with the updated params (one scan body).
      def cycle_update(carry, i):
        gen, opt = carry
        frozen_i = self._frozen_at(frozen, i)
        (loss, terms), grads = self._grad(lambda g, d, k: self._cycle_loss(g, frozen_i, model_state, d, i, k), gen,
                                          data, jax.random.fold_in(keys["cycle"], i))
        terms = mean_over_slices(terms)
        gen, opt, norm, ok = apply("generator", grads, gen, opt, loss)
        return (gen, opt), (loss, terms, norm, ok)

      (params["generator"], opt_state["generator"]), (losses, terms, _, oks) = self._scan(
          cycle_update, (params["generator"], opt_state["generator"]), jnp.arange(2))
      finite = jnp.all(oks)
      metrics.update(named("cycle", terms))
      metrics.update({"generator/cycle_a": losses[0], "generator/cycle_b": losses[1]})
      # Update 3: the generator's GAN term; its fakes are the discriminator's in updates 5-6.
      (loss, (terms, fakes, d_state)), grads = self._grad(
          lambda g, d, k: self._gan_loss(g, params["discriminator"], d_state, frozen, d, k), params["generator"],
          data, keys["gan"])
      terms, fakes, d_state = gan_aux(terms, fakes, d_state)
      params["generator"], opt_state["generator"], _, ok = apply("generator", grads, params["generator"],
                                                                 opt_state["generator"], loss)
      finite = finite & ok
      metrics.update({f"generator/{k}": v for k, v in terms.items()})
      # Update 4: identity.
      (loss, terms), grads = self._grad(lambda g, d, k: self._identity_loss(g, frozen, model_state, d, k),
                                        params["generator"], data, keys["idt"])
      terms = mean_over_slices(terms)
      params["generator"], opt_state["generator"], norm, ok = apply("generator", grads, params["generator"],
                                                                    opt_state["generator"], loss)
      finite = finite & ok
      metrics.update({f"generator/{k}": v for k, v in terms.items()})
      metrics["generator/identity"] = loss
    else:
      def joint(g, d, key):
        cyc = self._map(lambda i: self._cycle_loss(g, frozen, model_state, d, i,
                                                   jax.random.fold_in(jax.random.fold_in(key, 0), i)),
                        jnp.arange(2))
        gan_loss, (gan_terms, fakes, states) = self._gan_loss(g, params["discriminator"], d_state, frozen, d,
                                                              jax.random.fold_in(key, 1))
        idt_loss, idt_terms = self._identity_loss(g, frozen, model_state, d, jax.random.fold_in(key, 2))
        terms = {**named("cycle", cyc[1]), **{f"generator/{k}": v for k, v in {**gan_terms, **idt_terms}.items()}}
        return jnp.sum(cyc[0]) + gan_loss + idt_loss, (terms, fakes, states)

      # key: the step's rng (one micro-batch) or a slice's; its fold-ins 0-2 are `keys`' cycle / gan / idt.
      (loss, (terms, fakes, d_state)), grads = self._grad(joint, params["generator"], data, rng)
      terms, fakes, d_state = gan_aux(terms, fakes, d_state)
      params["generator"], opt_state["generator"], norm, finite = apply("generator", grads, params["generator"],
                                                                        opt_state["generator"], loss)
      metrics.update(terms)
    metrics["generator/grad_norm"] = norm

    # Updates 5-6: the discriminator on the GAN update's fakes (detached), then on real images.
    fakes = jax.lax.stop_gradient(fakes)  # [fake_b (judged by 'a'), fake_a (judged by 'b')]
    reals = jnp.stack([data["x"][1], data["x"][0]])  # 'a' sees real normal-light images, 'b' real low-light

    def d_loss(dp, state, images, key, real):
      losses, state = self._discriminators(dp, state, frozen, images, jax.random.split(key), real)
      return jnp.sum(losses) * w.gan, (state, losses * w.gan)

    if w.update_order == "released":
      (lf, (d_state, fake_terms)), grads = jax.value_and_grad(d_loss, has_aux=True)(
          params["discriminator"], d_state, fakes, keys["d_fake"], False)
      params["discriminator"], opt_state["discriminator"], _, ok = apply(
          "discriminator", grads, params["discriminator"], opt_state["discriminator"], lf)
      finite = finite & ok
      (lr_, (d_state, real_terms)), grads = jax.value_and_grad(d_loss, has_aux=True)(
          params["discriminator"], d_state, reals, keys["d_real"], True)
      params["discriminator"], opt_state["discriminator"], norm, ok = apply(
          "discriminator", grads, params["discriminator"], opt_state["discriminator"], lr_)
      finite = finite & ok
    else:
      def joint_d(dp):
        lf, (state, fake_terms) = d_loss(dp, d_state, fakes, keys["d_fake"], False)
        lr_, (state, real_terms) = d_loss(dp, state, reals, keys["d_real"], True)
        return lf + lr_, (state, fake_terms, real_terms)
      (ld, (d_state, fake_terms, real_terms)), grads = jax.value_and_grad(joint_d, has_aux=True)(
          params["discriminator"])
      params["discriminator"], opt_state["discriminator"], norm, ok = apply(
          "discriminator", grads, params["discriminator"], opt_state["discriminator"], ld)
      finite = finite & ok
    metrics.update({"discriminator/disc_a": fake_terms[0] + real_terms[0],
                    "discriminator/disc_b": fake_terms[1] + real_terms[1],
                    "discriminator/fake": jnp.sum(fake_terms), "discriminator/real": jnp.sum(real_terms),
                    "discriminator/grad_norm": norm})
    model_state = {**model_state, "discriminator": d_state}
    return base.StepResult(params=params, opt_state=opt_state, model_state=model_state, metrics=metrics,
                           finite=finite)

  # -- inference --------------------------------------------------------------------------------------------

  def enhance(self, params, model_state, frozen, images):
    """Lighten (a2b) NHWC [0, 1] images of any size: edge-padded to multiples of 8, the posterior mean (no
    sampling), the fixed normal-light prompt and the 1 - V image prompt, cropped back. (The authors' inference
    resizes to the nearest multiple of 8 instead and samples the posterior: `launch.enhance --method scuf` runs
    that path with released weights.)"""
    del model_state
    h, w = images.shape[1:3]
    x = jnp.pad(images.astype(jnp.float32), ((0, 0), (0, (-h) % 8), (0, (-w) % 8), (0, 0)), mode="edge")
    gen = params["generator"]
    text = jnp.broadcast_to(self._text(frozen, jnp.asarray(self.prompt_ids["a2b"])),
                            (x.shape[0], 77, int(self.unet_spec.config.get("cross_attention_dim"))))
    vae, kernels = self._merge_vae(frozen, gen["lora_a2b"]), self._skip_kernels(gen["skip_a2b"])
    nchw = jnp.transpose(x * 2.0 - 1.0, (0, 3, 1, 2))
    latent = self.generator.encode_with(vae, nchw)
    _, ctx = self.generator.context({"proj": gen["proj"]}, text, self._clip_embed(frozen, x, "a2b"))
    eps = scuf_model.unet_with_cycle_attention(self.generator.unet, frozen["unet"], gen["ca_adapter"],
                                               latent["latent"].astype(self.generator.dtype),
                                               self.generator.timestep, ctx.astype(self.generator.dtype),
                                               num_tokens=self.generator.num_tokens)
    out = self.generator.decode_with(vae, kernels, self._step_latent(eps, latent["latent"]), latent["enc_skips"])
    out = jnp.transpose(jnp.clip(out, -1.0, 1.0), (0, 2, 3, 1))[:, :h, :w] * 0.5 + 0.5
    return {"enhanced": jnp.clip(out, 0.0, 1.0)}

  # -- weights ------------------------------------------------------------------------------------------------

  def weight_sources(self) -> list[base.WeightSource]:
    """The SD-Turbo folder's UNet / VAE / text encoder, the CLIP image tower, DecomNet and LPIPS-VGG (each
    random when its file is not configured, for smoke runs), the adapter's to_k_ca / to_v_ca from the UNet file,
    and `init_from` (the authors' checkpoint or a run directory)."""
    cfg = self.config
    if self.abstract:
      raise errors.ConfigError("abstract_sd_turbo: a shape-only method (benchmarks) has no weights to load")
    if not cfg.get("smoke_family", False):  # random frozen towers only in smoke configs
      for field, value in (("clip.weights", cfg.clip.weights), ("decomnet.weights", cfg.decomnet.weights),
                           ("lpips.heads", cfg.lpips.heads), ("lpips.backbone", cfg.lpips.backbone)):
        if not value:
          raise errors.ConfigError(f"{field} is not set: SCUF training needs the user's weights for this frozen "
                                   "network (see configs/scuf.py); only the smoke config runs with random ones")
    sources = []
    for name, spec in (("unet", self.unet_spec), ("vae", self.vae_spec), ("text_encoder", self.text_spec)):
      sources.append(base.WeightSource(
          target=("frozen", name), files=(os.fspath(spec.weights),),
          convert=lambda abstract, spec=spec: spec.convert(sd_turbo.read_state_dict(spec.weights), abstract),
          converter=f"sd-turbo-{name}-v1"))
    if cfg.clip.weights:
      def convert_clip(abstract, path=cfg.clip.weights):
        from lowlight_jax.convert import openai_clip as convert_clip_lib  # pylint: disable=g-import-not-at-top
        return convert_clip_lib.load_clip_image_encoder(path)[1]["params"]
      sources.append(base.WeightSource(("frozen", "clip"), (cfg.clip.weights,), convert_clip, "openai-clip-v1"))
    if cfg.decomnet.weights:
      def convert_decom(abstract, path=cfg.decomnet.weights):
        from lowlight_jax.convert import io as convert_io  # pylint: disable=g-import-not-at-top
        from lowlight_jax.convert import weights as weights_lib  # pylint: disable=g-import-not-at-top
        return weights_lib.convert("retinexnet_decom", convert_io.load_state_dict(path))["params"]
      sources.append(base.WeightSource(("frozen", "decomnet"), (cfg.decomnet.weights,), convert_decom,
                                       "retinexnet-decom-v1"))
    if cfg.lpips.heads:
      def convert_lpips(abstract, heads=cfg.lpips.heads, backbone=cfg.lpips.backbone):
        return lpips_lib.load_variables("vgg", heads_path=heads, backbone_path=backbone)["params"]
      sources.append(base.WeightSource(("frozen", "lpips"), (cfg.lpips.heads, cfg.lpips.backbone),
                                       convert_lpips, "lpips-vgg-v1"))
    if cfg.init_from and os.path.isdir(cfg.init_from):
      sources.append(base.run_weight_source(cfg.init_from, "generator"))
    elif cfg.init_from:
      sources.append(self._checkpoint_source(cfg.init_from))
    else:
      sources.append(self._adapter_kv_source())
    return sources

  def _adapter_kv_source(self) -> base.WeightSource:
    """to_k_ca / to_v_ca = the loaded UNet's attn2 to_k / to_v (to_q_ca stays random: a partial source)."""
    spec = self.unet_spec

    def convert(abstract):
      flat_ca = traverse_util.flatten_dict(dict(abstract))
      layers = sorted({p[:-1] for p in flat_ca})
      wanted = {}
      for path in layers:
        for ours, theirs in (("to_k_ca", "to_k"), ("to_v_ca", "to_v")):
          wanted[path + (theirs,)] = path + (ours,)
      sd = sd_turbo.read_state_dict(spec.weights)
      unet = spec.convert(sd)
      flat = traverse_util.flatten_dict(unet)
      return traverse_util.unflatten_dict({ours: np.asarray(flat[theirs + ("kernel",)], np.float32)
                                           for theirs, ours in wanted.items()})

    return base.WeightSource(target=("params", "generator", "ca_adapter"), files=(os.fspath(spec.weights),),
                             convert=convert, converter="scuf-ca-kv-from-unet-v1")

  def _checkpoint_source(self, path: str) -> base.WeightSource:
    """The authors' checkpoint (`model_*.pkl` of their train.py, or the released `test_model.pkl`) -> the
    generator params (un-merged LoRA; a file without `sd_vae_ref` leaves the reflectance decoder at its init)."""
    def convert(abstract):
      from lowlight_jax.convert import scuf_export  # pylint: disable=g-import-not-at-top
      tree = scuf_export.trainable_from_checkpoint(
          path, vae_params=self.vae_spec.target, unet_config=self.unet_spec.config,
          unet_params=self.unet_spec.target, lora_alpha=float(self.config.model.lora_alpha),
          allow_missing_ref=True)
      if self.ref_skip_frozen and "skip_ref" in tree:  # the released defect: these stay at their 1e-5 init
        tree["skip_ref"] = {k: {n: v for n, v in e.items() if n != "kernel"} for k, e in tree["skip_ref"].items()}
      return tree

    return base.WeightSource(target=("params", "generator"), files=(path,), convert=convert,
                             converter="scuf-trainable-v1")

  def export(self, path: str, params: PyTree, model_state: PyTree) -> None:
    """Writes the generator in the authors' checkpoint layout (`torch.load`-able; their inference script and
    `launch.enhance --method scuf` both read it). `params` host numpy."""
    from lowlight_jax.convert import scuf_export  # pylint: disable=g-import-not-at-top
    skip_ref = model_state.get("skip_ref_kernels") if self.ref_skip_frozen else None
    scuf_export.export_checkpoint(path, params["generator"], sd_turbo_folder=self.folder, rank=self.rank,
                                  lora_alpha=float(self.config.model.lora_alpha), skip_ref_kernels=skip_ref)
