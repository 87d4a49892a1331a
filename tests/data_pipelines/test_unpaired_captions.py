"""Caption files, prompt files and the 'unpaired_captions' source (SCUF/GEFU training data)."""

import pathlib

import ml_collections
import numpy as np
from PIL import Image
import pytest

from data_pipelines import captions
from data_pipelines import pipeline
from data_pipelines.sources import unpaired_captions
from lowlight_jax import errors

# Constant images whose 8-bit value names the file: resizing, cropping and flipping keep the value, so
# a batch element tells which file it came from.
LOW = {f'a{k}.png': 20 * (k + 1) for k in range(3)}             # 20x24
HIGH = {f'b{k}.png': 100 + 30 * k for k in range(4)}            # 30x18
LOW_CAPTIONS = {'a0.png': 'a dark room, lit by one "small" lamp',
                'a1.png': 'night street with cars',
                'a2.png': 'dim kitchen; a cat, a dog'}
HIGH_CAPTIONS = {'b0.png': 'natural light, bright lighting',
                 'b1.png': 'a sunny beach',
                 'b2.png': 'daylight, clear visibility',
                 'b3.png': 'a well-lit photo of a garden'}


def _write_csv(path, rows, header='filepath\ttitle'):
  path.write_text(header + '\n' + ''.join(r + '\n' for r in rows), encoding='utf-8')
  return path


def _save(path, value, hw):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full(hw + (3,), value, np.uint8)).save(path)


@pytest.fixture
def layout(tmp_path):
  """root/trainA, root/trainB, root/testA and GEFU-style caption CSVs (authors' relative paths)."""
  root = tmp_path / 'enlightengan'
  for name, value in LOW.items():
    _save(root / 'trainA' / name, value, (20, 24))
  for name, value in HIGH.items():
    _save(root / 'trainB' / name, value, (30, 18))
  _save(root / 'testA' / 't0.png', 7, (13, 11))
  low_csv = _write_csv(tmp_path / 'enlight_low.csv',
                       [f'data/unpaired_data/trainA/{n}\t{c}' for n, c in LOW_CAPTIONS.items()])
  high_csv = _write_csv(tmp_path / 'enlight_high.csv',
                        [f'data/unpaired_data/trainB/{n}\t{c}' for n, c in HIGH_CAPTIONS.items()])
  return root, low_csv, high_csv


@pytest.fixture(scope='module')
def tokenizer_dir(conformance_dir):
  return conformance_dir / 'fixtures' / 'gefu_tiny' / 'sd_turbo_tiny' / 'tokenizer'


@pytest.fixture(scope='module')
def tokenizer(tokenizer_dir):
  """The project's transformers CLIPTokenizer (the reference the source's ids must equal)."""
  from lowlight_jax.convert import sd_turbo  # pylint: disable=g-import-not-at-top  (jax: tests only)
  return sd_turbo.load_tokenizer(tokenizer_dir, subfolder=None)


def _cfg(root, **overrides):
  cfg = pipeline.default_data_config()
  cfg.source = 'unpaired_captions'
  cfg.root = str(root)
  cfg.low_dir, cfg.high_dir = 'trainA', 'trainB'
  cfg.resize, cfg.crop = 16, 8
  cfg.read_threads, cfg.read_buffer_size = 1, 2
  for k, v in overrides.items():
    cfg[k] = v  # Also adds the fields default_data_config does not have (captions_low, ...).
  return cfg


def _captioned(root, low_csv, high_csv, tokenizer_dir, **overrides):
  return _cfg(root, captions_low=str(low_csv), captions_high=str(high_csv),
              tokenizer=str(tokenizer_dir), **overrides)


def _batches(cfg, n, seed=0, batch_size=2):
  it = iter(pipeline.make_train_loader(cfg, batch_size=batch_size, seed=seed, shard_index=0,
                                       shard_count=1))
  return [next(it) for _ in range(n)]


