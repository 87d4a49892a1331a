"""Per-image captions and fixed prompts for text-conditioned training (SCUF/GEFU).

GEFU (`src/my_utils/training_utils.py`, `UnpairedCaptionDataset`) ships one caption file per image
folder, `enlight_low.csv` / `enlight_high.csv`: tab-separated, a header `filepath<TAB>title`, then one
row per image: its path (relative to the authors' repository, e.g. `data/unpaired_data/trainA/101_2.png`)
and its caption (a BLIP sentence). Only the path's FILE NAME is kept, so the CSVs work wherever the
images are. Fixed prompts (`fixed_prompt_a.txt` / `fixed_prompt_b.txt`) are one-line text files.

Captions are tokenized with `ClipTokenizer` (SD-Turbo's CLIP BPE from its `tokenizer/` folder, as
the authors' `AutoTokenizer` does it) on the host; it needs the `tokenizers` library only, never
transformers or jax (data pipelines import nothing above `lowlight_jax`'s bottom layer).

Errors are one line naming the file (and the line / column where it applies): FileNotFoundError for a
file that is absent, `errors.InputError` for one whose contents cannot be used.
"""

from __future__ import annotations

import csv
import io
import ntpath
import os
import posixpath
from typing import Sequence

import numpy as np

from lowlight_jax import errors

PathLike = str | os.PathLike


