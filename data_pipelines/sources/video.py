"""`data.source = 'video'`: frames (or K-frame clips) of a folder of videos, `data.video` section.

Frames stream through a grain IterDataset (sequential decoding of shuffled segments, see
`data_pipelines.video.make_train_dataset`); its iterator is checkpointable like the DataLoader's.
With `data.video.root` unset the synthetic surveillance set is used. The evaluation set reads
`eval_root`/low_dir as an unpaired image folder.
"""

from __future__ import annotations

from typing import Any

import grain
import ml_collections

from data_pipelines import loaders
from data_pipelines import video


def make_train_loader(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                      shard_index: int | None = None,
                      shard_count: int | None = None) -> grain.IterDataset:
  loaders.check_batch_and_shards(batch_size, shard_index, shard_count)
  return video.make_train_dataset(data_cfg.video, batch_size=batch_size, seed=seed,
                                  shard_index=shard_index, shard_count=shard_count)


def make_eval_set(data_cfg: ml_collections.ConfigDict, split: str = 'test') -> list[dict[str, Any]]:
  return loaders.folder_eval_set(data_cfg, split, paired=False)