def _file_of(image, table):
  """The file whose constant value the (transformed) image holds."""
  value = int(round(float(image.mean()) * 255))
  assert np.allclose(image, value / 255, atol=1e-4), 'not a constant image'
  (name,) = [n for n, v in table.items() if v == value]
  return name


def _ids(tokenizer, text):
  return tokenizer(text, max_length=tokenizer.model_max_length, padding='max_length',
                   truncation=True).input_ids


# --- caption CSV --------------------------------------------------------------------------------


def test_csv_maps_file_names_to_captions_with_commas_and_quotes(tmp_path):
  path = tmp_path / 'c.csv'
  path.write_text('filepath\ttitle\n'
                  'data/unpaired_data/trainA/101_2.png\ta room, with a "red" lamp\n'
                  '\n'
                  'C:\\data\\trainA\\7.jpg\t"quoted, with a tab\tand ""quotes"""\n'
                  'x/8.png\t  spaces around  \n'
                  'y/101_2.png\ta room, with a "red" lamp\n',  # Same name, same caption: fine.
                  encoding='utf-8')
  assert captions.read_captions_csv(path) == {
      '101_2.png': 'a room, with a "red" lamp',
      '7.jpg': 'quoted, with a tab\tand "quotes"',
      '8.png': 'spaces around'}


def test_csv_columns_are_found_by_name(tmp_path):
  path = _write_csv(tmp_path / 'c.csv', ['caption one\t1\timgs/a.png'], header='text\tid\tpath')
  assert captions.read_captions_csv(path, image_key='path', caption_key='text') == {
      'a.png': 'caption one'}


def test_csv_absent_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.csv'):
    captions.read_captions_csv(tmp_path / 'nope.csv')


def test_csv_that_is_not_tab_separated_lists_its_columns(tmp_path):
  path = tmp_path / 'commas.csv'
  path.write_text('filepath,title\na.png,a caption\n')
  with pytest.raises(errors.InputError) as e:
    captions.read_captions_csv(path)
  message = str(e.value)
  assert 'commas.csv' in message and "['filepath,title']" in message and 'tab-separated' in message
  assert '\n' not in message


def test_csv_missing_column_names_it_and_the_columns_present(tmp_path):
  path = _write_csv(tmp_path / 'c.csv', ['a.png\tx'], header='filepath\tcaption')
  with pytest.raises(errors.InputError, match=r"c\.csv: header has no column 'title'; its columns "
                     r"are \['filepath', 'caption'\]"):
    captions.read_captions_csv(path)


def test_csv_row_with_wrong_field_count_names_the_line(tmp_path):
  path = _write_csv(tmp_path / 'c.csv', ['a.png\tfine', 'b.png\ttoo\tmany'])
  with pytest.raises(errors.InputError, match=r'c\.csv, line 3: 3 tab-separated fields'):
    captions.read_captions_csv(path)
  path = _write_csv(tmp_path / 'd.csv', ['a.png'])
  with pytest.raises(errors.InputError, match=r'd\.csv, line 2: 1 tab-separated fields'):
    captions.read_captions_csv(path)


def test_csv_empty_caption_names_the_line_and_image(tmp_path):
  path = _write_csv(tmp_path / 'c.csv', ['a.png\tok', 'dir/b.png\t   '])
  with pytest.raises(errors.InputError, match=r"c\.csv, line 3: empty 'title' for 'dir/b\.png'"):
    captions.read_captions_csv(path)


def test_csv_conflicting_captions_for_one_file_name_name_both_lines(tmp_path):
  path = _write_csv(tmp_path / 'c.csv', ['trainA/a.png\tone', 'b.png\tx', 'other/a.png\ttwo'])
  with pytest.raises(errors.InputError,
                     match=r"c\.csv, line 4: 'a\.png' already has a different caption \(line 2\)"):
    captions.read_captions_csv(path)


