"""Text tokenizers: CLIP's BPE, SentencePiece (SigLIP) and BERT's WordPiece.

Public entry point::

  from big_vl.data import tokenizers
  tok = tokenizers.get("clip", max_len=77)          # open_clip.tokenize ids
  tok(["A photo of a cat.", "a dog"])               # int32 [2, 77]
  tok = tokenizers.get("sentencepiece", model="/path/spm.model", max_len=16)
  tok("a photo of a cat")                           # int32 [1, 16]
  tok = tokenizers.get("wordpiece", path="/path/all-MiniLM-L6-v2", max_len=64)
  tok("a photo of a cat")                           # int32 [1, 64]

`get(name, max_len=..., **kw)` returns a `Tokenizer`: a callable mapping one
text or a list of texts (str or UTF-8 bytes) to an int32 array [N, max_len],
with `vocab_size`, `pad_id`, `max_len`, `encode`, `decode` and
`tokenize(texts, max_len=None)`. Names: "clip" (alias "clip_bpe"),
"sentencepiece" (alias "spm") and "wordpiece". The same
factories are registered in the registry:
`registry.get("tokenizer", "clip")(**kw).tokenize(texts, max_len)`,
`registry.get("tokenizer", "sentencepiece")(model=PATH, ...)` and
`registry.get("tokenizer", "wordpiece")(path=FOLDER, ...)`; the older
`registry.get("tokenizer", "clip_bpe")()` still returns the shared
`ClipBpeTokenizer` itself.

CLIP
----

CLIP's byte-level BPE text tokenizer (OpenAI CLIP / open_clip compatible).

`ClipBpeTokenizer` reproduces the ids of OpenAI CLIP's and open_clip's
`SimpleTokenizer` (49408 ids: 256 byte symbols, their 256 end-of-word forms,
48894 merges, then `<start_of_text>` = 49406 and `<end_of_text>` = 49407), with
the merge list vendored in `big_vl/data/assets/bpe_simple_vocab_16e6.txt.gz`
(MIT, see `assets/LICENSE-clip-bpe.txt`).

Text goes through CLIP's cleaning (`ftfy.fix_text`: ftfy is a required
dependency, as in open_clip, since ids differ without it; HTML-unescaping twice, whitespace collapsing, lower-casing), is split into
words by CLIP's pre-tokenisation regex, each word's UTF-8 bytes are mapped to
printable unicode symbols and merged pairwise by merge rank, the last symbol
carrying the `</w>` end-of-word marker. As in open_clip, the literal strings
`<start_of_text>` and `<end_of_text>` in a text encode to the special ids.

Example::

  tok = ClipBpeTokenizer()  # or registry.get("tokenizer", "clip_bpe")()
  tok.encode("A photo of a cat.")
  # [320, 1125, 539, 320, 2368, 269]
  tok.decode([320, 1125, 539, 320, 2368, 269])
  # 'a photo of a cat .'
  tok.tokenize(["A photo of a cat.", "a dog"], max_len=8)
  # array([[49406,   320,  1125,   539,   320,  2368,   269, 49407],
  #        [49406,   320,  1929, 49407,     0,     0,     0,     0]],
  #       dtype=int32)                               # shape [2, 8]
  tok.tokenize("a dog", max_len=77).shape
  # (1, 77)

Speed: words are cached per instance (raw word -> ids), and plain printable
ASCII text without `&` skips ftfy (which would not change its cleaned form).
Measured single-threaded on a shared 2-core dev VM (Python 3.11), after one
warm-up pass over the data, `tokenize(batch_of_256, 77)` on 50k random 8-16
word English captions: ~80k captions/s (~12 us each); with one accented
character per caption (so every caption goes through ftfy): ~24k captions/s.
Cold cache (fresh instance): ~40k captions/s.
Re-measured for `get("clip", max_len=77)` on one call over 10k captions of
8-16 words drawn from ~20k different vocabulary words (2-core VM): 0.24 s
cold (~41k captions/s), 0.08 s warm (~128k captions/s); the 2,400-string
unicode/emoji/HTML parity corpus (long texts included): ~7k strings/s cold,
~12k/s warm. A 10k-caption batch therefore costs well under a second per
pass; input pipelines tokenize per example in worker processes anyway.

Parity: `tok(texts)` equals `open_clip.tokenize(texts, context_length=77)`
on 2,400 varied strings (tests/data/clip_tokenizer_parity.npz, plus a live
comparison when open_clip is installed): 0 mismatching rows.

SentencePiece
-------------

`SentencePieceTokenizer` loads a SentencePiece `.model` (e.g. the T5 `c4_en`
/ `mc4` vocabularies of SigLIP) with the `sentencepiece` package and builds
rows as big_vision's `tokenize` pp op: ASCII lower-casing by default (as
big_vision's `lower=True`), the model's ids, an EOS appended that is kept as
the last id when a row is cut ("sticky", the default; "yes" cuts it, "none"
omits it), padding with `pad_id` (0; SigLIP's released models use 1, their
EOS id: pass `pad_id=1`). No BOS unless `add_bos=True`.

WordPiece
---------

`WordPieceTokenizer` is BERT's tokenizer (MiniLM, sentence-transformers
models) through the HF `tokenizers` library: a model folder's
`tokenizer.json`, or BERT's pipeline rebuilt from `vocab.txt` and
`tokenizer_config.json` (`do_lower_case`). Rows are "[CLS] ... [SEP]" padded
with [PAD] (0) and cut keeping [SEP] last, the ids `transformers` and
sentence-transformers give (tested against all-MiniLM-L6-v2's tokenizer in
tests/test_convert_hf_bert.py). A batch is encoded in one `encode_batch`
call.

Length: three tokenizer families (CLIP BPE, SentencePiece, WordPiece), each
with its own text cleaning, behind the one `Tokenizer` padding/truncation
contract defined here."""