def _read_text(path: PathLike, what: str) -> str:
  """The file's text as UTF-8 (a leading BOM dropped); FileNotFoundError / InputError otherwise."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{what} not found: {path}')
  if not os.path.isfile(path):
    raise errors.InputError(f'{what} is not a file: {path}')
  try:
    with open(path, encoding='utf-8-sig', newline='') as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise errors.InputError(f'{path}: not UTF-8 text (byte {e.start}: {e.reason})') from None


def _basename(filepath: str) -> str:
  """The file name of a POSIX or Windows style path ('data/trainA/1.png' -> '1.png')."""
  return ntpath.basename(posixpath.basename(filepath.strip()))


def read_captions_csv(path: PathLike, *, image_key: str = 'filepath',
                      caption_key: str = 'title') -> dict[str, str]:
  """{image file name: caption} from a tab-separated caption file with a header row.

  Columns are found by name (`image_key`, `caption_key`; other columns are ignored); the csv module
  parses the rows (tab delimiter, '"' quoting), so captions may hold commas and quotes. Blank lines
  are skipped; captions are stripped. The same file name may appear twice with the same caption.

  Raises:
    FileNotFoundError: `path` does not exist.
    errors.InputError: not UTF-8; no header or the header lacks a column (the message lists the
      columns it has); a row with another number of fields than the header; an empty file path or
      caption; two rows for one file name with different captions (both line numbers named).
  """
  path = os.fspath(path)
  text = _read_text(path, 'caption file')
  reader = csv.reader(io.StringIO(text, newline=''), delimiter='\t', quotechar='"')
  header = None
  for row in reader:
    if any(field.strip() for field in row):
      header = [field.strip() for field in row]
      break
  if header is None:
    raise errors.InputError(f'{path}: empty caption file (expected a header '
                            f'{image_key!r}<TAB>{caption_key!r})')
  missing = [k for k in (image_key, caption_key) if k not in header]
  if missing:
    hint = (' (is it tab-separated?)' if len(header) == 1 and (',' in header[0] or ';' in header[0])
            else '')
    raise errors.InputError(f'{path}: header has no column {" or ".join(map(repr, missing))}; its '
                            f'columns are {header}{hint}')
  image_col, caption_col = header.index(image_key), header.index(caption_key)
  captions: dict[str, str] = {}
  first_line: dict[str, int] = {}
  start = reader.line_num + 1
  for row in reader:
    line, start = start, reader.line_num + 1  # A quoted caption may span lines: name its first.
    if not any(field.strip() for field in row):
      continue
    if len(row) != len(header):
      raise errors.InputError(f'{path}, line {line}: {len(row)} tab-separated fields, the header '
                              f'has {len(header)} ({header})')
    filepath, caption = row[image_col].strip(), row[caption_col].strip()
    if not filepath:
      raise errors.InputError(f'{path}, line {line}: empty {image_key!r}')
    name = _basename(filepath)
    if not caption:
      raise errors.InputError(f'{path}, line {line}: empty {caption_key!r} for {filepath!r}')
    if name in captions and captions[name] != caption:
      raise errors.InputError(f'{path}, line {line}: {name!r} already has a different caption '
                              f'(line {first_line[name]}): {captions[name]!r} vs {caption!r}')
    captions.setdefault(name, caption)
    first_line.setdefault(name, line)
  return captions


def read_prompt_file(path: PathLike) -> str:
  """The stripped text of a prompt file (GEFU `fixed_prompt_a.txt`).

  Raises:
    FileNotFoundError: `path` does not exist.
    errors.InputError: not UTF-8, or empty (whitespace only).
  """
  text = _read_text(path, 'prompt file').strip()
  if not text:
    raise errors.InputError(f'{os.fspath(path)}: empty prompt file')
  return text



# ---------------------------------------------------------------------------------------------
# CLIP tokenization of captions (host side, no transformers import).
# ---------------------------------------------------------------------------------------------

# CLIP's BPE tokenizer reads this many merges (after the '#version' line), as transformers' does.
_CLIP_MERGES = 49152 - 256 - 2
# Text is split into contractions, letter runs, single digits and runs of other symbols.
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CLIP_SPECIAL_DEFAULTS = {'bos_token': '<|startoftext|>', 'eos_token': '<|endoftext|>',
                          'unk_token': '<|endoftext|>', 'pad_token': '<|endoftext|>'}
TOKENIZER_FILES = ('vocab.json', 'merges.txt')


def _read_json(path: str) -> dict:
  import json  # pylint: disable=g-import-not-at-top
  try:
    value = json.loads(_read_text(path, 'tokenizer file'))
  except json.JSONDecodeError as e:
    raise errors.InputError(f'{path}: not valid JSON (line {e.lineno}: {e.msg})') from None
  if not isinstance(value, dict):
    raise errors.InputError(f'{path}: expected a JSON object, got {type(value).__name__}')
  return value


def _token_text(value) -> str | None:
  """A special token as written in tokenizer_config / special_tokens_map: a string or {'content'}."""
  if isinstance(value, dict):
    value = value.get('content')
  return value if isinstance(value, str) and value else None


class ClipTokenizer:
  """The CLIP BPE tokenizer of a tokenizer folder (vocab.json, merges.txt, tokenizer_config.json).

  Equivalent to what GEFU uses, `AutoTokenizer.from_pretrained(sd_turbo, subfolder='tokenizer')`
  (transformers' `CLIPTokenizerFast`), called as `tokenizer(text, max_length=model_max_length,
  padding='max_length', truncation=True).input_ids`: NFC, whitespace runs -> one space, lower case,
  CLIP's split pattern, byte-level BPE with '</w>' word ends, `bos ... eos`, truncated and padded to
  `model_max_length` (77) with the pad token (SD-2/SD-Turbo: '!', id 0). Special tokens written in
  the text (SD-2's '!' included) are matched as special tokens, as transformers does. Built on the
  `tokenizers` library, so data pipelines need neither transformers nor jax (the project's slow
  `sd_turbo.load_tokenizer` gives the same ids except that it splits CJK text per character).

  Calling it on a list of strings returns int32 (len, model_max_length) ids.
  """

  def __init__(self, folder: PathLike):
    from tokenizers import AddedToken, Regex, Tokenizer  # pylint: disable=g-import-not-at-top
    from tokenizers import models, normalizers, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'tokenizer folder not found: {folder}')
    for name in TOKENIZER_FILES:
      if not os.path.isfile(os.path.join(folder, name)):
        raise FileNotFoundError(f'{os.path.join(folder, name)} not found (a CLIP tokenizer needs '
                                f'{" and ".join(TOKENIZER_FILES)})')
    self.folder = folder
    vocab_path = os.path.join(folder, 'vocab.json')
    vocab = _read_json(vocab_path)
    config_path = os.path.join(folder, 'tokenizer_config.json')
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    map_path = os.path.join(folder, 'special_tokens_map.json')
    special_map = _read_json(map_path) if os.path.isfile(map_path) else {}
    special = {k: _token_text(special_map.get(k)) or _token_text(config.get(k)) or default
               for k, default in _CLIP_SPECIAL_DEFAULTS.items()}
    for key, token in special.items():
      if token not in vocab:
        raise errors.InputError(f'{vocab_path}: has no entry for the {key} {token!r}')
    length = config.get('model_max_length', 77)
    if not isinstance(length, int) or not 0 < length <= 100_000:
      raise errors.InputError(f'{config_path}: model_max_length={length!r} is not a usable length '
                              '(77 for CLIP)')
    merges_path = os.path.join(folder, 'merges.txt')
    lines = _read_text(merges_path, 'tokenizer file').strip().split('\n')
    merges = []
    for number, line in enumerate(lines[1:_CLIP_MERGES + 1], start=2):
      pair = line.split()
      if len(pair) != 2:
        raise errors.InputError(f'{merges_path}, line {number}: expected two symbols, got {line!r}')
      merges.append((pair[0], pair[1]))

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix='',
                                     end_of_word_suffix='</w>', fuse_unk=False,
                                     unk_token=special['unk_token']))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        # invert: the pattern's matches are the pieces; whatever lies between (spaces) is dropped.
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior='removed', invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bos, eos = special['bos_token'], special['eos_token']
    tokenizer.post_processor = processors.RobertaProcessing(
        sep=(eos, vocab[eos]), cls=(bos, vocab[bos]), add_prefix_space=False, trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in dict.fromkeys(special.values())])
    tokenizer.enable_truncation(max_length=length)
    tokenizer.enable_padding(length=length, pad_id=vocab[special['pad_token']],
                             pad_token=special['pad_token'])
    self._tokenizer = tokenizer
    self.model_max_length = length
    self.pad_token_id = vocab[special['pad_token']]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    texts = list(texts)
    if not texts:
      return np.zeros((0, self.model_max_length), np.int32)
    ids = [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]
    return np.asarray(ids, dtype=np.int32).reshape(len(texts), self.model_max_length)

  def __repr__(self) -> str:
    return f'ClipTokenizer({self.folder!r}, model_max_length={self.model_max_length})'


def load_clip_tokenizer(path: PathLike) -> ClipTokenizer:
  """`ClipTokenizer` of a tokenizer folder, or of an SD-Turbo folder's `tokenizer/` subfolder."""
  path = os.fspath(path)
  if not os.path.isfile(os.path.join(path, 'vocab.json')) and os.path.isdir(
      os.path.join(path, 'tokenizer')):
    path = os.path.join(path, 'tokenizer')
  return ClipTokenizer(path)