def test_csv_not_utf8_and_empty(tmp_path):
  path = tmp_path / 'latin1.csv'
  path.write_bytes('filepath\ttitle\na.png\tcaf\xe9\n'.encode('latin-1'))
  with pytest.raises(errors.InputError, match=r'latin1\.csv: not UTF-8'):
    captions.read_captions_csv(path)
  empty = tmp_path / 'empty.csv'
  empty.write_text('\n\n')
  with pytest.raises(errors.InputError, match=r'empty\.csv: empty caption file'):
    captions.read_captions_csv(empty)


# --- CLIP tokenizer -----------------------------------------------------------------------------


def test_clip_tokenizer_reproduces_the_authors_ids_for_the_fixed_prompt(conformance_dir):
  fixture = conformance_dir / 'fixtures' / 'gefu_tiny'
  prompt = ('natural light, bright lighting, soft illumination, high light, evenly lit, clear '
            'visibility, daylight, bright atmosphere, well-lit photo.')
  # The fixture's input_ids came from the authors' AutoTokenizer; an SD-Turbo root is accepted too.
  tokenizer = captions.load_clip_tokenizer(fixture / 'sd_turbo_tiny')
  ids = tokenizer([prompt])
  assert ids.dtype == np.int32 and ids.shape == (1, 77)
  np.testing.assert_array_equal(ids, np.load(fixture / 'gefu_tiny_io.npz')['a_input_ids'])


def test_clip_tokenizer_equals_the_project_tokenizer(tokenizer_dir, tokenizer):
  texts = ['a dark room, with "red" lamps', "  A Man's   DOG isn't 12 years old!!  ",
           'café, naïve; (brackets) $5.99 #tag', 'tab\there\nnewline', 'wow! ! hi!!!', '',
           ' '.join(['word'] * 100)]  # The last is truncated to 77 ids ending with eos.
  ids = captions.load_clip_tokenizer(tokenizer_dir)(texts)
  assert ids.shape == (len(texts), 77)
  np.testing.assert_array_equal(ids, [_ids(tokenizer, t) for t in texts])


def test_clip_tokenizer_folder_errors(tmp_path, tokenizer_dir):
  with pytest.raises(FileNotFoundError, match='no_such_dir'):
    captions.load_clip_tokenizer(tmp_path / 'no_such_dir')
  broken = tmp_path / 'tok'
  broken.mkdir()
  (broken / 'vocab.json').write_text((tokenizer_dir / 'vocab.json').read_text(encoding='utf-8'))
  with pytest.raises(FileNotFoundError, match=r'merges\.txt not found'):
    captions.load_clip_tokenizer(broken)
  (broken / 'merges.txt').write_text('#version: 0.2\nl o\n')
  (broken / 'vocab.json').write_text('{"a": 1,')
  with pytest.raises(errors.InputError, match=r'vocab\.json: not valid JSON'):
    captions.load_clip_tokenizer(broken)


# --- prompt files -------------------------------------------------------------------------------


def test_prompt_file_is_stripped(tmp_path):
  path = tmp_path / 'fixed_prompt_b.txt'
  path.write_text('natural light, bright lighting.\n', encoding='utf-8')
  assert captions.read_prompt_file(path) == 'natural light, bright lighting.'


def test_prompt_file_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='fixed_prompt_a.txt'):
    captions.read_prompt_file(tmp_path / 'fixed_prompt_a.txt')
  (tmp_path / 'blank.txt').write_text(' \n\t\n')
  with pytest.raises(errors.InputError, match=r'blank\.txt: empty prompt file'):
    captions.read_prompt_file(tmp_path / 'blank.txt')
  (tmp_path / 'bytes.txt').write_bytes(b'\xff\xfe\x00bad')
  with pytest.raises(errors.InputError, match=r'bytes\.txt: not UTF-8'):
    captions.read_prompt_file(tmp_path / 'bytes.txt')


# --- the source ---------------------------------------------------------------------------------


