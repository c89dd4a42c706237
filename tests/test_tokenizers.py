"""Tests for big_vl.data.tokenizers (CLIP BPE tokenizer).

The expected id lists were produced by open_clip's own `SimpleTokenizer`
(open_clip_torch 3.3.0) on the same strings.
"""

import importlib.util

import numpy as np
import pytest

from big_vl import registry
from big_vl.data import tokenizers
from big_vl.data.tokenizers import ClipBpeTokenizer

HAS_FTFY = importlib.util.find_spec("ftfy") is not None

# (text, open_clip SimpleTokenizer.encode(text)); independent of ftfy.
OPEN_CLIP_PAIRS = [
    ("A photo of a cat.", [320, 1125, 539, 320, 2368, 269]),
    ("a photo of a dog", [320, 1125, 539, 320, 1929]),
    ("It's a dog's life!", [585, 568, 320, 1929, 568, 970, 256]),
    ("they're here, we've gone, I'm sure, you'll see, he'd go",
     [889, 982, 763, 267, 649, 1200, 3601, 267, 328, 880, 1650, 267, 592,
      1342, 862, 267, 797, 1896, 861]),
    ("$100.00 or 3.14159 or 1,000,000",
     [259, 272, 271, 271, 269, 271, 271, 541, 274, 269, 272, 275, 272, 276,
      280, 541, 272, 267, 271, 271, 271, 267, 271, 271, 271]),
    ("  Hello,\n\tWORLD!!!  ", [3306, 267, 1002, 995]),
    ("Café crème brûlée", [15304, 1075, 12138, 614, 711, 127, 119, 75, 13489]),
    ("Привет, мир!",
     [26302, 16370, 29503, 110, 22176, 141, 480, 267, 38018, 16701, 141, 478,
      256]),
    ("\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family",
     [25023, 26304, 48938, 4244, 964, 355, 1315]),
    ("I \u2764\ufe0f NY", [328, 1752, 1350]),
    ("&lt;b&gt;bold&lt;/b&gt;", [283, 321, 285, 8911, 34308, 321, 285]),
    ("fish &amp; chips", [2759, 261, 8855]),
    ("supercalifragilisticexpialidocious",
     [1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466]),
    ("<start_of_text>", [49406]),
]

# Pairs whose ids depend on ftfy's fixes (NFC, mojibake, width, escapes).
OPEN_CLIP_FTFY_PAIRS = [
    ("你好，世界！",
     [47466, 254, 29290, 377, 267, 19759, 244, 163, 243, 490, 256]),
    ("Cafe\u0301 (decomposed)", [15304, 263, 561, 19916, 264]),
    ("caf\u00c3\u00a9", [15304]),
    ("\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33",
     [7464, 31575]),
    ("esc \x1b[31mred\x1b[0m", [28420, 736]),
    ("&amp;amp;amp;", [261]),
]


@pytest.fixture(scope="module")
def tok():
  return ClipBpeTokenizer()


def test_vocab_constants(tok):
  assert tok.vocab_size == 49408
  assert tok.sot_id == 49406
  assert tok.eot_id == 49407
  assert tok.pad_id == 0


@pytest.mark.parametrize("text,expected", OPEN_CLIP_PAIRS)
def test_encode_matches_open_clip(tok, text, expected):
  assert tok.encode(text) == expected
  # Second call is served from the word cache and must agree.
  assert tok.encode(text) == expected


@pytest.mark.skipif(not HAS_FTFY, reason="ftfy not installed")
@pytest.mark.parametrize("text,expected", OPEN_CLIP_FTFY_PAIRS)
def test_encode_matches_open_clip_with_ftfy(tok, text, expected):
  assert tok.encode(text) == expected


def test_encode_empty_and_bytes(tok):
  assert tok.encode("") == []
  assert tok.encode(" \t\n ") == []
  assert tok.encode("a photo of a dog".encode("utf-8")) == [320, 1125, 539,
                                                             320, 1929]


def test_clean_text():
  assert tokenizers.clean_text("  Fish &amp;amp; CHIPS\n\t ok ") == (
      "fish & chips ok")


def test_tokenize_pads_with_zero(tok):
  out = tok.tokenize(["a dog", "", "A photo of a cat."], max_len=6)
  # open_clip: tokenizer(texts, context_length=6).
  np.testing.assert_array_equal(out, [
      [49406, 320, 1929, 49407, 0, 0],
      [49406, 49407, 0, 0, 0, 0],
      [49406, 320, 1125, 539, 320, 49407],
  ])


