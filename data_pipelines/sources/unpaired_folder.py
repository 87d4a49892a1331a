"""`data.source = 'unpaired_folder'`: the images of root/low_dir only (zero-reference methods).

low_dir '' means root itself. Batches hold 'low' only; evaluation elements have 'high' None.
"""

from __future__ import annotations

from typing import Any

import grain
import ml_collections

from data_pipelines import image_sources
from data_pipelines import loaders


def make_train_loader(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                      shard_index: int | None = None,
                      shard_count: int | None = None) -> grain.DataLoader:
  source = image_sources.UnpairedFolder(loaders.folder(data_cfg.root, data_cfg.low_dir, 'root'),
                                        key='low', max_pixels=data_cfg.max_pixels)
  return loaders.make_loader(data_cfg, source, loaders.image_transforms(data_cfg, ('low',)),
                             batch_size=batch_size, seed=seed, shard_index=shard_index,
                             shard_count=shard_count)


def make_eval_set(data_cfg: ml_collections.ConfigDict, split: str = 'test') -> list[dict[str, Any]]:
  return loaders.folder_eval_set(data_cfg, split, paired=False)
