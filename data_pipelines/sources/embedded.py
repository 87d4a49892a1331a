"""`data.source = 'embedded'`: photos shipped in scikit-image/matplotlib, low images synthesised.

Needs no files. Training elements hold the clean photo as 'high'; after resize/crop/flip
`transforms.Degrade` synthesises 'low' (fresh noise per (seed, epoch, photo), at crop resolution,
from `data.degradation`). The evaluation set is the split's full-size photos with their
deterministic low images (seed 0).
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
  source = image_sources.EmbeddedPairs('train', degradation=None)
  ops = loaders.image_transforms(data_cfg, ('high',),
                                 degradation=loaders.degradation_config(data_cfg))
  return loaders.make_loader(data_cfg, source, ops, batch_size=batch_size, seed=seed,
                             shard_index=shard_index, shard_count=shard_count)


def make_eval_set(data_cfg: ml_collections.ConfigDict, split: str = 'test') -> list[dict[str, Any]]:
  return loaders.embedded_eval_set(split, loaders.degradation_config(data_cfg))