def test_tokenize_truncates_keeping_eot_last(tok):
  text = "A photo of a " + "very " * 100 + "big dog."
  assert len(tok.encode(text)) == 107
  out = tok.tokenize(text, max_len=10)
  np.testing.assert_array_equal(
      out, [[49406, 320, 1125, 539, 320, 1070, 1070, 1070, 1070, 49407]])
  out77 = tok.tokenize(text, max_len=77)
  assert out77[0, 0] == tok.sot_id
  assert out77[0, -1] == tok.eot_id
  assert (out77[0, 1:-1] == tok.encode(text)[:75]).all()
  # Exactly fitting: no truncation, eot last, no padding.
  fit = tok.tokenize("a photo of a dog", max_len=7)
  np.testing.assert_array_equal(fit, [[49406, 320, 1125, 539, 320, 1929,
                                       49407]])


def test_tokenize_batch_shape_and_dtype(tok):
  texts = ["a dog", "a cat", "x" * 300, "你好", ""]
  out = tok.tokenize(texts, max_len=77)
  assert out.shape == (5, 77)
  assert out.dtype == np.int32
  assert (out[:, 0] == tok.sot_id).all()
  assert ((out == tok.eot_id).sum(axis=1) == 1).all()
  single = tok.tokenize("a dog", max_len=16)
  assert single.shape == (1, 16)
  assert single.dtype == np.int32
  np.testing.assert_array_equal(single[0, :4], [49406, 320, 1929, 49407])
  assert (single[0, 4:] == 0).all()
  # A tuple and a numpy array of strings work like a list.
  np.testing.assert_array_equal(tok.tokenize(tuple(texts), 77), out)
  np.testing.assert_array_equal(tok.tokenize(np.array(texts), 77), out)
  assert tok.tokenize([], 8).shape == (0, 8)


def test_tokenize_rejects_tiny_max_len(tok):
  with pytest.raises(ValueError):
    tok.tokenize("a dog", max_len=1)


@pytest.mark.parametrize("text", [
    "a photo of a dog",
    "the quick brown fox jumps over the lazy dog",
    "café crème brûlée",
    "привет мир",
    "你好",
    "supercalifragilisticexpialidocious aaaaaaaaaaaaaaaaaaaaaaaa",
    "\U0001F600 smile",
])
def test_decode_round_trip(tok, text):
  assert tokenizers.clean_text(text) == text
  assert tok.decode(tok.encode(text)) == text


def test_decode_separates_words_and_drops_specials(tok):
  assert tok.decode(tok.encode("It's a dog's life!")) == "it 's a dog 's life !"
  assert tok.decode(tok.encode("  Hello,\n\tWORLD!!!  ")) == (
      "hello , world !!!")
  row = tok.tokenize("A photo of a cat.", max_len=12)[0]
  assert tok.decode(row) == "a photo of a cat ."
  assert tok.decode([]) == ""
  with pytest.raises(ValueError):
    tok.decode([49408])


def test_custom_vocab_path_matches_default(tok):
  path = tokenizers._default_vocab_file()
  other = ClipBpeTokenizer(str(path))
  assert other.encode("It's a dog's life!") == [585, 568, 320, 1929, 568, 970,
                                                256]


def test_word_cache_is_per_instance_and_bounded():
  a = ClipBpeTokenizer()
  a.max_cache_size = 3
  assert a.encode("one two three four five") == [637, 1237, 2097, 2721, 3127]
  assert len(a._cache) <= 3
  b = ClipBpeTokenizer()
  assert not b._cache


def test_registry_lookup(monkeypatch):
  # Import only this module on lookup, so the test does not depend on the
  # other built-in component modules.
  monkeypatch.setattr(registry, "BUILTIN_MODULES", ("big_vl.data.tokenizers",))
  factory = registry.get("tokenizer", "clip_bpe")
  assert factory is tokenizers.clip_bpe
  tok = factory()
  assert isinstance(tok, ClipBpeTokenizer)
  assert tok.encode("A photo of a cat.") == [320, 1125, 539, 320, 2368, 269]
  # Cached per vocab_path: the default spelled any way gives one instance.
  assert factory() is tok
  assert factory(None) is tok
  assert factory(vocab_path=None) is tok
  assert "clip_bpe" in registry.names("tokenizer")


def test_registry_lookup_with_all_builtins():
  # The plain lookup path, importing every built-in component module.
  tok = registry.get("tokenizer", "clip_bpe")()
  assert isinstance(tok, ClipBpeTokenizer)
  np.testing.assert_array_equal(tok.tokenize("a dog", max_len=5),
                                [[49406, 320, 1929, 49407, 0]])
