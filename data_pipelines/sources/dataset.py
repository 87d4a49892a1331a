"""`data.source = 'dataset'`: a named dataset of `datasets.DATASETS` read from `root` in its layout.

`data.dataset` names it (lol, lol_v2_real, lol_v2_synthetic, lsrw, sice, dicm, ...);
`data.dataset_options` go to its layout function (e.g. pool='under' for SICE). Paired datasets
(`PAIRED_DATASETS`, and SICE unless pool='normal') give 'low' and 'high' batches, the others 'low'
only (SICE pool='normal': 'high' only). Datasets with unpaired or labelled elements (enlightengan,
cityscapes) belong to a method's own source (e.g. 'scl').

The evaluation set reads `eval_root`/low_dir as an unpaired folder, as the image pipeline always
has (not the dataset's own test split).
"""

from __future__ import annotations

from typing import Any

import grain
import ml_collections

from data_pipelines import datasets
from data_pipelines import loaders

# Named layouts of `datasets.py` whose elements are 'low'/'high' pairs of equal size.
PAIRED_DATASETS = ('lol', 'lol_v2_real', 'lol_v2_synthetic', 'lsrw')


def _keys(data_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  if data_cfg.dataset in ('enlightengan', 'cityscapes'):
    raise ValueError(f"data.dataset={data_cfg.dataset!r} has unpaired/labelled elements: use the method's own "
                     "pipeline (e.g. configs/scl_lle.py) rather than the paired/unpaired image loader")
  if data_cfg.dataset == 'sice':
    return ('high',) if data_cfg.dataset_options.get('pool') == 'normal' else ('low', 'high')
  return ('low', 'high') if data_cfg.dataset in PAIRED_DATASETS else ('low',)


def make_train_loader(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                      shard_index: int | None = None,
                      shard_count: int | None = None) -> grain.DataLoader:
  if not data_cfg.dataset:
    raise ValueError("data.dataset must name a dataset for source 'dataset'")
  root = loaders.folder(data_cfg.root, '', 'root')
  source = datasets.make_source(data_cfg.dataset, root, 'train', max_pixels=data_cfg.max_pixels,
                                **data_cfg.dataset_options.to_dict())
  ops = loaders.image_transforms(data_cfg, _keys(data_cfg))
  return loaders.make_loader(data_cfg, source, ops, batch_size=batch_size, seed=seed,
                             shard_index=shard_index, shard_count=shard_count)


def make_eval_set(data_cfg: ml_collections.ConfigDict, split: str = 'test') -> list[dict[str, Any]]:
  return loaders.folder_eval_set(data_cfg, split, paired=False)
