"""Tests for big_vl.data.tokenizers (CLIP BPE and SentencePiece tokenizers).

The expected id lists were produced by open_clip's own `SimpleTokenizer`
(open_clip_torch 3.3.0) on the same strings.

open_clip parity at scale: `tests/data/clip_tokenizer_parity.npz` holds the
`parity_corpus()` strings (UTF-8 JSON, key "texts_json") and
`open_clip.tokenize(texts, context_length=77)` of them (key "ids", int32
[N, 77]), computed with open_clip_torch 3.3.0, torch 2.14.1, ftfy 6.3.1,
regex 2026.11.19. To regenerate it, in a virtualenv with open_clip_torch,
ftfy, regex, numpy and pytest (torch only for open_clip)::

  PYTHONPATH=. /path/to/venv/bin/python tests/test_tokenizers.py \
      --write-parity-fixture

`test_open_clip_parity_live` (marker `peer`) compares against open_clip
directly when it is importable.
"""

import importlib.util
import json
import os
import pickle
import random
import sys
import time

import numpy as np
import pytest

from big_vl import registry
from big_vl.data import tokenizers
from big_vl.data.tokenizers import ClipBpeTokenizer

HAS_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
PARITY_FIXTURE = os.path.join(os.path.dirname(__file__), "data",
                              "clip_tokenizer_parity.npz")

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


# ----------------------------------------------------------------------------
# open_clip parity corpus.

_WORDS = (
    "a photo of the cat dog car tree house man woman child red blue green "
    "small large old new running sitting on in at with near under over two "
    "three people street beach mountain sky water bird horse plate food pizza "
    "bicycle train bus table chair computer phone book flower garden snow "
    "night sunset city building bridge river boat airplane kitchen bathroom "
    "it's don't they're we've I'm you'll he'd can't won't isn't"
).split()
_SCRIPTS = (  # (lo, hi) code point ranges, inclusive.
    (0x00C0, 0x017F),  # Latin-1 supplement letters, Latin extended-A.
    (0x0391, 0x03C9),  # Greek.
    (0x0410, 0x044F),  # Cyrillic.
    (0x05D0, 0x05EA),  # Hebrew.
    (0x0621, 0x064A),  # Arabic.
    (0x0905, 0x0939),  # Devanagari.
    (0x0E01, 0x0E30),  # Thai.
    (0x3041, 0x3096),  # Hiragana.
    (0x30A1, 0x30FA),  # Katakana.
    (0x4E00, 0x9FFF),  # CJK ideographs.
    (0xAC00, 0xD7A3),  # Hangul syllables.
    (0xFF01, 0xFF5E),  # Fullwidth ASCII.
    (0x2000, 0x206F),  # General punctuation (incl. zero-width chars).
    (0x2190, 0x23FF),  # Arrows, math, technical.
    (0x0300, 0x036F),  # Combining diacritics.
)
_EMOJI = (
    "\U0001F600", "\U0001F602", "\U0001F60D", "\U0001F44D", "\U0001F44D\U0001F3FD",
    "\u2764\ufe0f", "\U0001F525", "\U0001F389", "\U0001F1FA\U0001F1F8",
    "\U0001F1EF\U0001F1F5", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "\U0001F3F3\ufe0f\u200d\U0001F308", "\u2615", "\U0001F436", "\U0001F431",
    "\U0001F697", "\u2600\ufe0f", "\U0001F9D1\u200d\U0001F4BB", "\u263A",
    "\U0001FAE0", "#\ufe0f\u20e3",
)
_ENTITIES = (
    "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&nbsp;", "&eacute;", "&copy;",
    "&#x1F600;", "&#8212;", "&amp;amp;", "&amp;lt;b&amp;gt;", "&hellip;",
    "&euro;", "&#233;", "&lt;br/&gt;", "&bogus;", "&", "&#;", "&#xZZ;",
)
_ACCENTED = ("café", "crème brûlée", "naïve", "façade", "Ångström", "señor",
             "Müller", "straße", "smørrebrød", "Dvořák", "São Paulo", "œuvre",
             "ÉCOLE", "İstanbul", "ﬁne", "Œdipe", "cafe\u0301")
_ODD = ("\t", "\n", "\r\n", "\x0c", "\x1b[31m", "\x00", "\x7f", "\u00ad",
        "\u200b", "\ufeff", "\u00a0", "\u3000", "<start_of_text>",
        "<end_of_text>", "Ã©", "â€™", "'s", "'S", "''", "...", "!!!", "--")


