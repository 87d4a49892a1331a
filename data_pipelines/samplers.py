"""A grain index sampler whose per-element random generator depends on (seed, epoch, record).

grain's `IndexSampler` hands every element `np.random.Generator(Philox(key=seed + index))`: runs
with seeds s and s + 1 then draw the same random streams shifted by one element, and an element's
crop/noise depends on its position in the shuffle. This wrapper keeps IndexSampler's order (shuffle,
sharding, infinite epochs, checkpointable position) and replaces the generator by one seeded with
`SeedSequence([seed, epoch, record_key])`: a given photo in a given epoch always gets the same crop
and noise, a new epoch gets new ones, and nearby seeds are statistically independent.

Lives apart from `pipeline.py` because grain pickles it into worker processes, which must not import
jax.
"""

from __future__ import annotations

import grain
import numpy as np


def shard_interval(num_records: int, shard_options: grain.sharding.ShardOptions) -> tuple[int, int]:
  """[start, end) of this shard's records, the same split grain's IndexSampler makes.

  Mirrors `grain._src.core.sharding.even_split` (not public API): consecutive pieces; without
  drop_remainder the first `num_records % shard_count` shards get one extra record.
  """
  per_shard, extra = divmod(num_records, shard_options.shard_count)
  i = shard_options.shard_index
  start, end = per_shard * i, per_shard * (i + 1)
  if extra and not shard_options.drop_remainder:
    start += min(i, extra)
    end += min(i + 1, extra)
  return start, end


class EpochSeededSampler:
  """Shuffled, sharded, infinitely repeating sampler with (seed, epoch, record_key) generators.

  Attributes:
    num_records: records in the data source (all shards).
    shard_options: which shard this process reads (also passed to the DataLoader).
    seed: 32-bit non-negative seed for the shuffle and the per-element generators.
  """

  def __init__(self, num_records: int, shard_options: grain.sharding.ShardOptions, seed: int):
    start, end = shard_interval(num_records, shard_options)
    if end <= start:
      raise ValueError(f'shard {shard_options.shard_index} of {shard_options.shard_count} gets no '
                       f'records from a source of {num_records}; use fewer shards or more data')
    self._inner = grain.samplers.IndexSampler(
        num_records=num_records, shard_options=shard_options, shuffle=True, num_epochs=None,
        seed=seed)
    # DataLoader looks for this attribute when no shard_options are passed to it.
    self._shard_options = shard_options
    self._shard_size = end - start
    self._seed = seed

  def __len__(self) -> int:
    return len(self._inner)

  def __repr__(self) -> str:
    # Part of grain's checkpoint validation: must depend only on construction arguments.
    return f'EpochSeededSampler({self._inner!r})'

  def epoch(self, index: int) -> int:
    """Epoch of global sampler `index` (this shard reads indices shard_index + k * shard_count)."""
    return (index // self._shard_options.shard_count) // self._shard_size

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    meta = self._inner[index]
    seq = np.random.SeedSequence([self._seed, self.epoch(index), meta.record_key])
    return grain.RecordMetadata(index=meta.index, record_key=meta.record_key,
                                rng=np.random.Generator(np.random.Philox(seq)))


class GlobalBatchSampler:
  """Makes every process's local batches slices of ONE global, topology-independent batch sequence.

  The global order is `EpochSeededSampler` over all records (one shard). Global batch t holds global positions
  [t*B, (t+1)*B) with B = batch_per_process * shard_count; process p's local batch t holds positions
  t*B + p*b + [0, b). So 1 process x 8 devices and 2 processes x 4 devices train on exactly the same global
  batches (same records, same crops and noise), which is what makes loss trajectories comparable across
  topologies and lets a run move to another topology between checkpoints.

  grain's DataLoader reads sampler index k = i * shard_count + shard_index for the i-th local element, so the
  mapping is done here and the DataLoader keeps its usual (checkpointable) bookkeeping. Local batches must be
  formed in order, i.e. in-process (worker_count 0) or with one worker; more workers interleave elements.
  """

  def __init__(self, num_records: int, shard_options: grain.sharding.ShardOptions, seed: int,
               batch_per_process: int):
    self._global = EpochSeededSampler(num_records, grain.sharding.ShardOptions(0, 1), seed)
    self._shard_options = shard_options
    self._batch = int(batch_per_process)
    self._seed = seed
    self._num_records = num_records

  def __len__(self) -> int:
    return len(self._global)

  def __repr__(self) -> str:
    return (f'GlobalBatchSampler(num_records={self._num_records}, seed={self._seed}, '
            f'batch_per_process={self._batch}, shard={self._shard_options.shard_index}/'
            f'{self._shard_options.shard_count})')

  def global_position(self, index: int) -> int:
    p, count, b = index % self._shard_options.shard_count, self._shard_options.shard_count, self._batch
    i = index // count
    return (i // b) * b * count + p * b + i % b

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    meta = self._global[self.global_position(index)]
    return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)