import functools
import gzip
import html
import importlib.resources
import json
import os
import re as _re
from typing import Iterable, Sequence, Union

import numpy as np
import regex

from big_vl import registry

try:  # Required: CLIP cleans text with ftfy (open_clip does too).
  import ftfy as _ftfy
except ImportError as e:  # pragma: no cover - exercised only without ftfy.
  raise ImportError(
      "big_vl.data.tokenizers needs ftfy (pinned in requirements.txt: pip "
      "install -r requirements.txt): CLIP's text cleaning runs ftfy.fix_text, "
      "and without it token ids differ from open_clip's.") from e

VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48894
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
_EOW = "</w>"

_DEFAULT_VOCAB = "bpe_simple_vocab_16e6.txt.gz"

# CLIP's pre-tokenisation: special tokens, English contractions, runs of
# letters, single digits, runs of anything else that is not whitespace.
_WORD_PATTERN = (
    f"{SOT_TOKEN}|{EOT_TOKEN}"
    r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")

# ASCII characters that ftfy.fix_text would change (HTML entities, terminal
# escapes, control characters other than \t \n \x0c \r). ASCII text without
# them comes back from ftfy unchanged up to line-break style (\r\n -> \n),
# which whitespace collapsing erases, so calling ftfy can be skipped.
_FTFY_SENSITIVE_ASCII = _re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f&]")

TextLike = Union[str, bytes]


def _bytes_to_symbols():
  """Byte value -> printable unicode symbol, in CLIP's vocabulary order.

  Printable latin-1 bytes stand for themselves; the other 68 bytes (controls,
  space, soft hyphen, ...) get the code points 256, 257, ... in byte order.
  The insertion order of the result is the order of ids 0..255.
  """
  printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
  table = {b: chr(b) for b in printable}
  others = [b for b in range(256) if b not in table]
  for n, b in enumerate(others):
    table[b] = chr(256 + n)
  return table


def clean_text(text: str) -> str:
  """CLIP's text cleaning, as applied by `ClipBpeTokenizer.encode`.

  Args:
    text: raw text.

  Returns:
    `text` fixed by ftfy, HTML-unescaped twice, with runs of
    whitespace collapsed to one space, stripped and lower-cased.
  """
  if not (text.isascii() and _FTFY_SENSITIVE_ASCII.search(text) is None):
    text = _ftfy.fix_text(text)
  text = html.unescape(html.unescape(text))
  return " ".join(text.split()).lower()


def _default_vocab_file():
  return importlib.resources.files("big_vl.data").joinpath(
      "assets", _DEFAULT_VOCAB)


def _read_merges(vocab_path):
  """Reads the BPE merge list (pairs of symbols, best rank first)."""
  if vocab_path is None:
    with _default_vocab_file().open("rb") as f:
      data = gzip.GzipFile(fileobj=f).read()
  else:
    with gzip.open(os.fspath(vocab_path), "rb") as f:
      data = f.read()
  # Line 0 is a version header; CLIP uses the first NUM_MERGES merges after it.
  lines = data.decode("utf-8").split("\n")[1:1 + NUM_MERGES]
  merges = [tuple(line.split()) for line in lines]
  if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
    raise ValueError(
        f"{vocab_path or _DEFAULT_VOCAB}: expected {NUM_MERGES} merge lines of "
        f"two symbols after the header, got {len(merges)}.")
  return merges


