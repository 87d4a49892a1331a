"""data_pipelines.image_sources: stem matching, skipping bad files with one warning, reprs."""

import io
import logging
import pickle

import numpy as np
from PIL import Image
import pytest

from data_pipelines import image_sources


def _truncated_jpeg() -> bytes:
  buf = io.BytesIO()
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(buf, format='JPEG', quality=95)
  return buf.getvalue()[: len(buf.getvalue()) // 2]


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_paired_folder_matches_by_stem_and_reports_unmatched(paired_folder, write_image, caplog):
  # Different extensions still pair; orphans on either side are reported, not loaded.
  (paired_folder / 'high' / '05.png').unlink()
  write_image(paired_folder / 'high' / '05.bmp', 180 / 255)
  write_image(paired_folder / 'low' / 'orphan_low.png', 0.5)
  write_image(paired_folder / 'high' / 'orphan_high.png', 0.5)
  with caplog.at_level(logging.WARNING):
    src = image_sources.PairedFolder(paired_folder)
  assert len(src) == 6
  assert [p.name for p in src.unmatched] == ['orphan_low.png', 'orphan_high.png'] or sorted(
      p.name for p in src.unmatched) == ['orphan_high.png', 'orphan_low.png']
  assert any('2 files' in m and 'orphan_low.png' in m for m in _warnings(caplog))
  for i in range(6):
    element = src[i]
    assert set(element) == {'low', 'high'} and src.name(i) == f'{i:02d}'
    np.testing.assert_allclose(element['low'], round((i + 1) * 10) / 255, atol=1e-6)
    np.testing.assert_allclose(element['high'], round((i + 1) * 30) / 255, atol=1e-6)


def test_bad_files_are_skipped_with_one_warning_each(tmp_path, write_image, caplog):
  folder = tmp_path / 'imgs'
  for i in range(4):
    write_image(folder / f'good{i}.png', (i + 1) * 40 / 255)
  (folder / 'a_empty.png').write_bytes(b'')
  (folder / 'b_text.png').write_text('definitely not a PNG\n')
  (folder / 'c_cut.jpg').write_bytes(_truncated_jpeg())
  with caplog.at_level(logging.WARNING):
    src = image_sources.UnpairedFolder(folder)
    # Header checks drop the empty and text files at construction; the truncated JPEG has an intact
    # header and is only found when decoded: the next readable record is served instead.
    assert len(src) == 5
    values = []
    for _ in range(2):  # Second pass: no new warnings, same answers.
      values.append([float(src[i]['low'].mean()) for i in range(len(src))])
  assert values[0] == values[1]
  good = {round((i + 1) * 40) / 255 for i in range(4)}
  assert all(any(abs(v - g) < 1e-6 for g in good) for v in values[0])
  messages = _warnings(caplog)
  for bad in ('a_empty.png', 'b_text.png', 'c_cut.jpg'):
    assert sum(bad in m for m in messages) == 1, messages
  assert len(messages) == 3
  reasons = dict((p.split('/')[-1], r) for p, r in src.skipped)
  assert set(reasons) == {'a_empty.png', 'b_text.png', 'c_cut.jpg'}
  assert 'empty' in reasons['a_empty.png'] and 'read time' in reasons['c_cut.jpg']


def test_bad_file_in_a_pair_drops_the_pair(paired_folder, caplog):
  (paired_folder / 'high' / '02.png').write_bytes(b'')
  with caplog.at_level(logging.WARNING):
    src = image_sources.PairedFolder(paired_folder)
  assert [src.name(i) for i in range(len(src))] == ['00', '01', '03', '04', '05']
  assert len(src.skipped) == 1 and src.skipped[0][0].endswith('02.png')
  assert any('02.png' in m for m in _warnings(caplog))


def test_empty_or_all_bad_folder_raises_naming_it(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='empty'):
    image_sources.UnpairedFolder(tmp_path / 'empty')
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'x.png').write_bytes(b'')
  with pytest.raises(ValueError, match=r"bad.*1 unreadable"):
    image_sources.UnpairedFolder(tmp_path / 'bad')
  (tmp_path / 'p' / 'low').mkdir(parents=True)
  (tmp_path / 'p' / 'high').mkdir()
  with pytest.raises(ValueError, match='low'):
    image_sources.PairedFolder(tmp_path / 'p')


def test_repr_is_stable_and_sources_pickle(paired_folder, caplog):
  src = image_sources.PairedFolder(paired_folder)
  again = image_sources.PairedFolder(paired_folder)
  assert repr(src) == repr(again) and 'num_records=6' in repr(src)
  clone = pickle.loads(pickle.dumps(src))  # grain ships sources to worker processes.
  assert repr(clone) == repr(src)
  np.testing.assert_array_equal(clone[3]['high'], src[3]['high'])
  emb = image_sources.EmbeddedPairs('test', seed=3)
  assert repr(emb) == repr(pickle.loads(pickle.dumps(emb)))
  assert "split='test'" in repr(emb) and 'seed=3' in repr(emb)