def test_source_is_registered():
  assert 'unpaired_captions' in pipeline.known_sources()
  assert pipeline.source_module('unpaired_captions') is unpaired_captions


def test_without_captions_batches_hold_low_and_high_only(layout):
  root, _, _ = layout
  (batch,) = _batches(_cfg(root), 1, batch_size=3)
  assert set(batch) == {'low', 'high'}
  for key in ('low', 'high'):
    assert batch[key].shape == (3, 8, 8, 3) and batch[key].dtype == np.float32
    assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
  # Every element is one whole low file and one whole normal file.
  for low, high in zip(batch['low'], batch['high']):
    assert _file_of(low, LOW) in LOW and _file_of(high, HIGH) in HIGH


def test_low_and_high_of_different_sizes_are_cropped_without_resize(layout):
  root, _, _ = layout
  # 20x24 low vs 30x18 normal: one shared crop window could not be applied (sizes differ).
  (batch,) = _batches(_cfg(root, resize=0, crop=12), 1)
  assert batch['low'].shape == batch['high'].shape == (2, 12, 12, 3)


def _ramp(h, w):
  """Every pixel distinct: R = row, G = column (so a crop reveals its window)."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.stack([rows * 8, cols * 8, np.full_like(rows, 255)], -1).astype(np.uint8)


def test_low_and_high_get_independent_crop_windows(tmp_path):
  root = tmp_path / 'ramps'
  for sub in ('trainA', 'trainB'):
    (root / sub).mkdir(parents=True)
    Image.fromarray(_ramp(24, 24)).save(root / sub / 'same.png')  # The same picture in both.
  cfg = _cfg(root, resize=0, crop=8, hflip=False)
  batches = _batches(cfg, 6)
  windows = []
  for b in batches:
    for low, high in zip(b['low'], b['high']):
      corner = lambda im: (round(im[0, 0, 0] * 255 / 8), round(im[0, 0, 1] * 255 / 8))
      windows.append((corner(low), corner(high)))
  # One shared window would make every pair equal; independent draws differ almost surely.
  assert sum(lo != hi for lo, hi in windows) >= len(windows) // 2, windows


def test_captioned_batches_carry_the_ids_of_their_own_images(layout, tokenizer_dir, tokenizer):
  root, low_csv, high_csv = layout
  cfg = _captioned(root, low_csv, high_csv, tokenizer_dir)
  batches = _batches(cfg, 6)
  seen = set()
  for batch in batches:
    assert set(batch) == {'low', 'high', 'low_caption_ids', 'high_caption_ids'}
    assert batch['low'].shape == batch['high'].shape == (2, 8, 8, 3)
    for key in ('low_caption_ids', 'high_caption_ids'):
      assert batch[key].shape == (2, 77) and batch[key].dtype == np.int32
    for i in range(2):
      low_name, high_name = _file_of(batch['low'][i], LOW), _file_of(batch['high'][i], HIGH)
      seen.add(low_name)
      np.testing.assert_array_equal(batch['low_caption_ids'][i],
                                    _ids(tokenizer, LOW_CAPTIONS[low_name]))
      np.testing.assert_array_equal(batch['high_caption_ids'][i],
                                    _ids(tokenizer, HIGH_CAPTIONS[high_name]))
  assert seen == set(LOW)  # Shuffled over 3 epochs: every low image (and its caption) came by.
  # The captions differ, so the check above would catch ids attached to the wrong image.
  assert len({tuple(_ids(tokenizer, c)) for c in LOW_CAPTIONS.values()}) == len(LOW_CAPTIONS)


def test_same_seed_same_batches_and_checkpoint_restores_them(layout, tokenizer_dir):
  root, low_csv, high_csv = layout
  cfg = _captioned(root, low_csv, high_csv, tokenizer_dir)
  first, again, other = _batches(cfg, 3, seed=3), _batches(cfg, 3, seed=3), _batches(cfg, 3, seed=4)
  for a, b in zip(first, again):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert any(not np.array_equal(a['low'], b['low']) or not np.array_equal(a['high'], b['high'])
             for a, b in zip(first, other))
  loader = pipeline.make_train_loader(cfg, batch_size=2, seed=3, shard_index=0, shard_count=1)
  it = iter(loader)
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  restored = iter(pipeline.make_train_loader(cfg, batch_size=2, seed=3, shard_index=0,
                                             shard_count=1))
  restored.set_state(state)
  for a, b in zip(expected, [next(restored) for _ in range(2)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_an_image_without_a_caption_row_is_named_with_its_csv(layout, tokenizer_dir):
  root, low_csv, high_csv = layout
  rows = [f'trainB/{n}\t{c}' for n, c in HIGH_CAPTIONS.items() if n != 'b2.png']
  _write_csv(high_csv, rows + ['trainB/extra.png\tno such image (ignored)'])
  cfg = _captioned(root, low_csv, high_csv, tokenizer_dir)
  with pytest.raises(errors.InputError) as e:
    pipeline.make_train_loader(cfg, batch_size=2, seed=0, shard_index=0, shard_count=1)
  message = str(e.value)
  assert str(pathlib.Path(root, 'trainB', 'b2.png')) in message
  assert str(high_csv) in message and 'data.captions_high' in message


@pytest.mark.parametrize('fields, missing', [
    (dict(captions_low='low.csv'), 'data.captions_high'),
    (dict(captions_high='high.csv', tokenizer='tok'), 'data.captions_low'),
    (dict(captions_low='low.csv', captions_high='high.csv'), 'data.tokenizer'),
])
def test_incomplete_caption_config_names_the_missing_field(layout, fields, missing):
  root, _, _ = layout
  with pytest.raises(errors.ConfigError, match=missing):
    pipeline.make_train_loader(_cfg(root, **fields), batch_size=2, seed=0)


def test_no_crop_and_no_resize_is_a_config_error(layout):
  root, _, _ = layout
  with pytest.raises(errors.ConfigError, match='data.crop or data.resize'):
    pipeline.make_train_loader(_cfg(root, crop=0, resize=0), batch_size=2, seed=0)


def test_absent_fields_take_the_gefu_defaults(layout):
  root, _, _ = layout
  cfg = ml_collections.ConfigDict({'root': str(root)})
  ops = unpaired_captions.image_transforms(cfg)
  assert [(type(op).__name__, op.keys) for op in ops] == [
      ('Resize', ('low',)), ('Resize', ('high',)), ('RandomCrop', ('low',)),
      ('RandomCrop', ('high',)), ('RandomFlip', ('low',)), ('RandomFlip', ('high',))]
  assert ops[0].size == (384, 384) and ops[0].method == 'lanczos' and ops[2].size == (256, 256)
  assert ops[4].horizontal and not ops[4].vertical
  source = unpaired_captions.make_source(cfg)  # trainA / trainB by default.
  assert len(source) == 4 and set(source[0]) == {'low', 'high'}


def test_eval_set_reads_full_size_test_images(layout, tmp_path):
  root, _, _ = layout
  (element,) = pipeline.make_eval_set(_cfg(root))  # eval_root unset: root/testA.
  assert element['name'] == 't0' and element['low'].shape == (13, 11, 3)
  assert element['high'] is None
  np.testing.assert_allclose(element['low'], 7 / 255, atol=1e-6)
  train = pipeline.make_eval_set(_cfg(root), 'train')
  assert [e['name'] for e in train] == ['a0', 'a1', 'a2']
  assert train[0]['low'].shape == (20, 24, 3)
  dicm = tmp_path / 'DICM'
  _save(dicm / '01.png', 50, (9, 10))
  (element,) = pipeline.make_eval_set(_cfg(root, eval_root=str(dicm)))
  assert element['name'] == '01' and element['low'].shape == (9, 10, 3)