class ClipBpeTokenizer:
  """CLIP's BPE tokenizer: text <-> ids, and fixed-length id batches.

  Attributes:
    vocab_size: number of ids, 49408.
    sot_id: id of `<start_of_text>`, 49406.
    eot_id: id of `<end_of_text>`, 49407.
    pad_id: id used to pad `tokenize` rows, 0.
    max_cache_size: the word cache is emptied when it reaches this many
      entries, bounding its memory on open-vocabulary streams.
  """

  pad_id = 0
  max_cache_size = 1 << 20

  def __init__(self, vocab_path=None):
    """Builds the vocabulary.

    Args:
      vocab_path: path of a gzipped CLIP merge list; None (default) uses the
        vendored `bpe_simple_vocab_16e6.txt.gz`.
    """
    byte_table = _bytes_to_symbols()
    self._byte_trans = str.maketrans(
        {chr(b): sym for b, sym in byte_table.items()})
    symbol_to_byte = {sym: b for b, sym in byte_table.items()}

    merges = _read_merges(vocab_path)
    symbols = list(byte_table.values())
    vocab = symbols + [s + _EOW for s in symbols]
    vocab += ["".join(pair) for pair in merges]
    vocab += [SOT_TOKEN, EOT_TOKEN]
    self._encoder = {token: i for i, token in enumerate(vocab)}
    self._ranks = {pair: rank for rank, pair in enumerate(merges)}

    self.vocab_size = len(vocab)
    self.sot_id = self._encoder[SOT_TOKEN]
    self.eot_id = self._encoder[EOT_TOKEN]
    self._special = {SOT_TOKEN: (self.sot_id,), EOT_TOKEN: (self.eot_id,)}
    self._special_ids = frozenset((self.sot_id, self.eot_id))

    # id -> UTF-8 bytes it stands for; end-of-word tokens end with a space.
    id_bytes = []
    for token in vocab:
      if token in self._special:
        id_bytes.append(b"")
        continue
      eow = token.endswith(_EOW)
      body = token[:-len(_EOW)] if eow else token
      id_bytes.append(
          bytes(symbol_to_byte[c] for c in body) + (b" " if eow else b""))
    self._id_bytes = id_bytes

    self._findall = regex.compile(_WORD_PATTERN, regex.IGNORECASE).findall
    self._cache = {}

  def _bpe(self, word: str) -> tuple:
    """Ids of one pre-tokenised word (cache miss path)."""
    special = self._special.get(word)
    if special is not None:
      return special
    mapped = word.encode("utf-8").decode("latin-1").translate(self._byte_trans)
    parts = list(mapped[:-1])
    parts.append(mapped[-1] + _EOW)
    ranks = self._ranks
    while len(parts) > 1:
      # Lowest-ranked adjacent pair present in the merge list.
      best, best_rank = None, NUM_MERGES
      for pair in zip(parts, parts[1:]):
        rank = ranks.get(pair, NUM_MERGES)
        if rank < best_rank:
          best, best_rank = pair, rank
      if best is None:
        break
      left, right = best
      merged = left + right
      # Merge every occurrence, scanning left to right without overlaps.
      out = []
      i, n = 0, len(parts)
      while i < n:
        if i + 1 < n and parts[i] == left and parts[i + 1] == right:
          out.append(merged)
          i += 2
        else:
          out.append(parts[i])
          i += 1
      parts = out
    encoder = self._encoder
    return tuple(encoder[p] for p in parts)

  def encode(self, text: TextLike) -> list:
    """Encodes one text into BPE ids, without start/end tokens.

    Args:
      text: a str (bytes are decoded as UTF-8).

    Returns:
      A list of int ids in [0, 49406), possibly empty; the literal strings
      `<start_of_text>`/`<end_of_text>` give the special ids, as in open_clip.
    """
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    cache = self._cache
    ids = []
    for word in self._findall(clean_text(text)):
      word_ids = cache.get(word)
      if word_ids is None:
        word_ids = self._bpe(word)
        if len(cache) >= self.max_cache_size:
          cache.clear()
        cache[word] = word_ids
      ids.extend(word_ids)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Inverse of `encode`, also accepting rows of `tokenize`.

    Args:
      ids: ids (list, tuple or 1-D integer array). Start/end tokens are
        dropped, and so is trailing padding (`pad_id` after the last non-pad
        id; `encode` output never ends with id 0, so this is unambiguous).

    Returns:
      The cleaned text with its pre-tokenised words separated by single spaces,
      e.g. "it's a dog." -> "it 's a dog .". Invalid UTF-8 byte sequences (from
      arbitrary id sequences) become U+FFFD.
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    end = len(ids)
    while end and ids[end - 1] == self.pad_id:
      end -= 1
    id_bytes = self._id_bytes
    chunks = []
    for i in ids[:end]:
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"Token id {i} outside [0, {self.vocab_size}).")
      chunks.append(id_bytes[i])
    return b"".join(chunks).decode("utf-8", errors="replace").rstrip(" ")

  def tokenize(self, texts: Union[TextLike, Sequence[TextLike]],
               max_len: int) -> np.ndarray:
    """Encodes texts into a fixed-length batch of ids.

    Args:
      texts: one text or a sequence of texts (str, or UTF-8 bytes).
      max_len: row length (77 for CLIP models); at least 2.

    Returns:
      int32 array [N, max_len] (N = 1 for a single text): each row is
      `[sot_id] + encode(text) + [eot_id]` padded with `pad_id`; a row that
      would be longer is cut to `max_len` ids and its last id set to `eot_id`.
    """
    if max_len < 2:
      raise ValueError(
          f"max_len must be >= 2 (room for sot and eot), got {max_len}")
    if isinstance(texts, (str, bytes)):
      texts = [texts]
    texts = list(texts)
    out = np.zeros((len(texts), max_len), np.int32)
    sot, eot = self.sot_id, self.eot_id
    for row, text in enumerate(texts):
      ids = self.encode(text)
      del ids[max_len - 2:]
      ids.insert(0, sot)
      ids.append(eot)
      out[row, :len(ids)] = ids
    return out