def _words(rng, n):
  out = []
  for _ in range(n):
    w = rng.choice(_WORDS)
    r = rng.random()
    if r < 0.1:
      w = w.upper()
    elif r < 0.2:
      w = w.capitalize()
    out.append(w)
  return " ".join(out)


def _script_run(rng, n):
  lo, hi = rng.choice(_SCRIPTS)
  return "".join(chr(rng.randint(lo, hi)) for _ in range(n))


def _random_codepoints(rng, n):
  chars = []
  while len(chars) < n:
    c = rng.randint(0x20, 0x2FFFF)
    if 0xD800 <= c <= 0xDFFF:  # Surrogates cannot be UTF-8 encoded.
      continue
    chars.append(chr(c))
  return "".join(chars)


def _piece(rng):
  kind = rng.randrange(9)
  if kind == 0:
    return _words(rng, rng.randint(1, 12))
  if kind == 1:
    return _script_run(rng, rng.randint(1, 12))
  if kind == 2:
    return "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 4)))
  if kind == 3:
    return rng.choice(_ENTITIES)
  if kind == 4:
    return rng.choice(_ACCENTED)
  if kind == 5:
    return rng.choice(_ODD)
  if kind == 6:
    return str(rng.choice([rng.randint(0, 10**9), rng.random() * 1000,
                           -rng.randint(0, 99)]))
  if kind == 7:
    return _random_codepoints(rng, rng.randint(1, 8))
  return "".join(rng.choice("!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}~")
                 for _ in range(rng.randint(1, 5)))


def parity_corpus(num=2400, seed=20261129):
  """Deterministic varied strings for the open_clip parity fixture.

  Args:
    num: number of strings.
    seed: seed of the `random.Random` that draws them.

  Returns:
    A list of `num` str: empty and whitespace-only strings, plain captions,
    mixes of scripts, emoji, HTML entities, accents, control characters,
    random code points, and long texts (up to ~3k characters).
  """
  rng = random.Random(seed)
  fixed = ["", " ", "\n\t ", "a", "A photo of a cat.", "&amp;", "\U0001F600",
           "<start_of_text>a<end_of_text>"]
  out = list(fixed)
  while len(out) < num:
    kind = rng.random()
    if kind < 0.03:
      text = rng.choice(["", " ", "  \t", "\n", "\u3000", "\u200b"])
    elif kind < 0.3:
      text = _words(rng, rng.randint(3, 20))
      if rng.random() < 0.5:
        text += rng.choice([".", "!", "?", "", " ", "..."])
    elif kind < 0.9:
      sep = rng.choice([" ", " ", " ", "", ", ", "\n"])
      text = sep.join(_piece(rng) for _ in range(rng.randint(1, 8)))
    elif kind < 0.96:  # Long: hundreds of words, beyond 77 tokens.
      sep = rng.choice([" ", ""])
      text = sep.join(_piece(rng) for _ in range(rng.randint(40, 150)))
    else:  # A very long single "word" or run.
      text = rng.choice(["a", "ab", "ha", "x\u0301", "\U0001F600", "é"]) * (
          rng.randint(100, 1500))
    out.append(text)
  return out


def _load_parity_fixture():
  data = np.load(PARITY_FIXTURE)
  texts = json.loads(bytes(data["texts_json"]).decode("utf-8"))
  return texts, data["ids"]


def _first_mismatches(ids, expected, texts, limit=5):
  bad = np.nonzero((ids != expected).any(axis=1))[0]
  return len(bad), [(int(i), texts[i][:80]) for i in bad[:limit]]


def test_parity_corpus_is_deterministic_and_varied():
  texts = parity_corpus()
  assert len(texts) >= 2000
  assert texts == parity_corpus()
  assert sum(1 for t in texts if not t.strip()) >= 20  # Empty / whitespace.
  assert sum(1 for t in texts if len(t) > 1000) >= 20  # Very long.
  assert sum(1 for t in texts if "&" in t) >= 100  # HTML entities.
  assert sum(1 for t in texts if not t.isascii()) >= 1000  # Unicode.
  stored, _ = _load_parity_fixture()
  assert stored == texts


def test_open_clip_parity_fixture():
  texts, expected = _load_parity_fixture()
  assert expected.shape == (len(texts), 77) and expected.dtype == np.int32
  tok = tokenizers.get("clip", max_len=77)
  num_bad, examples = _first_mismatches(tok(texts), expected, texts)
  assert num_bad == 0, f"{num_bad} rows differ from open_clip: {examples}"


