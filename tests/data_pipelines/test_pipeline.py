"""Tests for data_pipelines.pipeline: config, batches, sharding, checkpoint/restore, eval set."""

import itertools

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_pipelines import embedded
from data_pipelines import pipeline
from data_pipelines import samplers


def _cfg(**overrides):
  cfg = pipeline.default_data_config()
  cfg.crop = 32
  cfg.read_threads = 2
  cfg.read_buffer_size = 4
  cfg.update(overrides)
  cfg.lock()
  return cfg


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_default_config_fields_and_locking():
  cfg = pipeline.default_data_config()
  assert cfg.source == 'embedded' and cfg.root is None and cfg.eval_root is None
  assert (cfg.resize, cfg.crop, cfg.hflip, cfg.vflip, cfg.worker_count) == (0, 256, True, False, 0)
  assert pipeline.degradation_config(cfg) == pipeline.degrade_lib.DegradationConfig()
  cfg.root = '/data/lol'  # placeholder(str) accepts a string...
  with pytest.raises(TypeError):
    cfg.root = 3  # ...and only a string.
  cfg.lock()
  with pytest.raises(AttributeError):
    cfg.crop_size = 128
  with pytest.raises(AttributeError):
    cfg.degradation.exposure = (0.1, 0.2)


def test_bad_config_values_raise():
  with pytest.raises(ValueError, match='source'):
    pipeline.make_train_loader(_cfg(source='lol'), batch_size=2, seed=0, shard_index=0,
                               shard_count=1)
  with pytest.raises(ValueError, match='crop or data.resize'):
    pipeline.make_train_loader(_cfg(crop=0), batch_size=2, seed=0, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match='root'):
    pipeline.make_train_loader(_cfg(source='paired_folder'), batch_size=2, seed=0)
  with pytest.raises(ValueError, match='both'):
    pipeline.make_train_loader(_cfg(), batch_size=2, seed=0, shard_index=0)


def test_embedded_loader_batches():
  loader = pipeline.make_train_loader(_cfg(), batch_size=4, seed=0)  # Default: jax process 0 of 1.
  batches = _take(iter(loader), 3)  # 12 elements: crosses the 6-photo epoch boundary.
  for b in batches:
    assert set(b) == {'low', 'high'}
    assert b['low'].shape == b['high'].shape == (4, 32, 32, 3)
    assert b['low'].dtype == np.float32
    assert b['low'].mean() < 0.7 * b['high'].mean()


def test_embedded_loader_resize_then_crop_vs_crop_only():
  batch = next(iter(pipeline.make_train_loader(_cfg(resize=48, crop=40), batch_size=2, seed=1)))
  assert batch['high'].shape == (2, 40, 40, 3)
  batch = next(iter(pipeline.make_train_loader(_cfg(resize=24, crop=0), batch_size=2, seed=1)))
  assert batch['high'].shape == (2, 24, 24, 3)


def test_sampler_generators_depend_on_seed_epoch_and_record():
  sampler = samplers.EpochSeededSampler(6, grain.sharding.NoSharding(), seed=5)
  keys = [sampler[i].record_key for i in range(12)]
  assert sorted(keys[:6]) == sorted(keys[6:]) == list(range(6))  # Shuffled epochs.
  first = {sampler[i].record_key: sampler[i].rng.random() for i in range(6)}
  second = {sampler[i].record_key: sampler[i].rng.random() for i in range(6, 12)}
  again = {sampler[i].record_key: sampler[i].rng.random() for i in range(6)}
  assert first == again  # Reproducible.
  assert all(first[k] != second[k] for k in first)  # Fresh randomness every epoch.
  other_seed = samplers.EpochSeededSampler(6, grain.sharding.NoSharding(), seed=6)
  assert other_seed[1].rng.random() not in first.values()


def test_shards_split_one_global_batch_sequence(paired_folder):
  # Each pair's pixels encode its index: low = (i + 1) * 10 / 255.
  cfg = _cfg(source='paired_folder', root=str(paired_folder), crop=4)
  ids = lambda b: [int(round(v * 255 / 10)) - 1 for v in b['low'].mean(axis=(1, 2, 3))]
  # One process with the global batch of 6 ...
  whole = _take(iter(pipeline.make_train_loader(cfg, batch_size=6, seed=0, shard_index=0,
                                                shard_count=1)), 4)
  # ... and two processes with 3 each see, step by step, the two halves of the same global batches.
  shards = []
  for shard in range(2):
    loader = pipeline.make_train_loader(cfg, batch_size=3, seed=0, shard_index=shard,
                                        shard_count=2)
    batches = _take(iter(loader), 4)
    for b in batches:
      np.testing.assert_allclose(b['high'], 3 * b['low'], atol=1e-6)  # Pairs stay together.
    shards.append(batches)
  for step in range(4):
    a, b = ids(shards[0][step]), ids(shards[1][step])
    assert set(a).isdisjoint(b)
    assert a + b == ids(whole[step])  # Same records, same order, same crops.
    np.testing.assert_array_equal(np.concatenate([shards[0][step]['low'], shards[1][step]['low']]),
                                  whole[step]['low'])
    assert sorted(a + b) == list(range(6))  # One epoch of 6 records per global batch here.


def test_state_restore_reproduces_next_batches():
  cfg = _cfg()
  loader = pipeline.make_train_loader(cfg, batch_size=3, seed=7, shard_index=0, shard_count=1)
  it = iter(loader)
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = iter(pipeline.make_train_loader(cfg, batch_size=3, seed=7, shard_index=0,
                                          shard_count=1))
  fresh.set_state(state)
  _assert_same_batches(_take(fresh, 3), expected)
  other = iter(pipeline.make_train_loader(cfg, batch_size=3, seed=8, shard_index=0,
                                          shard_count=1))
  other_batches = _take(other, 5)[2:]
  assert not np.array_equal(other_batches[0]['low'], expected[0]['low'])