@functools.lru_cache(maxsize=None)
def _cached_tokenizer(vocab_path):
  return ClipBpeTokenizer(vocab_path)


@registry.register("tokenizer", "clip_bpe")
def clip_bpe(vocab_path=None) -> ClipBpeTokenizer:
  """Registry factory: one shared `ClipBpeTokenizer` per vocabulary file.

  Args:
    vocab_path: gzipped CLIP merge list; None for the vendored vocabulary.

  Returns:
    A cached `ClipBpeTokenizer` (the same object for equal paths, so input
    pipelines read the vocabulary once and share the word cache).
  """
  if vocab_path is not None:
    vocab_path = os.path.abspath(os.fspath(vocab_path))
  return _cached_tokenizer(vocab_path)


# ----------------------------------------------------------------------------
# SentencePiece (SigLIP / big_vision style).

_EOS_MODES = ("none", "yes", "sticky")
# ASCII-only lower-casing, as TensorFlow's `tf.strings.lower` (no encoding).
_ASCII_LOWER = str.maketrans(
    {chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)})


def _ascii_lower(text: str) -> str:
  return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _as_text_list(texts):
  """One text or a sequence of texts -> list of str."""
  if isinstance(texts, (str, bytes, np.str_, np.bytes_)):
    texts = [texts]
  return [t.decode("utf-8") if isinstance(t, (bytes, np.bytes_)) else str(t)
          for t in texts]


