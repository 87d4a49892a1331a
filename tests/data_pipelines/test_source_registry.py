"""data.source is found by module path: data_pipelines.sources.<name>, or a dotted module path.

A new source is a new module; `pipeline.py` is never edited. These tests add sources that exist only
in tmp_path and reach them through the pipeline's public entry points.
"""

import importlib
import sys
import textwrap

import numpy as np
import pytest

from data_pipelines import pipeline
from data_pipelines import sources
from lowlight_jax import errors

BUILT_IN = ['dataset', 'day_night_video', 'embedded', 'paired_folder', 'scl', 'unpaired_captions', 'unpaired_folder',
            'video']

# A source built from the shared pieces, as a new source in data_pipelines/sources/ would be: the
# paired folder under another name, with its own eval set.
_SOURCE = textwrap.dedent('''
    """Test source: root/low + root/high pairs."""
    from data_pipelines import image_sources
    from data_pipelines import loaders

    def make_train_loader(data_cfg, *, batch_size, seed, shard_index=None, shard_count=None):
      source = image_sources.PairedFolder(data_cfg.root, 'low', 'high')
      ops = loaders.image_transforms(data_cfg, ('low', 'high'))
      return loaders.make_loader(data_cfg, source, ops, batch_size=batch_size, seed=seed,
                                 shard_index=shard_index, shard_count=shard_count)

    def make_eval_set(data_cfg, split='test'):
      return [{'name': f'{split}-only', 'low': None, 'high': None}]
''')


@pytest.fixture
def forget_modules():
  """Drops the modules a test imported from tmp_path, so no other test sees them."""
  names = []
  yield names.append
  for name in names:
    sys.modules.pop(name, None)
  importlib.invalidate_caches()


def _cfg(**overrides):
  cfg = pipeline.default_data_config()
  cfg.crop = 4
  cfg.read_threads = 2
  cfg.read_buffer_size = 4
  cfg.update(overrides)
  return cfg


def _batches(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


def test_built_in_sources_are_the_modules_of_the_sources_package():
  assert pipeline.known_sources() == BUILT_IN
  for name in BUILT_IN:
    module = pipeline.source_module(name)
    assert module.__name__ == f'data_pipelines.sources.{name}'
    assert callable(module.make_train_loader) and callable(module.make_eval_set)


def test_a_module_added_to_the_sources_package_is_found(tmp_path, monkeypatch, forget_modules,
                                                         paired_folder):
  # A second directory of the package: as if night_pairs.py were put in data_pipelines/sources/
  (tmp_path / 'extra').mkdir()
  (tmp_path / 'extra' / 'night_pairs.py').write_text(_SOURCE)
  monkeypatch.setattr(sources, '__path__', [*sources.__path__, str(tmp_path / 'extra')])
  forget_modules('data_pipelines.sources.night_pairs')
  importlib.invalidate_caches()
  assert pipeline.known_sources() == sorted(BUILT_IN + ['night_pairs'])

  kwargs = dict(batch_size=3, seed=5, shard_index=0, shard_count=2)
  new = _batches(pipeline.make_train_loader(_cfg(source='night_pairs', root=str(paired_folder)),
                                            **kwargs), 3)
  assert sys.modules['data_pipelines.sources.night_pairs'].__file__.startswith(str(tmp_path))
  # Built from the shared loader pieces, the new source's batches (and their global batch order) are
  # exactly those of the built-in paired folder source on the same folder.
  old = _batches(pipeline.make_train_loader(_cfg(source='paired_folder', root=str(paired_folder)),
                                            **kwargs), 3)
  for a, b in zip(new, old):
    assert a.keys() == b.keys() == {'low', 'high'}
    np.testing.assert_array_equal(a['low'], b['low'])
    np.testing.assert_array_equal(a['high'], b['high'])
  assert [e['name'] for e in pipeline.make_eval_set(_cfg(source='night_pairs'), split='train')] == [
      'train-only']


def test_a_dotted_source_is_imported_as_a_module_path(tmp_path, monkeypatch, forget_modules):
  (tmp_path / 'my_project').mkdir()
  (tmp_path / 'my_project' / '__init__.py').write_text('')
  (tmp_path / 'my_project' / 'cams.py').write_text(textwrap.dedent('''
      CALLS = []
      def make_train_loader(data_cfg, *, batch_size, seed, shard_index=None, shard_count=None):
        CALLS.append((data_cfg.source, batch_size, seed, shard_index, shard_count))
        return [{'low': batch_size}]
      def make_eval_set(data_cfg, split='test'):
        return [{'name': split, 'low': None, 'high': None}]
  '''))
  (tmp_path / 'my_project' / 'half.py').write_text(
      'def make_train_loader(data_cfg, **kw):\n  return []\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  for name in ('my_project', 'my_project.cams', 'my_project.half'):
    forget_modules(name)
  cfg = _cfg(source='my_project.cams')
  assert pipeline.make_train_loader(cfg, batch_size=4, seed=9) == [{'low': 4}]
  assert sys.modules['my_project.cams'].CALLS == [('my_project.cams', 4, 9, None, None)]
  assert pipeline.make_eval_set(cfg, split='test')[0]['name'] == 'test'
  with pytest.raises(errors.ConfigError, match=r"'my_project.half'.*make_eval_set"):
    pipeline.make_train_loader(_cfg(source='my_project.half'), batch_size=1, seed=0)
  with pytest.raises(errors.ConfigError, match=r"'my_project.nothing_here'"):
    pipeline.make_eval_set(_cfg(source='my_project.nothing_here'))


def test_unknown_source_is_a_config_error_naming_it_and_the_known_ones():
  for call in (lambda cfg: pipeline.make_train_loader(cfg, batch_size=2, seed=0),
               lambda cfg: pipeline.make_eval_set(cfg)):
    with pytest.raises(errors.ConfigError) as info:
      call(_cfg(source='lol_typo'))
    message = str(info.value)
    assert "'lol_typo'" in message
    assert all(name in message for name in BUILT_IN), message
    assert isinstance(info.value, ValueError)  # Callers catching ValueError keep working.
  for bad in ('', '../etc', 'a..b'):
    with pytest.raises(errors.ConfigError, match='known sources'):
      pipeline.source_module(bad)


def test_a_source_whose_own_import_fails_is_not_reported_as_unknown(tmp_path, monkeypatch,
                                                                    forget_modules):
  (tmp_path / 'extra').mkdir()
  (tmp_path / 'extra' / 'broken.py').write_text('import a_dependency_that_is_not_installed_xyz\n')
  monkeypatch.setattr(sources, '__path__', [*sources.__path__, str(tmp_path / 'extra')])
  forget_modules('data_pipelines.sources.broken')
  importlib.invalidate_caches()
  with pytest.raises(ModuleNotFoundError, match='a_dependency_that_is_not_installed_xyz'):
    pipeline.source_module('broken')