def test_orbax_checkpoint_roundtrip_of_the_iterator(tmp_path, paired_folder):
  cfg = _cfg(source='paired_folder', root=str(paired_folder), crop=4, vflip=True)
  make = lambda: iter(pipeline.make_train_loader(cfg, batch_size=2, seed=3, shard_index=0,
                                                 shard_count=1))
  it = make()
  _take(it, 5)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 4)
    restored = make()
    mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same_batches(_take(restored, 4), expected)


def test_worker_processes_restore_and_make_the_same_elements(tmp_path):
  # Small textured images keep worker start-up (not decoding) the only cost.
  rng = np.random.default_rng(0)
  (tmp_path / 'low').mkdir()
  (tmp_path / 'high').mkdir()
  for i in range(6):
    for side in ('low', 'high'):
      arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
      pipeline.imageio.write_png_atomic(tmp_path / side / f'{i}.png', arr)
  common = dict(source='paired_folder', root=str(tmp_path), crop=8, vflip=True)
  cfg0 = _cfg(**common)
  cfg2 = _cfg(**common, worker_count=2, worker_buffer_size=1)
  kwargs = dict(batch_size=2, seed=11, shard_index=0, shard_count=1)
  it = iter(pipeline.make_train_loader(cfg2, **kwargs))
  first = _take(it, 2)
  state = it.get_state()
  expected = _take(it, 2)
  restored = iter(pipeline.make_train_loader(cfg2, **kwargs))
  restored.set_state(state)
  _assert_same_batches(_take(restored, 2), expected)
  # grain batches inside each worker, so batch composition depends on worker_count; the ELEMENTS do
  # not, because every crop/flip/noise draw comes from the sampler's (seed, epoch, record)
  # generator.
  in_process = _take(iter(pipeline.make_train_loader(cfg0, **kwargs)), 4)
  as_set = lambda bs: sorted(x.tobytes() for b in bs for x in np.asarray(b['low']))
  assert as_set(first + expected) == as_set(in_process)


def test_unpaired_folder_loader_yields_low_only(paired_folder):
  cfg = _cfg(source='unpaired_folder', root=str(paired_folder), crop=8)
  batch = next(iter(pipeline.make_train_loader(cfg, batch_size=2, seed=0, shard_index=0,
                                               shard_count=1)))
  assert set(batch) == {'low'} and batch['low'].shape == (2, 8, 8, 3)


def test_embedded_eval_set_is_full_size_and_deterministic():
  eval_set = pipeline.make_eval_set(_cfg())
  assert [e['name'] for e in eval_set] == list(embedded.EMBEDDED_TEST)
  shapes = [e['high'].shape for e in eval_set]
  assert shapes == [(300, 451, 3), (400, 600, 3), (600, 512, 3)]
  again = pipeline.make_eval_set(_cfg(crop=64, resize=128))  # Training geometry does not apply.
  for a, b in zip(eval_set, again):
    np.testing.assert_array_equal(a['low'], b['low'])
    assert a['low'].shape == a['high'].shape
  np.testing.assert_array_equal(eval_set[0]['low'], embedded.degraded_photo('chelsea'))


def test_folder_eval_set_uses_eval_root(paired_folder, tmp_path, write_image):
  for i, stem in enumerate(['b', 'a']):
    write_image(tmp_path / 'eval' / 'low' / f'{stem}.png', 0.1 * (i + 1), size=(5, 7))
    write_image(tmp_path / 'eval' / 'high' / f'{stem}.png', 0.3 * (i + 1), size=(5, 7))
  cfg = _cfg(source='paired_folder', root=str(paired_folder), eval_root=str(tmp_path / 'eval'))
  eval_set = pipeline.make_eval_set(cfg)
  assert [e['name'] for e in eval_set] == ['a', 'b']
  assert eval_set[0]['high'].shape == (5, 7, 3)
  np.testing.assert_allclose(eval_set[0]['high'], round(0.6 * 255) / 255, atol=1e-6)
  assert len(pipeline.make_eval_set(cfg, split='train')) == 6
  with pytest.raises(ValueError, match='eval_root'):
    pipeline.make_eval_set(_cfg(source='paired_folder', root=str(paired_folder)))
  unpaired = pipeline.make_eval_set(
      _cfg(source='unpaired_folder', eval_root=str(tmp_path / 'eval')))
  assert [e['high'] for e in unpaired] == [None, None]


def test_loader_is_infinite():
  it = iter(pipeline.make_train_loader(_cfg(crop=8), batch_size=5, seed=0, shard_index=0,
                                       shard_count=1))
  assert len(list(itertools.islice(it, 7))) == 7  # 35 elements from 6 photos.


def test_scl_source_evaluates_on_the_common_embedded_set():
  from data_pipelines import scl_data  # pylint: disable=g-import-not-at-top

  scl_cfg = scl_data.default_scl_data_config()
  assert pipeline.source_module(scl_cfg.source).make_train_loader is scl_data.make_train_loader
  common = pipeline.make_eval_set(_cfg())
  scl = pipeline.make_eval_set(scl_cfg)
  assert [e['name'] for e in scl] == [e['name'] for e in common] == list(embedded.EMBEDDED_TEST)
  for a, b in zip(scl, common):
    np.testing.assert_array_equal(a['low'], b['low'])
    np.testing.assert_array_equal(a['high'], b['high'])