@pytest.mark.peer
@pytest.mark.skipif(not HAS_OPEN_CLIP, reason="open_clip not installed")
def test_open_clip_parity_live():
  import open_clip  # pylint: disable=g-import-not-at-top
  texts = parity_corpus()
  expected = open_clip.tokenize(texts, context_length=77).numpy()
  num_bad, examples = _first_mismatches(
      tokenizers.get("clip", max_len=77)(texts), expected, texts)
  assert num_bad == 0, f"{num_bad} rows differ from open_clip: {examples}"
  short = open_clip.tokenize(texts[:200], context_length=16).numpy()
  np.testing.assert_array_equal(tokenizers.get("clip", max_len=16)(
      texts[:200]), short)


def _write_parity_fixture(path=PARITY_FIXTURE):
  """Computes open_clip's ids of `parity_corpus()` and saves the fixture."""
  import open_clip  # pylint: disable=g-import-not-at-top
  texts = parity_corpus()
  ids = open_clip.tokenize(texts, context_length=77).numpy().astype(np.int32)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  blob = json.dumps(texts, ensure_ascii=False).encode("utf-8")
  np.savez_compressed(path, texts_json=np.frombuffer(blob, np.uint8),
                      ids=ids)
  print(f"wrote {path}: {len(texts)} texts, {os.path.getsize(path)} bytes")


# ----------------------------------------------------------------------------
# `get` and the bound CLIP tokenizer.


def test_get_clip_is_open_clip_tokenize():
  tok = tokenizers.get("clip", max_len=77)
  out = tok(["A photo of a cat.", "a dog"])
  assert out.shape == (2, 77) and out.dtype == np.int32
  np.testing.assert_array_equal(out[:, :8], [
      [49406, 320, 1125, 539, 320, 2368, 269, 49407],
      [49406, 320, 1929, 49407, 0, 0, 0, 0]])
  assert tok("a dog").shape == (1, 77)
  assert tok("a dog", max_len=5).shape == (1, 5)
  assert tok.tokenize(["a dog"], 6).shape == (1, 6)
  assert tok.vocab_size == 49408 and tok.pad_id == 0 and tok.max_len == 77
  assert tok.decode(out[0]) == "a photo of a cat ."
  assert tok.encode("a dog") == [320, 1929]
  # Shares the cached ClipBpeTokenizer with the "clip_bpe" factory.
  assert tok.base is tokenizers.clip_bpe()
  assert tokenizers.get("clip_bpe", max_len=8).max_len == 8
  with pytest.raises(ValueError):
    tokenizers.get("clip", max_len=1)
  with pytest.raises(KeyError, match="sentencepiece"):
    tokenizers.get("bert")


def test_registry_clip_and_sentencepiece(monkeypatch, sp_model):
  monkeypatch.setattr(registry, "BUILTIN_MODULES", ("big_vl.data.tokenizers",))
  tok = registry.get("tokenizer", "clip")(max_len=16)
  np.testing.assert_array_equal(tok.tokenize("a dog", 5),
                                [[49406, 320, 1929, 49407, 0]])
  sp = registry.get("tokenizer", "sentencepiece")(model=sp_model, max_len=8)
  assert sp.tokenize(["a dog", "a cat"], 8).shape == (2, 8)
  assert {"clip", "clip_bpe", "sentencepiece"} <= set(
      registry.names("tokenizer"))


def test_clip_throughput_smoke():
  # Not a timing assertion (see bench/); just exercises a 10k batch once.
  rng = random.Random(0)
  words = "a photo of the big small red dog cat on in with car tree".split()
  texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
           for _ in range(10_000)]
  tok = tokenizers.get("clip", max_len=77)
  start = time.perf_counter()
  out = tok(texts)
  elapsed = time.perf_counter() - start
  assert out.shape == (10_000, 77)
  print(f"clip: {len(texts) / elapsed:.0f} captions/s")


# ----------------------------------------------------------------------------
# SentencePiece.