class SentencePieceTokenizer:
  """A SentencePiece model with big_vision's `tokenize` op semantics.

  Rows are built as big_vision's `pp/ops_text.py:get_pp_tokenize` does for
  SigLIP (`tokenize(max_len, model, eos="sticky", pad_value=...)`), without
  TensorFlow:

  1. the text is lower-cased if `lower` (default True, as in big_vision;
     like `tf.strings.lower`, only ASCII letters A-Z are lower-cased);
  2. it is encoded with the SentencePiece model (no BOS unless `add_bos`);
  3. with `eos` "yes" or "sticky" the model's EOS id is appended;
  4. the ids are padded with `pad_id` to `max_len`, or cut to `max_len`; with
     `eos="sticky"` a cut row keeps the EOS as its last id, with "yes" it is
     cut off like any other id.

  For max_len=3, id("</s>")=1, id("a")=2 and pad_id=0: "a" -> [2, 1, 0],
  "aaa" -> [2, 2, 1] (sticky) or [2, 2, 2] (yes / none). SigLIP's released
  models use eos="sticky" with pad_id=1 (the EOS id of their T5 vocabularies),
  so padding and EOS coincide and the last position holds an EOS.

  Attributes:
    vocab_size: number of pieces of the model.
    eos_id, bos_id, unk_id: the model's special ids (-1 when absent).
    pad_id: the id rows are padded with.
  """

  def __init__(self, model, *, eos="sticky", pad_id=0, lower=True,
               add_bos=False):
    """Loads the model.

    Args:
      model: path of a SentencePiece `.model` file (a serialized proto), or
        its bytes.
      eos: "none", "yes" or "sticky" (see the class docstring).
      pad_id: padding id; a str is looked up as a piece (e.g. "<pad>").
      lower: lower-case ASCII letters before encoding.
      add_bos: prepend the model's BOS id (the model must have one).

    Raises:
      ValueError: unknown `eos`, an EOS/BOS requested from a model without
        one, or a `pad_id` outside the vocabulary.
    """
    import sentencepiece  # pylint: disable=g-import-not-at-top
    if eos not in _EOS_MODES:
      raise ValueError(f"eos must be one of {_EOS_MODES}, got {eos!r}")
    if isinstance(model, (bytes, bytearray)):
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=bytes(model))
    else:
      path = os.fspath(model)
      if not os.path.exists(path):
        raise ValueError(f"SentencePiece model file not found: {path!r}")
      self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    self.bos_id = self._sp.bos_id()
    self.unk_id = self._sp.unk_id()
    if eos != "none" and self.eos_id < 0:
      raise ValueError(f"eos={eos!r} but the model has no EOS piece.")
    if add_bos and self.bos_id < 0:
      raise ValueError("add_bos=True but the model has no BOS piece.")
    if isinstance(pad_id, str):
      piece = pad_id
      pad_id = self._sp.piece_to_id(piece)
      if pad_id == self.unk_id and piece != self._sp.id_to_piece(self.unk_id):
        raise ValueError(f"pad_id piece {piece!r} is not in the vocabulary.")
    if not 0 <= int(pad_id) < self.vocab_size:
      raise ValueError(
          f"pad_id {pad_id} outside the vocabulary [0, {self.vocab_size}).")
    self.pad_id = int(pad_id)
    self.eos = eos
    self.lower = lower
    self.add_bos = add_bos

  def encode(self, text: TextLike) -> list:
    """Ids of one text: (BOS +) pieces (+ EOS), without padding or cutting.

    Args:
      text: a str (bytes are decoded as UTF-8).

    Returns:
      A list of int ids.
    """
    return self._encode_all([text])[0]

  def _encode_all(self, texts):
    texts = _as_text_list(texts)
    if self.lower:
      texts = [_ascii_lower(t) for t in texts]
    rows = self._sp.encode(texts, out_type=int)
    head = [self.bos_id] if self.add_bos else []
    tail = [self.eos_id] if self.eos != "none" else []
    return [head + row + tail for row in rows]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of a row of ids: stops at the first EOS, drops padding and BOS.

    Args:
      ids: ids (list, tuple or 1-D integer array).

    Returns:
      The decoded (lower-cased, if `lower`) text.
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    end = len(ids)
    while end and ids[end - 1] == self.pad_id:
      end -= 1
    ids = [i for i in ids[:end] if i != self.bos_id]
    for i in ids:
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"Token id {i} outside [0, {self.vocab_size}).")
    return self._sp.decode(ids)

  def tokenize(self, texts: Union[TextLike, Sequence[TextLike]],
               max_len: int) -> np.ndarray:
    """Encodes texts into a fixed-length batch of ids.

    Args:
      texts: one text or a sequence of texts (str, or UTF-8 bytes).
      max_len: row length, >= 1.

    Returns:
      int32 array [N, max_len] (N = 1 for a single text), see the class
      docstring for padding / truncation.
    """
    if max_len < 1:
      raise ValueError(f"max_len must be >= 1, got {max_len}")
    rows = self._encode_all(texts)
    out = np.full((len(rows), max_len), self.pad_id, np.int32)
    sticky = self.eos == "sticky"
    for r, ids in enumerate(rows):
      if len(ids) > max_len:
        ids = ids[:max_len - 1] + ids[-1:] if sticky else ids[:max_len]
      out[r, :len(ids)] = ids
    return out


# ----------------------------------------------------------------------------
# WordPiece (BERT family: MiniLM, sentence-transformers text towers).

_WORDPIECE_FILES = ("tokenizer.json", "vocab.txt")
_BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _read_json(path, default=None):
  """Parsed JSON file at `path`, or `default` if there is no such file."""
  if not os.path.isfile(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _build_bert_wordpiece(vocab_file, tokenizer_config, lower):
  """An HF `tokenizers.Tokenizer` equal to BERT's from a vocab.txt.

  Args:
    vocab_file: path of a BERT vocab.txt (one token a line, id = line).
    tokenizer_config: the parsed tokenizer_config.json ({} if absent).
    lower: lower-case (and strip accents) or not; None reads
      `do_lower_case` from `tokenizer_config` (default True, as BERT's).

  Returns:
    The tokenizer, with BERT's normalizer, pre-tokenizer, WordPiece model
    and a "[CLS] $A [SEP]" post-processor; no padding or truncation.
  """
  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer as HfTokenizer
  from tokenizers import decoders, models, normalizers, pre_tokenizers
  from tokenizers import processors
  # pylint: enable=g-import-not-at-top
  cfg = tokenizer_config
  if lower is None:
    lower = bool(cfg.get("do_lower_case", True))
  vocab = {}  # id = line number; a repeated token keeps its last line (BERT).
  with open(vocab_file, encoding="utf-8") as f:
    for index, line in enumerate(f):
      vocab[line.rstrip("\n")] = index
  unk = cfg.get("unk_token", "[UNK]")
  cls = cfg.get("cls_token", "[CLS]")
  sep = cfg.get("sep_token", "[SEP]")
  for token in (unk, cls, sep):
    if token not in vocab:
      raise ValueError(f"WordPiece vocabulary {vocab_file!r} has no "
                       f"{token!r} token.")
  tok = HfTokenizer(models.WordPiece(vocab, unk_token=unk,
                                     max_input_chars_per_word=100))
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True,
      handle_chinese_chars=bool(cfg.get("tokenize_chinese_chars", True)),
      strip_accents=cfg.get("strip_accents"), lowercase=bool(lower))
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single=f"{cls}:0 $A:0 {sep}:0",
      pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
      special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
  tok.decoder = decoders.WordPiece(prefix="##")
  specials = [cfg.get(k, d) for k, d in (
      ("pad_token", "[PAD]"), ("unk_token", unk), ("cls_token", cls),
      ("sep_token", sep), ("mask_token", "[MASK]"))]
  tok.add_special_tokens([t for t in dict.fromkeys(specials) if t in vocab])
  return tok


