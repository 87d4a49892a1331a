"""Memory of a method's compiled train step per device, without weights and without running it.

`step_memory(config, devices, batch)` builds the method's abstract train state and frozen towers
(`trainer.abstract_setup`: shapes and shardings only; nothing is initialised or loaded), lowers and compiles the
trainer's jitted step for `devices` on a mesh from `config.mesh`, and reads XLA's buffer assignment
(`compiled.memory_analysis()`): arguments (params, optimizer state, frozen towers, batch, per device after
sharding), outputs not aliased to donated arguments, and temporaries (activations, gradients, collectives'
buffers). Any backend works; on CPU with `--xla_force_host_platform_device_count=N` the N-device rows are the
SPMD program of one device of an N-device mesh. It is XLA's static plan, not a measured peak: a GPU/TPU compile of
the same step can schedule (and fuse) differently; `measured_peak` runs the step on a real device when wanted.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from lowlight_jax.methods import base
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import trainer

GB = 1e9


def _abstract_batch(batch: Mapping[str, jax.ShapeDtypeStruct], mesh) -> dict[str, jax.ShapeDtypeStruct]:
  sh = sharding_lib.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh) for k, v in batch.items()}


def lowered_step(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                 batch: Mapping[str, jax.ShapeDtypeStruct]):
  """(setup with abstract state/frozen, lowered step, abstract batch) for `config` on `devices`."""
  mesh = sharding_lib.make_mesh(config.mesh, devices=list(devices))
  method = base.load_method(config)
  _, _, abstract, optimizers, shardings = trainer.abstract_setup(config, method, mesh)
  setup = trainer.Setup(config=config, method=method, mesh=mesh, state=abstract["state"],
                        state_shardings=shardings["state"], frozen=abstract["frozen"],
                        frozen_shardings=shardings["frozen"], optimizers=optimizers, load_report={})
  step = trainer.make_train_step(setup)
  abstract_batch = _abstract_batch(batch, mesh)
  return setup, step.lower(abstract["state"], abstract["frozen"], abstract_batch), abstract_batch


#: XLA CPU's memory-minimising scheduler instead of its default, which favours concurrency: it starts independent
#: work early, e.g. the rematerialised forward of many blocks before their backward passes, keeping their outputs
#: alive together (the SCUF step at batch 8, 512x512: 277 GB of temporaries with the default, 132 GB with this).
#: A GPU compile schedules under a memory limit; this is the closer CPU proxy of its plan. It is read from
#: XLA_FLAGS when the backend starts (set it for the process; a per-compile option does not reach it).
CPU_MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def step_memory(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                batch: Mapping[str, jax.ShapeDtypeStruct], *, plan_only: bool = False) -> dict[str, Any]:
  """{'per_device_gb', 'arguments_gb', 'outputs_gb', 'temp_gb', 'compile_s', 'trained_params', 'frozen_params'}
  of the compiled step (see the module doc).

  plan_only: compile with the backend's code optimisation off (`xla_backend_optimization_level=0`). The HLO
  passes, the SPMD partitioning and the buffer assignment that the figures come from are unchanged (checked on
  the SGZ step: identical arguments / outputs / temporaries); only the machine code is slower, and LLVM's share
  of a CPU compile (most of it for a large step) shrinks. For figures only; never run that executable for time.
  On CPU, run the process with `CPU_MEMORY_SCHEDULER_FLAG` in XLA_FLAGS for a plan closer to a GPU's."""
  t0 = time.perf_counter()
  setup, lowered, _ = lowered_step(config, devices, batch)
  compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 0}) if plan_only else lowered.compile()
  compile_s = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  args = ma.argument_size_in_bytes
  outs = ma.output_size_in_bytes - ma.alias_size_in_bytes
  temp = ma.temp_size_in_bytes
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  return {"per_device_gb": (args + outs + temp + ma.generated_code_size_in_bytes) / GB, "arguments_gb": args / GB,
          "outputs_gb": outs / GB, "temp_gb": temp / GB, "compile_s": compile_s,
          "trained_params": count(setup.state.params), "frozen_params": count(setup.frozen)}


def measured_peak(config: ml_collections.ConfigDict, device: jax.Device, batch: Mapping[str, Any],
                  steps: int = 3, *, load_pretrained: bool = True) -> dict[str, Any]:
  """Builds the method for real on one accelerator (`trainer.build`: weights from its sources, or random with
  `load_pretrained=False`), runs `steps` steps on `batch` (numpy) after one warm-up and reports the device's peak
  bytes in use and the step time."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  mesh = sharding_lib.make_mesh(config.mesh, devices=[device])
  setup = trainer.build(config, mesh=mesh, load_pretrained=load_pretrained)
  step = trainer.make_train_step(setup)
  placed = jax.device_put({k: np.asarray(v) for k, v in batch.items()}, sharding_lib.batch_sharding(mesh))
  sec = trainer.time_steps(step, setup.state, setup.frozen, placed, steps)
  stats = device.memory_stats() or {}
  return {"peak_gb": stats.get("peak_bytes_in_use", 0) / GB, "step_s": sec}