def _sp_sentences(num=400, seed=0):
  """`num` varied short English captions to train a tiny SentencePiece model."""
  rng = random.Random(seed)
  adjectives = ("red green blue black white small large young old happy "
                "wooden shiny striped fluffy tall empty busy quiet").split()
  nouns = ("dog cat horse bird car tree house boat person child woman man "
           "bicycle train street beach mountain river kitchen table pizza "
           "flower garden city bridge airplane phone book chair").split()
  verbs = ("running sleeping sitting eating jumping standing walking "
           "flying parked swimming playing waiting").split()
  places = ("on the grass", "in the snow", "near the water", "at night",
            "under a tree", "in a room", "on a street", "by the sea",
            "in the city", "next to a wall")
  out = []
  for _ in range(num):
    words = [rng.choice(["a photo of", "an image of", "there is", "a"]),
             rng.choice(adjectives), rng.choice(nouns), rng.choice(verbs),
             rng.choice(places)]
    out.append(" ".join(words) + rng.choice([".", "", "!"]))
  return out


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  """A 96-piece unigram model with T5's ids: pad 0, eos 1, unk 2, no bos."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  prefix = str(tmp_path_factory.mktemp("spm") / "tiny")
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(_sp_sentences()), model_prefix=prefix,
      vocab_size=96, model_type="unigram", character_coverage=1.0,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
      num_threads=1)
  return prefix + ".model"


@pytest.fixture(scope="module")
def sp_proc(sp_model):
  import sentencepiece  # pylint: disable=g-import-not-at-top
  return sentencepiece.SentencePieceProcessor(model_file=sp_model)


def test_sentencepiece_padding_and_sticky_eos(sp_model, sp_proc):
  tok = tokenizers.get("sentencepiece", model=sp_model, max_len=16)
  assert tok.vocab_size == 96 and tok.pad_id == 0 and tok.max_len == 16
  ids = sp_proc.encode("a photo of a red dog.")
  out = tok("a photo of a red dog.")
  assert out.shape == (1, 16) and out.dtype == np.int32
  np.testing.assert_array_equal(
      out[0], ids + [1] + [0] * (16 - len(ids) - 1))
  long = " ".join(["a red dog"] * 20)
  long_ids = sp_proc.encode(long)
  assert len(long_ids) > 16
  # Sticky EOS: cut to max_len - 1 ids, then EOS.
  np.testing.assert_array_equal(tok(long)[0], long_ids[:15] + [1])
  # Exactly fitting with the EOS: no padding, EOS last.
  fit = tokenizers.get("sentencepiece", model=sp_model,
                       max_len=len(ids) + 1)("a photo of a red dog.")
  np.testing.assert_array_equal(fit[0], ids + [1])
  assert tok.decode(out[0]) == "a photo of a red dog."
  assert tok.decode(tok(long)[0]) == sp_proc.decode(long_ids[:15])


def test_sentencepiece_eos_modes_and_pad(sp_model, sp_proc):
  long = " ".join(["a red dog"] * 20)
  long_ids = sp_proc.encode(long)
  short_ids = sp_proc.encode("a cat")
  no_eos = tokenizers.get("sentencepiece", model=sp_model, max_len=8,
                          add_eos=False)
  np.testing.assert_array_equal(no_eos(long)[0], long_ids[:8])
  np.testing.assert_array_equal(no_eos("a cat")[0],
                                short_ids + [0] * (8 - len(short_ids)))
  yes = tokenizers.get("sentencepiece", model=sp_model, max_len=8, eos="yes")
  np.testing.assert_array_equal(yes(long)[0], long_ids[:8])  # EOS cut off.
  # SigLIP style: pad with the EOS id (given as a piece or an id).
  for pad in (1, "</s>"):
    siglip = tokenizers.get("sentencepiece", model=sp_model, max_len=8,
                            pad_id=pad)
    np.testing.assert_array_equal(
        siglip("a cat")[0], short_ids + [1] * (8 - len(short_ids)))
    assert siglip.decode(siglip("a cat")[0]) == "a cat"
  with pytest.raises(ValueError):
    tokenizers.get("sentencepiece", model=sp_model, eos="maybe")
  with pytest.raises(ValueError):
    tokenizers.get("sentencepiece", model=sp_model, pad_id=96)
  with pytest.raises(ValueError):
    tokenizers.get("sentencepiece", model=sp_model, pad_id="<nope>")
  with pytest.raises(ValueError):
    tokenizers.get("sentencepiece", model=sp_model, add_bos=True)  # No BOS.
  with pytest.raises(ValueError, match="not found"):
    tokenizers.get("sentencepiece", model="/nonexistent/x.model")


def test_sentencepiece_lowercases_ascii_only(sp_model, sp_proc):
  tok = tokenizers.get("sentencepiece", model=sp_model, max_len=16)
  np.testing.assert_array_equal(tok("A Photo of a RED Dog."),
                                tok("a photo of a red dog."))
  # Like tf.strings.lower: non-ASCII letters keep their case.
  assert tok.encode("DOG É") == sp_proc.encode("dog É") + [1]
  keep = tokenizers.get("sentencepiece", model=sp_model, max_len=16,
                        lower=False)
  assert keep.encode("RED") == sp_proc.encode("RED") + [1]


def test_sentencepiece_batches_bytes_and_arrays(sp_model):
  tok = tokenizers.get("spm", model=sp_model, max_len=12)
  texts = ["a red dog", "", "a big blue cat", "a photo of a boat"]
  out = tok(texts)
  assert out.shape == (4, 12)
  np.testing.assert_array_equal(out[1], [1] + [0] * 11)  # Empty: just EOS.
  np.testing.assert_array_equal(tok([t.encode() for t in texts]), out)
  np.testing.assert_array_equal(tok(np.array(texts)), out)
  np.testing.assert_array_equal(tok(tuple(texts)), out)
  assert tok([]).shape == (0, 12)
  for i, text in enumerate(texts):
    np.testing.assert_array_equal(tok(text)[0], out[i])
  # Shared underlying tokenizer for equal options.
  assert tokenizers.get("sentencepiece", model=sp_model).base is tok.base


# ----------------------------------------------------------------------------
# WordPiece (BERT). Hand-checked ids on a tiny vocabulary and the
# sentence-transformers parity are in tests/test_convert_hf_bert.py.

_WP_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat",
             "##s", ",", "!", "cafe", "un", "##aff", "##able", ".", "a",
             "dog", "photo", "of", "big", "red", "small", "on", "in"]


@pytest.fixture(name="wp_dir")
def _wp_dir(tmp_path):
  with open(tmp_path / "vocab.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(_WP_VOCAB) + "\n")
  return tmp_path


def test_wordpiece_tokenizer_json_equals_vocab_txt(wp_dir, tmp_path_factory):
  # A tokenizer.json saved by the `tokenizers` library's own BERT builder,
  # with its padding / truncation settings on: ours must ignore them.
  # pylint: disable-next=g-import-not-at-top
  from tokenizers.implementations import BertWordPieceTokenizer
  hf = BertWordPieceTokenizer(str(wp_dir / "vocab.txt"), lowercase=True)
  hf.enable_truncation(6)
  hf.enable_padding(length=6)
  json_dir = tmp_path_factory.mktemp("json")
  hf.save(str(json_dir / "tokenizer.json"))
  texts = ["The cats, the big red cats on a photo!", "Café UNAFFABLE",
           "zebra", "", "a\tdog\n"]
  from_json = tokenizers.get("wordpiece", path=str(json_dir), max_len=10)
  from_vocab = tokenizers.get("wordpiece", path=str(wp_dir), max_len=10)
  assert from_json.base is not from_vocab.base
  np.testing.assert_array_equal(from_json(texts), from_vocab(texts))
  out = from_json(texts)
  assert out.shape == (5, 10) and out.dtype == np.int32
  np.testing.assert_array_equal(out[0], [2, 5, 6, 7, 8, 5, 19, 20, 6, 3])
  np.testing.assert_array_equal(out[1], [2, 10, 11, 12, 13, 3, 0, 0, 0, 0])
  # A file path works as well as its folder.
  by_file = tokenizers.get("wordpiece",
                           path=str(json_dir / "tokenizer.json"), max_len=10)
  np.testing.assert_array_equal(by_file(texts), out)
  with pytest.raises(ValueError, match="vocab.txt only"):
    tokenizers.WordPieceTokenizer(json_dir, lower=False)


def test_wordpiece_batches_bytes_arrays_and_cache(wp_dir):
  tok = tokenizers.get("wordpiece", path=str(wp_dir), max_len=7)
  texts = ["a dog", "the big red cat", "", "a photo of a small dog in a cat"]
  out = tok(texts)
  np.testing.assert_array_equal(out[3], [2, 15, 17, 18, 15, 21, 3])
  np.testing.assert_array_equal(tok([t.encode() for t in texts]), out)
  np.testing.assert_array_equal(tok(np.array(texts)), out)
  for i, text in enumerate(texts):
    np.testing.assert_array_equal(tok(text)[0], out[i])
  assert tok([]).shape == (0, 7)
  assert tok(texts, max_len=12).shape == (4, 12)
  assert tokenizers.get("wordpiece", path=str(wp_dir)).base is tok.base
  copy = pickle.loads(pickle.dumps(tok.base))
  np.testing.assert_array_equal(copy.tokenize(texts, 7), out)
  with pytest.raises(ValueError, match="max_len"):
    tok(texts, max_len=1)
  with pytest.raises(ValueError, match="max_len"):
    tokenizers.get("wordpiece", path=str(wp_dir), max_len=1)
  with pytest.raises(ValueError, match="not found"):
    tokenizers.WordPieceTokenizer(wp_dir / "nowhere")
  os.mkdir(wp_dir / "empty")
  with pytest.raises(ValueError, match="No tokenizer.json or vocab.txt"):
    tokenizers.WordPieceTokenizer(wp_dir / "empty")


def test_wordpiece_default_max_len(wp_dir):
  assert tokenizers.get("wordpiece", path=str(wp_dir)).max_len == 512
  with open(wp_dir / "tokenizer_config.json", "w", encoding="utf-8") as f:
    json.dump({"do_lower_case": True, "model_max_length": 128}, f)
  assert tokenizers.get("wordpiece", path=str(wp_dir)).max_len == 128
  with open(wp_dir / "sentence_bert_config.json", "w", encoding="utf-8") as f:
    json.dump({"max_seq_length": 64, "do_lower_case": False}, f)
  assert tokenizers.get("wordpiece", path=str(wp_dir)).max_len == 64


def test_registry_and_pp_tokenize_wordpiece(monkeypatch, wp_dir, sp_model):
  from big_vl.data import pp  # pylint: disable=g-import-not-at-top
  factory = registry.get("tokenizer", "wordpiece")
  assert factory is tokenizers.wordpiece
  fn = pp.get_preprocess_fn(
      f"tokenize(max_len=6, tokenizer='wordpiece', path={str(wp_dir)!r})")
  np.testing.assert_array_equal(fn({"text": b"The cats!"})["text"],
                                [2, 5, 6, 7, 9, 3])
  np.testing.assert_array_equal(
      fn({"text": ["a dog", "the cat"]})["text"],
      [[2, 15, 16, 3, 0, 0], [2, 5, 6, 3, 0, 0]])
  # Existing forms are unchanged; other factories take their kwargs too.
  fn = pp.get_preprocess_fn("tokenize(max_len=5)")
  np.testing.assert_array_equal(fn({"text": "a dog"})["text"],
                                [49406, 320, 1929, 49407, 0])
  fn = pp.get_preprocess_fn(
      f"tokenize(8, tokenizer='sentencepiece', model={sp_model!r})")
  np.testing.assert_array_equal(
      fn({"text": "a dog"})["text"],
      tokenizers.get("sentencepiece", model=sp_model)("a dog", 8)[0])
  monkeypatch.setattr(registry, "BUILTIN_MODULES", ("big_vl.data.tokenizers",))
  assert "wordpiece" in registry.names("tokenizer")


def test_wordpiece_throughput_smoke(wp_dir):
  # Not a timing assertion; one batched call over 10k captions.
  rng = random.Random(0)
  words = _WP_VOCAB[5:] + ["zebra", "Café", "DOG!"]
  texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
           for _ in range(10_000)]
  tok = tokenizers.get("wordpiece", path=str(wp_dir), max_len=32)
  start = time.perf_counter()
  out = tok(texts)
  elapsed = time.perf_counter() - start
  assert out.shape == (10_000, 32)
  print(f"wordpiece: {len(texts) / elapsed:.0f} captions/s")


if __name__ == "__main__":
  if "--write-parity-fixture" in sys.argv:
    _write_parity_fixture()


def test_from_spec_takes_a_name_or_a_dict_with_arguments():
  assert tokenizers.from_spec("clip_bpe") is registry.get(
      "tokenizer", "clip_bpe")()
  tok = tokenizers.from_spec({"name": "clip", "max_len": 9})
  assert tok("a cat").shape == (1, 9)
  import ml_collections  # pylint: disable=g-import-not-at-top
  tok = tokenizers.from_spec(ml_collections.ConfigDict(
      {"name": "clip", "max_len": 5}))
  assert tok.max_len == 5
  with pytest.raises(ValueError, match="names no tokenizer"):
    tokenizers.from_spec({"max_len": 9})
  with pytest.raises(ValueError, match="--tokenizer_model"):
    tokenizers.from_spec({"name": "sentencepiece", "model": None})
  with pytest.raises(KeyError, match="clip_bpe"):
    tokenizers.from_spec("clip_bep")
