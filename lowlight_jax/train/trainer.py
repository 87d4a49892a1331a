"""The trainer: one readable loop around one jitted, sharded train step.

Flow (after big_vision's train.py): config -> method (by module path) -> mesh -> `eval_shape` of the method's init
-> shardings -> jitted init -> optimizers per trained group -> resume from the newest checkpoint if any -> loop of
{global batch -> step -> metrics -> periodic eval / checkpoint}.

The step updates each trained parameter group in the order the method declares (one optimizer per group), which
covers single-network methods (SGZ) and alternating generator/discriminator updates alike. Frozen networks are an
argument of the step, never in an optimizer and never donated.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
from typing import Any, Callable

import logging
from clu import metrics as clu_metrics
from clu import parameter_overview
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from lowlight_jax import errors
from lowlight_jax.io import atomic_io
from lowlight_jax.methods import base
from lowlight_jax.models import policy as policy_lib
from lowlight_jax.train import checkpoint as ckpt_lib
from lowlight_jax.train import evaluation
from lowlight_jax.train import optim
from lowlight_jax.train import run_config
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import towers
from lowlight_jax.train.state import TrainState

PyTree = Any
logging = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """Raised when a step produced a NaN/Inf loss or gradient; the update of that step was not applied."""


@dataclasses.dataclass
class Setup:
  """Everything built from a config that the loop, resume and inference need."""
  config: ml_collections.ConfigDict
  method: base.BaseMethod
  mesh: jax.sharding.Mesh
  state: TrainState
  state_shardings: PyTree
  frozen: PyTree
  frozen_shardings: PyTree
  optimizers: dict[str, optax.GradientTransformation]
  load_report: dict[str, Any] = dataclasses.field(default_factory=dict)


def _example_batch(config: ml_collections.ConfigDict, method: base.BaseMethod) -> dict[str, jax.Array]:
  if hasattr(method, "example_batch"):
    return method.example_batch()
  size = config.data.crop or config.data.resize or 64
  return {"low": jnp.zeros((1, size, size, 3), jnp.float32)}


def _with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _variables(tree: dict[str, Any]) -> dict[str, PyTree]:
  """{'state': TrainState, 'frozen': ...} -> the variables towers.materialize builds: params, model state, frozen."""
  return {"params": tree["state"].params, "model_state": tree["state"].model_state, "frozen": tree["frozen"]}


def abstract_setup(config: ml_collections.ConfigDict, method: base.BaseMethod, mesh: jax.sharding.Mesh, *,
                   towers: tuple[str, ...] | None = None, with_optimizer: bool = True):
  """Shapes (no compute) of the train state and frozen towers, with their shardings.

  Returns (init_fn, abstract {'state': TrainState, 'frozen': ...} with shardings, optimizers, shardings).
  `towers` keeps only those frozen towers (None: all); `with_optimizer=False` leaves the optimizer state empty.
  """
  policy = policy_lib.Policy.from_config(config)
  total_steps = int(config.total_steps)
  optimizers = ({g: optim.make_optimizer(config.optim[g], total_steps) for g in method.groups}
                if with_optimizer else {})
  example = _example_batch(config, method)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))

  def init_all(rng):
    variables = method.init(rng, example)
    params = variables["params"]
    frozen = variables.get("frozen", {})
    if towers is not None:
      frozen = {k: v for k, v in frozen.items() if k in towers}
    opt_state = {g: optimizers[g].init(params[g]) for g in optimizers}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                       model_state=variables.get("model_state", {}), rng=state_rng)
    return {"state": state, "frozen": policy.cast_frozen(frozen)}

  abstract = jax.eval_shape(init_all, init_rng)
  shardings = {"state": sharding_lib.from_config(abstract["state"], mesh, config.sharding, "train state"),
               "frozen": sharding_lib.from_config(abstract["frozen"], mesh, config.sharding, "frozen")}
  return init_all, init_rng, _with_shardings(abstract, shardings), optimizers, shardings


def build(config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None,
          load_pretrained: bool = True) -> Setup:
  """Builds method, mesh, the sharded initial train state and the frozen towers from a config.

  Nothing is random-initialised that weights replace, and nothing large passes through one host: see
  `towers.materialize`. The optimizer state is initialised (jitted, on its shardings) from the final params.
  """
  method = base.load_method(config)
  mesh = sharding_lib.make_mesh(config.mesh) if mesh is None else mesh
  init_all, init_rng, abstract, optimizers, shardings = abstract_setup(config, method, mesh)
  variables_abstract = _variables(abstract)
  sources = method.weight_sources() if load_pretrained else ()
  cache = towers.default_cache_dir(config.weights_cache)
  variables, report = towers.materialize(
      variables_abstract,
      lambda r: _variables(init_all(r)),
      init_rng, sources, cache)
  if report["loaded"]:
    logging.info("weights: %d arrays loaded from %d file(s) (%s), %d initialised", report["loaded"],
                 len(sources), ", ".join("cache" if c else "converted" for c in report["from_cache"]),
                 report["initialised"])
  opt_state = jax.jit(lambda p: {g: optimizers[g].init(p[g]) for g in method.groups},
                      out_shardings=shardings["state"].opt_state)(variables["params"])
  rng = jax.device_put(jax.random.split(jax.random.PRNGKey(config.seed))[1], shardings["state"].rng)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings["state"].step),
                     params=variables["params"], opt_state=opt_state, model_state=variables["model_state"], rng=rng)
  return Setup(config=config, method=method, mesh=mesh, state=state, state_shardings=shardings["state"],
               frozen=variables["frozen"], frozen_shardings=shardings["frozen"], optimizers=optimizers,
               load_report=report)


def make_train_step(setup: Setup) -> Callable[[TrainState, PyTree, PyTree], tuple[TrainState, dict]]:
  """Builds the jitted step: (state, frozen, batch) -> (state, metrics, finite). State is donated.

  The step calls the method's `train_step` (the generic group loop, or the method's own, e.g. an adversarial
  step sharing the generator forward between the generator and discriminator updates).
  """
  method = setup.method
  ctx = base.StepContext(optimizers=setup.optimizers)

  def step_fn(state: TrainState, frozen: PyTree, batch: PyTree):
    rng = jax.random.fold_in(state.rng, state.step)
    # The mesh is known while tracing, so a method can pin its activations (`sharding.constrain_batch`).
    with jax.sharding.use_abstract_mesh(setup.mesh.abstract_mesh):
      result = method.train_step(dataclasses.replace(ctx, step=state.step), state.params, state.opt_state,
                                 state.model_state, frozen, batch, rng)
    new_state = state.replace(step=state.step + 1, params=result.params, opt_state=result.opt_state,
                              model_state=result.model_state)
    # A non-finite step is not applied: the state stays the last good one and the host stops the run.
    finite = result.finite
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    new_state = new_state.replace(step=state.step + 1)
    collected = {k: clu_metrics.Average.from_model_output(jnp.asarray(v, jnp.float32))
                 for k, v in result.metrics.items()}
    return new_state, collected, finite

  batch_sh = sharding_lib.batch_sharding(setup.mesh)
  repl = sharding_lib.replicated(setup.mesh)
  return jax.jit(step_fn, in_shardings=(setup.state_shardings, setup.frozen_shardings, batch_sh),
                 out_shardings=(setup.state_shardings, repl, repl), donate_argnums=(0,))


def time_steps(step_fn: Callable, state: TrainState, frozen: PyTree, batch: PyTree, steps: int) -> float:
  """Seconds per step of `step_fn` (a `make_train_step` step or its compiled form) over `steps` steps, after one
  warm-up step (the compile, on a first call). The state is threaded through: steps donate it."""
  state, _, _ = step_fn(state, frozen, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _, _ = step_fn(state, frozen, batch)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps


def make_enhance_fn(setup: Setup) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """Jitted inference closure over the current params (call `.lower` per new image shape implicitly)."""
  method = setup.method
  fn = jax.jit(lambda params, model_state, frozen, x: method.enhance(params, model_state, frozen, x))
  return lambda state, frozen: (lambda x: fn(state.params, state.model_state, frozen, x))


class _PreemptionWatch:
  """SIGTERM -> save at the next step boundary and return normally (exit code 0).

  On one process a signal handler sets a flag. With several processes, Orbax's `reached_preemption` (backed by
  JAX's distributed preemption sync service) makes every host stop at the same step.
  """

  def __init__(self):
    self.flag = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.flag.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, checkpointer: ckpt_lib.Checkpointer, step: int) -> bool:
    if jax.process_count() > 1:
      return bool(checkpointer.manager.reached_preemption(step)) or self.flag.is_set()
    return self.flag.is_set()


class _Profiler:
  """Captures a JAX profiler trace of steps [start, start + num) into <workdir>/profile (config.profile)."""

  def __init__(self, cfg, workdir: str):
    self.start = int(cfg.start_step)
    self.num = int(cfg.num_steps)
    self.dir = os.path.join(workdir, "profile")
    self.active = False

  def before_step(self, step: int) -> None:
    if self.num and step == self.start and not self.active:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after_step(self, step: int, state) -> None:
    if self.active and step >= self.start + self.num:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profiler trace of steps %d-%d written to %s", self.start, step - 1, self.dir)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


#: Steps compiled in this process: a run resumed in the same process (a notebook, a test) gets its step back
#: instead of compiling it again (jax.jit's own cache is per function object, and each run builds its own). Keyed by
#: the lowered program (`_program_key`) and, when the caller names the run's configuration (`config_identity`), also
#: by that configuration and the arguments' shapes (`_config_key`): that hit skips the method's trace and lowering
#: too (SCUF's released step traces for about a minute). The newest two programs are kept.
_COMPILED_STEPS: collections.OrderedDict[str, Any] = collections.OrderedDict()


def config_identity(config: ml_collections.ConfigDict) -> str:
  """What a train step is built from: the configuration and the size and modification time of every file it names
  (a prompt or caption file the method reads while tracing). Directories (data roots) are named only: their
  contents reach the step as arguments, never as traced constants."""
  stamps = []
  for _, value in _flatten(config.to_dict()).items():
    if isinstance(value, str) and value and os.path.isfile(value):
      st = os.stat(value)
      stamps.append((value, st.st_size, st.st_mtime_ns))
  return json.dumps([config.to_json_best_effort(sort_keys=True), sorted(stamps)])


def _config_key(identity: str, args, options) -> str:
  """A configuration's step for these arguments: their tree, shapes, dtypes and shardings (device ids included)."""
  leaves, treedef = jax.tree_util.tree_flatten(args)
  avals = [(tuple(x.shape), str(x.dtype), repr(getattr(x, "sharding", None))) for x in leaves]
  return "config:" + hashlib.sha256(f"{identity}\n{treedef}\n{avals}\n{options}".encode()).hexdigest()


