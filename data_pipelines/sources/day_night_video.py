"""`data.source = 'day_night_video'`: unpaired night and day frames of one folder of videos, zipped per batch.

DMGNIE stage 2 (seed `000_f6de8f8b0015d52c`; `lowlight_jax.methods.dmgnie`) needs, at every step, a batch of
night frames X and an independent batch of day frames Y of the same cameras, each with its camera id (the
background Y_BG that guides G is looked up by it). The 'video' source gives one split per loader, so this source
builds two of its streams (`data_pipelines.video.make_train_dataset` with `data.video` and `split` = 'night' /
'day') and zips them (`grain.experimental.ZipIterDataset`: the iterator state is both streams' states, so a
checkpoint restores both exactly):

  {'low': float32 (B, H, W, 3) night frames, 'low_camera': int32 (B,),
   'high': float32 (B, H, W, 3) day frames, 'high_camera': int32 (B,)}

Camera ids are positions in the sorted camera names of the folder's usable videos (`VideoIndex.cameras`), the
same in both streams (the index lists every usable video whatever the split). `data.video.split` is ignored (each
stream sets its own); `clip_frames` must be 0 (frames, not clips). The day stream is shuffled with seed + 1 so the
two streams do not share a segment order. With `worker_count` > 0 each stream gets its own grain workers.
The evaluation set is the 'video' source's (`eval_root`/low_dir as an unpaired image folder).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import ml_collections

from data_pipelines import loaders
from data_pipelines import video
from lowlight_jax import errors

SPLITS = (('low', 'night'), ('high', 'day'))


@dataclasses.dataclass(frozen=True)
class _Merge(grain.transforms.Map):
  """(night batch, day batch) -> {'low', 'low_camera', 'high', 'high_camera'}."""

  image_key: str = 'image'

  def map(self, element: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for (key, _), batch in zip(SPLITS, element):
      out[key] = batch[self.image_key]
      out[f'{key}_camera'] = batch['camera']
    return out


def stream_config(video_cfg: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
  """A copy of `data.video` reading `split` ('night' or 'day')."""
  cfg = ml_collections.ConfigDict(video_cfg.to_dict())
  cfg.split = split
  return cfg


def make_train_loader(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                      shard_index: int | None = None,
                      shard_count: int | None = None) -> grain.IterDataset:
  loaders.check_batch_and_shards(batch_size, shard_index, shard_count)
  vc = data_cfg.video
  if vc.clip_frames:
    raise errors.ConfigError(f"data.video.clip_frames={vc.clip_frames}: the 'day_night_video' source yields single "
                             "frames; set it to 0")
  streams = [video.make_train_dataset(stream_config(vc, split), batch_size=batch_size,
                                      seed=(seed + i) % 2**31, shard_index=shard_index, shard_count=shard_count)
             for i, (_, split) in enumerate(SPLITS)]
  return grain.experimental.ZipIterDataset(streams).map(_Merge(image_key=vc.image_key))


def make_eval_set(data_cfg: ml_collections.ConfigDict, split: str = 'test') -> list[dict[str, Any]]:
  return loaders.folder_eval_set(data_cfg, split, paired=False)