def _default_wordpiece_max_len(folder):
  """Row length a model folder implies: sentence-transformers' or BERT's."""
  st = _read_json(os.path.join(folder, "sentence_bert_config.json"), {})
  if st.get("max_seq_length"):
    return int(st["max_seq_length"])
  cfg = _read_json(os.path.join(folder, "tokenizer_config.json"), {})
  n = cfg.get("model_max_length")
  if isinstance(n, int) and 2 <= n <= 100_000:  # HF writes 1e30 for "none".
    return n
  return 512


class WordPieceTokenizer:
  """BERT's WordPiece tokenizer (HF `tokenizers`), as transformers builds it.

  Loads `tokenizer.json` (the fast tokenizer that `transformers` and
  sentence-transformers use) or, without one, builds BERT's tokenizer from
  `vocab.txt` and `tokenizer_config.json`: clean text, split CJK characters,
  lower-case and strip accents (`do_lower_case`, default True), split on
  whitespace and punctuation, greedy longest-match-first WordPiece with
  "##" continuations ([UNK] for a word with no split or over 100
  characters), then "[CLS] ... [SEP]".

  Rows (`tokenize`) are padded with `pad_id` ([PAD], 0 in BERT vocabularies)
  and cut as `transformers` does with `truncation=True`: the text's ids are
  cut so that the row, [CLS] and [SEP] included, fits `max_len`; [SEP] stays
  last. Uncased BERT: "Hello, WORLD!" -> [101, 7592, 1010, 2088, 999, 102].

  Attributes:
    vocab_size: number of ids (added tokens included).
    pad_id, cls_id, sep_id, unk_id: special ids (None if absent; pad_id 0
      if the vocabulary has no [PAD]).
  """

  def __init__(self, path, *, lower=None):
    """Loads the tokenizer.

    Args:
      path: a model folder holding `tokenizer.json` or `vocab.txt` (plus
        optionally `tokenizer_config.json`), or the path of one of those
        two files.
      lower: only for a vocab.txt: overrides `do_lower_case`.

    Raises:
      ValueError: no tokenizer file, or `lower` given with a tokenizer.json
        (whose normalizer already fixes it).
    """
    # pylint: disable-next=g-import-not-at-top
    from tokenizers import Tokenizer as HfTokenizer
    path = os.fspath(path)
    if os.path.isdir(path):
      folder = path
      files = [os.path.join(path, f) for f in _WORDPIECE_FILES
               if os.path.isfile(os.path.join(path, f))]
      if not files:
        raise ValueError(f"No tokenizer.json or vocab.txt in {path!r}.")
      path = files[0]
    elif os.path.isfile(path):
      folder = os.path.dirname(path)
    else:
      raise ValueError(f"WordPiece tokenizer path not found: {path!r}")
    cfg = _read_json(os.path.join(folder, "tokenizer_config.json"), {})
    if path.endswith(".json"):
      if lower is not None:
        raise ValueError("lower= applies to a vocab.txt only; the "
                         f"normalizer of {path!r} already sets it.")
      tok = HfTokenizer.from_file(path)
    else:
      tok = _build_bert_wordpiece(path, cfg, lower)
    padding = tok.padding or {}
    tok.no_padding()
    tok.no_truncation()
    self._tok = tok
    self.path = path
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    ids = {name: tok.token_to_id(cfg.get(f"{name}_token", f"[{name.upper()}]"))
           for name in ("pad", "cls", "sep", "unk")}
    self.cls_id, self.sep_id, self.unk_id = ids["cls"], ids["sep"], ids["unk"]
    if padding.get("pad_id") is not None:
      self.pad_id = int(padding["pad_id"])
    else:
      self.pad_id = 0 if ids["pad"] is None else ids["pad"]
    self._pad_token = tok.id_to_token(self.pad_id) or "[PAD]"
    self._fixed = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_fixed"] = {}
    return state

  def _fixed_len(self, max_len):
    """A copy of the tokenizer that pads and cuts every row to `max_len`."""
    tok = self._fixed.get(max_len)
    if tok is None:
      tok = type(self._tok).from_str(self._tok.to_str())
      tok.enable_truncation(max_len)
      tok.enable_padding(length=max_len, pad_id=self.pad_id,
                         pad_token=self._pad_token)
      # Worst case two threads build the same copy; both are equal.
      self._fixed[max_len] = tok
    return tok

  def encode(self, text: TextLike) -> list:
    """Ids of one text: [CLS] + WordPiece ids + [SEP], not cut or padded.

    Args:
      text: a str (bytes are decoded as UTF-8).

    Returns:
      A list of int ids.
    """
    return self._tok.encode(_as_text_list(text)[0]).ids

  def decode(self, ids: Iterable[int]) -> str:
    """Text of a row of ids, without special tokens and padding.

    Args:
      ids: ids (list, tuple or 1-D integer array).

    Returns:
      The text, "##" pieces joined to their words (lower-cased and without
      accents for uncased vocabularies).
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    for i in ids:
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"Token id {i} outside [0, {self.vocab_size}).")
    return self._tok.decode(ids, skip_special_tokens=True)

  def tokenize(self, texts: Union[TextLike, Sequence[TextLike]],
               max_len: int) -> np.ndarray:
    """Encodes texts into a fixed-length batch of ids (one batched call).

    Args:
      texts: one text or a sequence of texts (str, or UTF-8 bytes).
      max_len: row length, >= 2 (room for [CLS] and [SEP]).

    Returns:
      int32 array [N, max_len] (N = 1 for a single text), see the class
      docstring for padding / truncation.
    """
    if max_len < 2:
      raise ValueError(
          f"max_len must be >= 2 (room for [CLS] and [SEP]), got {max_len}")
    texts = _as_text_list(texts)
    out = np.zeros((len(texts), max_len), np.int32)
    if texts:
      encodings = self._fixed_len(int(max_len)).encode_batch_fast(texts)
      out[:] = [e.ids for e in encodings]
    return out


# ----------------------------------------------------------------------------
# Fixed-length callables and the public `get`.


class Tokenizer:
  """A tokenizer bound to a row length: `tok(texts)` -> int32 [N, max_len].

  Attributes:
    max_len: default row length.
    vocab_size: number of ids.
    pad_id: padding id.
    base: the underlying `ClipBpeTokenizer` / `SentencePieceTokenizer`.
  """

  def __init__(self, base, max_len):
    """Wraps `base` (anything with encode/decode/tokenize(texts, max_len))."""
    self.base = base
    self.max_len = int(max_len)
    self.vocab_size = base.vocab_size
    self.pad_id = base.pad_id

  def __call__(self, texts, max_len=None):
    return self.tokenize(texts, max_len)

  def tokenize(self, texts: Union[TextLike, Sequence[TextLike]],
               max_len: int | None = None) -> np.ndarray:
    """Ids of `texts` as int32 [N, max_len]; max_len defaults to `.max_len`.

    Args:
      texts: one text or a sequence of texts (str, or UTF-8 bytes).
      max_len: row length; None uses the bound `max_len`.

    Returns:
      int32 array [N, max_len].
    """
    return self.base.tokenize(texts, self.max_len if max_len is None
                              else max_len)

  def encode(self, text: TextLike) -> list:
    """Ids of one text, unpadded (see the base tokenizer's `encode`)."""
    return self.base.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of a row of ids (see the base tokenizer's `decode`)."""
    return self.base.decode(ids)


@registry.register("tokenizer", "clip")
def clip(max_len=77, vocab_path=None) -> Tokenizer:
  """CLIP BPE tokenizer bound to `max_len`; ids equal `open_clip.tokenize`.

  Args:
    max_len: row length (open_clip's `context_length`), >= 2.
    vocab_path: gzipped CLIP merge list; None for the vendored vocabulary.

  Returns:
    A `Tokenizer` over the shared `ClipBpeTokenizer` for `vocab_path`.
  """
  if max_len < 2:
    raise ValueError(
        f"max_len must be >= 2 (room for sot and eot), got {max_len}")
  return Tokenizer(clip_bpe(vocab_path), max_len)


@functools.lru_cache(maxsize=None)
def _cached_sentencepiece(model, eos, pad_id, lower, add_bos):
  return SentencePieceTokenizer(model, eos=eos, pad_id=pad_id, lower=lower,
                                add_bos=add_bos)


@registry.register("tokenizer", "sentencepiece")
def sentencepiece(model, max_len=16, *, add_eos=True, eos=None, pad_id=0,
                  lower=True, add_bos=False) -> Tokenizer:
  """SentencePiece tokenizer with big_vision (SigLIP) `tokenize` semantics.

  Args:
    model: path of a SentencePiece `.model` file.
    max_len: row length (SigLIP models: 16 or 64).
    add_eos: append EOS and keep it when cutting ("sticky"); False: no EOS.
      Ignored when `eos` is given.
    eos: big_vision's mode, "none", "yes" or "sticky"; overrides `add_eos`.
    pad_id: padding id, or a piece such as "<pad>" / "</s>". SigLIP's
      released models pad with 1 (their EOS id).
    lower: lower-case ASCII letters first (big_vision's default, True).
    add_bos: prepend BOS.

  Returns:
    A `Tokenizer`; the `SentencePieceTokenizer` behind it is shared between
    calls with the same model path and options.
  """
  if eos is None:
    eos = "sticky" if add_eos else "none"
  path = os.path.abspath(os.fspath(model))
  return Tokenizer(
      _cached_sentencepiece(path, eos, pad_id, bool(lower), bool(add_bos)),
      max_len)


@functools.lru_cache(maxsize=None)
def _cached_wordpiece(path, lower):
  return WordPieceTokenizer(path, lower=lower)


@registry.register("tokenizer", "wordpiece")
def wordpiece(path, max_len=None, *, lower=None) -> Tokenizer:
  """BERT WordPiece tokenizer; ids equal `transformers` / sentence-transformers.

  Args:
    path: a model folder (HF or sentence-transformers layout) holding
      `tokenizer.json` or `vocab.txt` (+ `tokenizer_config.json`), or the
      path of one of those files.
    max_len: row length, >= 2; None takes `max_seq_length` from the folder's
      `sentence_bert_config.json`, else the tokenizer config's
      `model_max_length`, else 512.
    lower: for a vocab.txt only: overrides its `do_lower_case`.

  Returns:
    A `Tokenizer` giving int32 [N, max_len] rows "[CLS] ... [SEP]" padded
    with [PAD] (0); the `WordPieceTokenizer` behind it is shared between
    calls with the same path and `lower`.
  """
  path = os.path.abspath(os.fspath(path))
  if max_len is None:
    max_len = _default_wordpiece_max_len(
        path if os.path.isdir(path) else os.path.dirname(path))
  if max_len < 2:
    raise ValueError(
        f"max_len must be >= 2 (room for [CLS] and [SEP]), got {max_len}")
  return Tokenizer(_cached_wordpiece(path, lower), max_len)


_ALIASES = {"clip_bpe": "clip", "spm": "sentencepiece"}
_FACTORIES = {"clip": clip, "sentencepiece": sentencepiece,
              "wordpiece": wordpiece}


def get(name: str, **kw) -> Tokenizer:
  """Returns the tokenizer `name` as a callable texts -> int32 [N, max_len].

  Args:
    name: "clip" (alias "clip_bpe"), "sentencepiece" (alias "spm") or
      "wordpiece".
    **kw: the factory's arguments: for "clip" `max_len` (77) and
      `vocab_path`; for "sentencepiece" `model` (required), `max_len` (16),
      `add_eos`, `eos`, `pad_id`, `lower`, `add_bos`; for "wordpiece" `path`
      (required), `max_len` (from the folder), `lower`.

  Returns:
    A `Tokenizer`.

  Raises:
    KeyError: unknown name.
  """
  key = _ALIASES.get(name, name)
  if key not in _FACTORIES:
    raise KeyError(f"Unknown tokenizer {name!r}; known: "
                   f"{', '.join(sorted([*_FACTORIES, *_ALIASES]))}")
  return _FACTORIES[key](**kw)


def from_spec(spec):
  """The tokenizer a config or checkpoint names.

  Args:
    spec: a registry name, built without arguments ("clip_bpe"), or a
      mapping {"name": registry name, **arguments}, as a converted
      checkpoint's `preprocessing["tokenizer"]` holds it: e.g. {"name":
      "sentencepiece", "model": "c4_en.model", "max_len": 64, "eos":
      "sticky", "pad_id": 1}.

  Returns:
    The tokenizer (with `encode`, `decode` and `vocab_size`).

  Raises:
    ValueError: a mapping without "name", or with "model": None (a
      converted checkpoint that was not given its SentencePiece model).
  """
  if isinstance(spec, str):
    return registry.get("tokenizer", spec)()
  spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  if "name" not in spec:
    raise ValueError(f"A tokenizer spec {spec} names no tokenizer (\"name\").")
  name = spec.pop("name")
  if "model" in spec and spec["model"] is None:
    raise ValueError(
        f"The {name} tokenizer has no model file: convert the checkpoint "
        "again with --tokenizer_model=PATH (its SentencePiece .model).")
  return registry.get("tokenizer", name)(**spec)
