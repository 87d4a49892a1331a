"""Tests for lowlight_jax.io.imageio: all modes decode to RGB float32, bad files raise, atomic IO."""

import io
import os

import numpy as np
from PIL import Image
import pytest

from lowlight_jax.io import imageio


def _rgb(h=6, w=10, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_exact(tmp_path):
  arr = _rgb()
  Image.fromarray(arr).save(tmp_path / 'a.png')
  out = imageio.read_image(tmp_path / 'a.png')
  assert out.dtype == np.float32 and out.shape == (6, 10, 3)
  np.testing.assert_allclose(out, arr / 255.0, atol=1e-7)


def test_exif_orientation_is_applied(tmp_path):
  # 20x40 image, left half red, right half blue; orientation 6 = rotate 90 degrees clockwise to
  # view.
  arr = np.zeros((20, 40, 3), np.uint8)
  arr[:, :20, 0] = 255
  arr[:, 20:, 2] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(arr).save(tmp_path / 'r.jpg', exif=exif, quality=95)
  out = imageio.read_image(tmp_path / 'r.jpg')
  assert out.shape == (40, 20, 3)
  # Clockwise rotation moves the left (red) half to the top.
  assert out[:15, :, 0].mean() > 0.9 and out[:15, :, 2].mean() < 0.1
  assert out[25:, :, 2].mean() > 0.9 and out[25:, :, 0].mean() < 0.1
  assert imageio.verify_image(tmp_path / 'r.jpg') == (40, 20)


def test_16bit_grey_keeps_precision(tmp_path):
  arr = np.array([[0, 1, 257, 65535]], np.uint16)
  Image.fromarray(arr).save(tmp_path / 'g16.png')
  out = imageio.read_image(tmp_path / 'g16.png')
  assert out.shape == (1, 4, 3)
  np.testing.assert_allclose(out[..., 1], arr / 65535.0, rtol=1e-6)
  assert out[0, 1, 0] > 0  # 1/65535 survives: not reduced to 8 bits.


def test_grey_replicated(tmp_path):
  arr = _rgb()[..., 0]
  Image.fromarray(arr).save(tmp_path / 'g.png')
  out = imageio.read_image(tmp_path / 'g.png')
  for c in range(3):
    np.testing.assert_allclose(out[..., c], arr / 255.0, atol=1e-7)


def test_alpha_is_composited_onto_black(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[..., :3] = 200
  rgba[..., 3] = [[255, 0], [51, 255]]
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  out = imageio.read_image(tmp_path / 'rgba.png')
  np.testing.assert_allclose(out[..., 0], 200 / 255 * rgba[..., 3] / 255, atol=1e-6)
  la = Image.fromarray(rgba[..., [0, 3]], 'LA')
  la.save(tmp_path / 'la.png')
  out = imageio.read_image(tmp_path / 'la.png')
  assert out.shape == (2, 2, 3)
  np.testing.assert_allclose(out[..., 2], 200 / 255 * rgba[..., 3] / 255, atol=1e-6)


def test_palette_and_cmyk(tmp_path):
  p = Image.new('P', (3, 2))
  p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
  p.putpixel((1, 0), 1)
  p.save(tmp_path / 'p.png')
  out = imageio.read_image(tmp_path / 'p.png')
  np.testing.assert_array_equal(out[0, 0], [1, 0, 0])
  np.testing.assert_array_equal(out[0, 1], [0, 0, 1])
  Image.new('CMYK', (3, 2), (0, 255, 255, 0)).save(tmp_path / 'c.tif')
  out = imageio.read_image(tmp_path / 'c.tif')
  assert out.shape == (2, 3, 3)
  np.testing.assert_array_equal(out[1, 2], [1, 0, 0])


def _truncated_jpeg() -> bytes:
  buf = io.BytesIO()
  Image.fromarray(_rgb(64, 64)).save(buf, format='JPEG', quality=95)
  return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize('name,content,reason', [
    ('empty.png', b'', 'empty'),
    ('text.png', b'this is not an image\n', 'not a recognised image'),
    ('cut.jpg', None, 'truncated'),
])
def test_bad_files_raise_decode_error_naming_file(tmp_path, name, content, reason):
  path = tmp_path / name
  path.write_bytes(_truncated_jpeg() if content is None else content)
  with pytest.raises(imageio.ImageDecodeError, match=reason) as info:
    imageio.read_image(path)
  assert isinstance(info.value, ValueError)
  assert name in str(info.value) and info.value.path == str(path)


def test_pixel_limit_and_pil_bomb_warning_are_errors(tmp_path, monkeypatch):
  Image.fromarray(_rgb(40, 40)).save(tmp_path / 'big.png')
  with pytest.raises(imageio.ImageDecodeError, match='exceeds max_pixels=1000'):
    imageio.read_image(tmp_path / 'big.png', max_pixels=1000)
  with pytest.raises(imageio.ImageDecodeError, match='exceeds'):
    imageio.verify_image(tmp_path / 'big.png', max_pixels=1000)
  # Above PIL's own limit PIL only warns (below 2x); that warning must become our error.
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
  with pytest.raises(imageio.ImageDecodeError, match='decompression bomb'):
    imageio.read_image(tmp_path / 'big.png')


def test_missing_file_is_not_a_decode_error(tmp_path):
  with pytest.raises(FileNotFoundError):
    imageio.read_image(tmp_path / 'nope.png')


def test_write_png_atomic_roundtrip_and_no_leftovers(tmp_path):
  arr = _rgb()
  imageio.write_png_atomic(tmp_path / 'out.png', arr)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out.png')), arr)
  assert os.listdir(tmp_path) == ['out.png']
  with pytest.raises(TypeError):
    imageio.write_png_atomic(tmp_path / 'f.png', arr.astype(np.float32))
  assert os.listdir(tmp_path) == ['out.png']


def test_write_png_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
  old = _rgb(seed=1)
  imageio.write_png_atomic(tmp_path / 'out.png', old)

  def failing_save(self, fp, *args, **kwargs):
    fp.write(b'\x89PNG half')  # Partial bytes, then the encoder dies.
    raise OSError('disk full')

  monkeypatch.setattr(Image.Image, 'save', failing_save)
  with pytest.raises(OSError, match='disk full'):
    imageio.write_png_atomic(tmp_path / 'out.png', _rgb(seed=2))
  monkeypatch.undo()
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out.png')), old)
  assert os.listdir(tmp_path) == ['out.png']


def test_list_images_sorted_case_insensitive(tmp_path):
  for name in ['b.PNG', 'a.jpeg', 'c.Tif', 'd.webp', 'e.BMP', 'notes.txt', '.hidden.png']:
    (tmp_path / name).write_bytes(b'x')
  (tmp_path / 'sub.png').mkdir()
  assert [p.name for p in imageio.list_images(tmp_path)] == [
      'a.jpeg', 'b.PNG', 'c.Tif', 'd.webp', 'e.BMP']
  with pytest.raises(NotADirectoryError):
    imageio.list_images(tmp_path / 'missing')