def _program_key(lowered, args, options) -> str:
  """The lowered program (its text carries shapes, shardings and donation), the devices it runs on and the
  compiler options."""
  devices = sorted({d.id for leaf in jax.tree.leaves(args) if hasattr(leaf, "sharding")
                    for d in leaf.sharding.device_set})
  return hashlib.sha256(f"{lowered.as_text()}\n{devices}\n{options}".encode()).hexdigest()


def _remember(key: str, compiled: Any) -> None:
  _COMPILED_STEPS[key] = compiled
  while len({id(c) for c in _COMPILED_STEPS.values()}) > 2:
    _COMPILED_STEPS.popitem(last=False)


def compile_step(train_step, state, frozen, batch, opt_level: int = -1, *,
                 config_id: str | None = None) -> tuple[Callable, dict[str, int]]:
  """Compiles the jitted step once for these arguments (or takes the same program from `_COMPILED_STEPS`) and logs
  its per-device bytes (arguments = params + optimizer state + batch). `opt_level` >= 0 is XLA's
  `xla_backend_optimization_level` (config field `xla_backend_optimization_level`; -1: the default). `config_id`
  (`config_identity` of the configuration `train_step` was built from) lets a step built from the same
  configuration earlier in this process be reused without tracing it again. Returns (the step to call: the
  compiled executable, or `train_step` itself when it cannot be compiled ahead of time, memory info or {})."""
  options = {"xla_backend_optimization_level": int(opt_level)} if opt_level >= 0 else None
  args = (state, frozen, batch)
  try:
    fast = _config_key(config_id, args, options) if config_id is not None else None
    compiled = _COMPILED_STEPS.pop(fast, None)  # (None is never a key)
    if compiled is not None:
      logging.info("train step: the program built from this configuration earlier in this process")
    else:
      lowered = train_step.lower(*args)
      key = _program_key(lowered, args, options)
      compiled = _COMPILED_STEPS.pop(key, None)
      if compiled is None:
        compiled = lowered.compile(compiler_options=options)
      else:
        logging.info("train step: the program compiled earlier in this process")
      _remember(key, compiled)
    if fast:
      _remember(fast, compiled)
  except Exception as e:  # pylint: disable=broad-except
    logging.info("ahead-of-time compilation unavailable: %s", e)
    return train_step, {}

  def step(state, frozen, batch):
    try:
      return compiled(state, frozen, batch)
    except TypeError:  # Arguments of another shape or sharding than the first batch: the jitted step retraces.
      return train_step(state, frozen, batch)

  try:
    mem = compiled.memory_analysis()
  except Exception as e:  # pylint: disable=broad-except  # Not every backend reports memory; never fail a run.
    logging.info("memory analysis unavailable: %s", e)
    mem = None
  if mem is None:
    return step, {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes", "alias_size_in_bytes")
  info = {f: int(getattr(mem, f, 0) or 0) for f in fields}
  logging.info("compiled train step, per device: %s", ", ".join(f"{k}={v / 2**20:.1f} MiB" for k, v in info.items()))
  return step, info


def _merge(acc: dict | None, new: dict) -> dict:
  if acc is None:
    return new
  return {k: acc[k].merge(v) for k, v in new.items()}


def _write_eval(writer, step: int, means: dict, records: list, method: base.BaseMethod, max_images: int) -> None:
  writer.write_scalars(step, {f"eval/{k}": v for k, v in means.items()})
  images = {}
  for rec in records[:max_images]:
    images[f"eval_enhanced/{rec['name']}"] = rec["enhanced"][None]
    for key, img in method.eval_images(rec["outputs"]).items():
      images[f"eval_{key}/{rec['name']}"] = evaluation.quantize(np.asarray(img))
  if images:
    writer.write_images(step, images)


def check_resume_compatible(checkpointer: ckpt_lib.Checkpointer, step: int, abstract_state: PyTree,
                            workdir: str) -> None:
  """Refuses (CheckpointError, nothing written) a config whose train-state shapes differ from the saved run's."""
  saved = checkpointer.state_metadata(step)
  keys, leaves, _ = towers.flatten_tree(abstract_state)
  want = {"/".join(k): (tuple(v.shape), np.dtype(v.dtype)) for k, v in zip(keys, leaves)}
  skeys, sleaves, _ = towers.flatten_tree(saved)
  have = {"/".join(k): (tuple(v.shape), np.dtype(v.dtype)) for k, v in zip(skeys, sleaves)}
  order = lambda k: (not k.startswith("params/"), k)  # The trained params name the difference best.
  problems = [f"{k}: saved {have[k][0]} {have[k][1]}, config {want[k][0]} {want[k][1]}"
              for k in sorted(set(want) & set(have), key=order) if have[k] != want[k]]
  problems += [f"{k}: not in the saved run" for k in sorted(set(want) - set(have))]
  problems += [f"{k}: saved but not in the config" for k in sorted(set(have) - set(want))]
  if problems:
    shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
    raise errors.CheckpointError(
        f"{workdir}: the config does not fit the saved run (step {step}): {shown}. The run was left untouched; "
        f"resume with its own config ({os.path.join(workdir, run_config.CONFIG_FILE)}) or use a new --workdir")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) training in `workdir`. Returns the final evaluation metrics (or {} if no eval set).

  A resumed run is checked first: a config whose train-state shapes differ from the saved run's is refused
  before anything in `workdir` is written (`config.json` included). Process 0 then writes `config.json`.
  """
  from clu import metric_writers  # Local: it imports TensorFlow (seconds), which inference never needs.
  from data_pipelines import pipeline as data_pipeline  # Kept local: the library core does not need grain.

  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.OutputError(f"--workdir {workdir} is a file, not a run directory")
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding_lib.make_mesh(config.mesh)
  divisor = sharding_lib.batch_divisor(mesh)
  if config.batch_size % divisor or config.batch_size % jax.process_count():
    raise errors.ConfigError(f"batch_size={config.batch_size} must divide by the {divisor} batch shards of the "
                             f"mesh and by {jax.process_count()} processes")
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  try:
    step0 = checkpointer.latest_step()
    if step0 is not None:
      method = base.load_method(config)
      _, _, abstract, _, _ = abstract_setup(config, method, mesh)
      check_resume_compatible(checkpointer, step0, abstract["state"], workdir)
  except BaseException:
    checkpointer.close()
    raise
  if jax.process_index() == 0:
    run_config.save_run_config(config, workdir)

  setup = build(config, mesh=mesh)
  method = setup.method
  logging.info("mesh: %s", dict(mesh.shape))
  logging.info("trained parameters:\n%s", parameter_overview.get_parameter_overview(setup.state.params))

  loader = data_pipeline.make_train_loader(config.data, batch_size=config.batch_size // jax.process_count(),
                                           seed=config.seed)
  data_iter = iter(loader)

  state = setup.state
  if step0 is not None:
    logging.info("resuming from checkpoint step %d", step0)
    state, _ = checkpointer.restore(step0, ckpt_lib.abstract_like(state), data_iter)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if int(state.step) == 0:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})
  train_step = make_train_step(setup)
  enhance_for = make_enhance_fn(setup)
  eval_set = data_pipeline.make_eval_set(config.data, split="test") if config.eval.every else []
  eval_set = eval_set[: config.eval.num_images or len(eval_set)]

  total = int(config.total_steps)
  step = int(state.step)
  acc, pending, t0, steps_since = None, None, time.time(), 0
  final_eval: dict[str, Any] = {}
  profiler = _Profiler(config.profile, workdir)
  bar = tqdm.tqdm(total=total, initial=step, unit="step", desc="train", dynamic_ncols=True,
                  disable=not config.progress_bar or jax.process_index() > 0 or None)
  preemption = _PreemptionWatch()
  run_step = None  # The step compiled once (ahead of time, which also reports its memory) on the first batch.
  last_saved = step
  last_scalars: dict[str, float] = {}
  try:
    preemption.__enter__()
    while step < total:
      batch = sharding_lib.global_batch(next(data_iter), mesh)
      if run_step is None:
        run_step, _ = compile_step(train_step, state, setup.frozen, batch,
                                   config.get("xla_backend_optimization_level", -1),
                                   config_id=config_identity(config))
      profiler.before_step(step)
      state, metrics, finite = run_step(state, setup.frozen, batch)
      step += 1
      bar.update(1)
      profiler.after_step(step, state)
      steps_since += 1
      # Check the previous step's flag while this one runs (no extra host sync on the critical path).
      if pending is not None:
        _check_finite(*pending)
      pending = (finite, step, metrics)
      acc = _merge(acc, metrics)
      if step % config.log_every == 0 or step == total:
        _check_finite(*pending)
        pending = None
        scalars = {f"train/{k}": float(v.compute()) for k, v in acc.items()}
        dt = time.time() - t0
        scalars["train/steps_per_sec"] = steps_since / max(dt, 1e-9)
        writer.write_scalars(step, scalars)
        if jax.process_index() == 0:
          with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        bar.set_postfix_str(" ".join(f"{k[6:]}={v:.3g}" for k, v in scalars.items() if k.endswith("loss")),
                            refresh=False)
        logging.info("step %d/%d  %s", step, total,
                     "  ".join(f"{k[6:]}={v:.4g}" for k, v in scalars.items()))
        last_scalars = scalars
        acc, t0, steps_since = None, time.time(), 0
      if config.eval.every and (step % config.eval.every == 0 or step == total) and eval_set:
        means, records = evaluation.evaluate(enhance_for(state, setup.frozen), eval_set)
        _write_eval(writer, step, means, records, method, config.eval.max_images)
        logging.info("eval at step %d  %s", step, "  ".join(f"{k}={v:.4f}" for k, v in means.items()))
        final_eval = means
      if step % config.checkpoint_every == 0 or step == total:
        if pending is not None:
          _check_finite(*pending)
          pending = None
        checkpointer.save(step, state, data_iter)
        last_saved = step
        _export(method, workdir, step, state)
      if preemption.should_stop(checkpointer, step):
        if pending is not None:
          _check_finite(*pending)
          pending = None
        if last_saved != step:
          checkpointer.save(step, state, data_iter, force=True)
        logging.warning("preempted: saved step %d, stopping", step)
        break
    if pending is not None:
      _check_finite(*pending)
  finally:
    bar.close()
    preemption.__exit__()
    profiler.close()
    checkpointer.close()
    writer.flush()
    writer.close()
  if jax.process_index() == 0:
    atomic_io.write_json_atomic(
        os.path.join(workdir, "final_metrics.json"),
        {"step": step, **last_scalars, **{f"eval/{k}": v for k, v in final_eval.items()}})
  return final_eval


def _export(method: base.BaseMethod, workdir: str, step: int, state: TrainState) -> None:
  """A method with `export(path, params, model_state)` also writes its weights in the authors' layout at every
  checkpoint, to <workdir>/export/model_<step>.pkl (process 0; the trained params are gathered to the host, so
  only methods whose TRAINED params are small define it)."""
  if not hasattr(method, "export"):
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  host = multihost_utils.process_allgather({"params": state.params, "model_state": state.model_state}, tiled=True)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "export", f"model_{step}.pkl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    method.export(path, host["params"], host["model_state"])
    logging.info("exported step %d in the authors' layout: %s", step, path)


def _check_finite(finite: jax.Array, step: int, metrics: dict) -> None:
  if not bool(finite):
    values = {k: float(v.compute()) for k, v in metrics.items()}
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {step}: {values}. The update was not applied; the newest "
        f"checkpoint is intact. Lower the learning rate or check the data.")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    elif isinstance(v, (int, float, str, bool)):
      out[key] = v
    else:
      out[key] = str(v)
  return out


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str, step: int | None = None, *,
                          towers_needed: tuple[str, ...] | None = None, devices=None) -> Setup:
  """A run's trained params and model state (newest or given checkpoint) and the frozen towers inference uses.

  Builds only what inference needs: no optimizer state, no random init of trained params (they are restored
  straight onto their shardings from the checkpoint), and of the frozen towers only `towers_needed` (default: the
  method's `inference_towers`), loaded from their weight files or initialised from the config's seed. On `devices`
  (default: all), with the run's mesh when it fits them, else `sharding.inference_mesh` (e.g. a run of an 8-device
  mesh on a 1-device machine).
  """
  method = base.load_method(config)
  mesh = sharding_lib.inference_mesh(config.mesh, devices, config.sharding.get("fsdp_axis", "fsdp"))
  needed = tuple(method.inference_towers if towers_needed is None else towers_needed)
  init_all, init_rng, abstract, _, shardings = abstract_setup(config, method, mesh, towers=needed,
                                                              with_optimizer=False)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  try:
    state = checkpointer.restore_partial(step, abstract["state"].replace(opt_state={}))
  finally:
    checkpointer.close()
  sources = [s for s in method.weight_sources() if s.target[:1] == ("frozen",) and s.target[1] in needed]
  frozen, report = towers.materialize({"frozen": abstract["frozen"]}, lambda r: {"frozen": init_all(r)["frozen"]},
                                      init_rng, sources, towers.default_cache_dir(config.weights_cache))
  return Setup(config=config, method=method, mesh=mesh, state=state,
               state_shardings=shardings["state"].replace(opt_state={}), frozen=frozen["frozen"],
               frozen_shardings=shardings["frozen"], optimizers={}, load_report=report)


def released_setup(config: ml_collections.ConfigDict) -> Setup:
  """Inference from weight files alone (no run directory): trained params from the method's `init_from` source,
  frozen towers the method's `inference_towers` names from theirs, all placed on their shardings.

  Raises:
    errors.WeightsError: some trained parameter is not provided by a file (e.g. no `init_from`), naming it.
  """
  method = base.load_method(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  needed = tuple(method.inference_towers)
  init_all, init_rng, abstract, _, shardings = abstract_setup(config, method, mesh, towers=needed,
                                                              with_optimizer=False)
  variables_abstract = _variables(abstract)
  sources = [s for s in method.weight_sources() if s.target[0] != "frozen" or s.target[1] in needed]
  provided = set()
  for source in sources:
    if source.target[0] == "params":
      provided.add(source.target[1])
  unprovided = [g for g in abstract["state"].params if g not in provided]
  if unprovided:
    raise errors.WeightsError(f"{config.method}: no weights file for the trained params {unprovided} "
                              "(give the released enhancer's weights)")
  variables, report = towers.materialize(
      variables_abstract,
      lambda r: _variables(init_all(r)),
      init_rng, sources, towers.default_cache_dir(config.weights_cache))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], opt_state={},
                     model_state=variables["model_state"], rng=jax.random.PRNGKey(config.seed))
  return Setup(config=config, method=method, mesh=mesh, state=state,
               state_shardings=shardings["state"].replace(opt_state={}), frozen=variables["frozen"],
               frozen_shardings=shardings["frozen"], optimizers={}, load_report=report)


def restore_train_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> TrainState:
  """The full train state (params, optimizer state, rng) of a run's checkpoint, restored onto its shardings from
  abstract shapes (nothing initialised): to compare or inspect runs."""
  method = base.load_method(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  _, _, abstract, _, _ = abstract_setup(config, method, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  try:
    return checkpointer.restore_state_only(step, abstract["state"])
  finally:
    checkpointer.close()
