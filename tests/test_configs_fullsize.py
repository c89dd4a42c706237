"""Every config's full-size preprocessing runs on the data it names.

For each file in configs/ (found by glob, so a new config is covered) and
each of its full-size arg sets (never `runlocal`), this builds the config and
runs every pp string in it: the training pp (+ `device_pp`) with an rng, and
each evaluation's pp without one (zero-shot images and prompts, retrieval
images and captions, probe images). Each pp runs on one record in the layout
of the source the config names:

- `wds:` a tiny tar shard in img2dataset's layout (KEY.jpg + KEY.txt +
  KEY.json), written here and read back through big_vl's `wds:` source;
- `jsonl:` / `csv:` a tiny listing (a retrieval listing has a list of
  captions per image) read through big_vl's source (and, for retrieval, the
  evaluator's `read_listing`);
- the demo data (`tfds:big_vl_demo_shapes`): its real records;
- any other `tfds:` dataset: a record synthesised from the features its
  TFDS builder declares, serialised and decoded the way `tfds.data_source`
  reads it (images left encoded); a dataset whose builder cannot declare
  its features here (e.g. `laion400m`, which needs TensorFlow) fails.

The outputs are checked against what the trainer and evaluators consume:
keys, dtypes, value ranges, one image size for the whole config and token
rows as long as the model's `text.max_len`. Configs that need files (a BERT
vocabulary, a converted text tower, a checkpoint) get tiny ones made here.
"""

import glob
import io
import json
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from big_vl import config as config_lib
from big_vl import growth
from big_vl import pretrained
from big_vl import train
from big_vl.data import device_pp as device_pp_lib
from big_vl.data import pp as pp_lib
from big_vl.data import sources
from big_vl.evaluators import common
from big_vl.evaluators import prompts
from big_vl.evaluators import retrieval
from big_vl.models import two_towers
from big_vl.data.builders import demo_prefs
from big_vl.data.builders import image_folder
import big_vl.data.builders.mnist_idx  # pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                       recursive=True))

# Full-size arg sets of each config ({name}: the fixture files below). A
# config not listed runs with no arg; one whose get_config() then fails
# fails here (add its args).
FULLSIZE_ARGS = {
    "configs/align.py": ["vocab={bert}"],
    "configs/lit_fashion_mnist.py": ["text={minilm}"],
    "configs/finetune.py": ["init={lit},text={minilm}",
                            "init={lit},text={minilm},eval"],
    "configs/adapt/fashion_mnist.py": [
        "ckpt={lit},text={minilm}",
        "ckpt={lit},text={minilm},dataset=mnist",
        "ckpt={converted}"],
    "configs/eval/demo.py": ["", "probes"],
    "configs/vitamin.py": ["", "variant=XL"],
    "configs/cappa.py": ["", "fullsize"],
    "configs/coca.py": ["", "fullsize", "fullsize,arch=coca_ViT-L-14"],
    "configs/siglip2.py": ["", "naflex"],
    "configs/preference.py": ["init={demo_run}",
                              "init={demo_run},kind=captions",
                              "init={converted}"],
}

TINY_BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a",
                   "photo", "of", "the", "dog", "."]
CAPTION = "a photo of a dog."


def _image_bytes(height=40, width=30, channels=3, fmt="JPEG"):
  rng = np.random.default_rng(0)
  array = rng.integers(0, 256, (height, width, channels), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(array[..., 0] if channels == 1 else array).save(buf, fmt)
  return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Tiny stand-ins for the files configs need: {name: path}."""
  root = tmp_path_factory.mktemp("fullsize")
  bert = root / "bert"
  bert.mkdir()
  (bert / "vocab.txt").write_text("\n".join(TINY_BERT_VOCAB) + "\n")
  text = dict(width=16, depth=1, mlp_dim=32, num_heads=2,
              vocab_size=len(TINY_BERT_VOCAB), max_len=16, causal=False,
              pool_type="mean", pad_id=0, mask_pad=True)
  tokenize = f"tokenize(max_len=16, tokenizer='wordpiece', path='{bert}')"
  params = {"t": np.zeros((), np.float32)}
  # A converted text tower (`python -m big_vl.convert --from hf_bert`).
  minilm = pretrained.save(
      root / "minilm", {"name": "two_towers", "image": None, "text": text,
                        "out_dim": 16}, params,
      preprocessing={"pp_txt": tokenize})
  # A LiT training run's checkpoint (no preprocessing of its own).
  lit = pretrained.save(
      root / "lit", {"name": "two_towers", "image": dict(
          width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4),
                     "text": text, "out_dim": 16}, params)
  # Converted image-text weights that name their preprocessing (open_clip).
  converted = pretrained.save(
      root / "converted", {"name": "two_towers", "image": dict(
          variant="mu/8"), "text": dict(variant="mu", max_len=77),
                           "out_dim": 16}, params,
      preprocessing={"pp_img": "clip_preprocess(224)",
                     "pp_txt": "tokenize(max_len=77)"})
  # A demo runlocal run's params (what configs/finetune.py:runlocal loads).
  demo = config_lib.load_config_module(os.path.join(
      ROOT, "configs", "demo.py")).get_config("runlocal")
  demo_run = pretrained.save(root / "demo_run", {
      "name": "two_towers", **demo.model.to_dict()}, params)
  return {"bert": str(bert), "minilm": str(minilm), "lit": str(lit),
          "demo_run": str(demo_run),
          "converted": str(converted), "tmp": root}


# -- records in the layout of each source --


def _wds_record(spec, tmp):
  """A sample read through big_vl's wds source from a shard written here."""
  shard = tmp / "shard-00000.tar"
  members = {"000000000.jpg": _image_bytes(),
             "000000000.txt": CAPTION.encode(),
             "000000000.json": json.dumps({"url": "http://x/0.jpg",
                                           "caption": CAPTION}).encode()}
  with tarfile.open(shard, "w") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  query = spec.partition("?")[2]
  source = sources.get(f"wds:{shard}" + (f"?{query}" if query else ""))
  return next(iter(source))


def _listing(spec, tmp, captions_per_row):
  """(source, spec) of a tiny jsonl/csv listing like the one `spec` names."""
  kind, _, rest = spec.partition(":")
  query = rest.partition("?")[2]
  (tmp / "val2014").mkdir(exist_ok=True)
  (tmp / "val2014" / "a.jpg").write_bytes(_image_bytes())
  caption = [CAPTION, "the dog."] if captions_per_row > 1 else CAPTION
  path = tmp / f"listing.{kind}"
  if kind == "jsonl":
    path.write_text(json.dumps({"image": "val2014/a.jpg",
                                "caption": caption}) + "\n")
  else:
    sep = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get(
        "sep", ",").replace("\\t", "\t")
    cell = json.dumps(caption) if captions_per_row > 1 else caption
    path.write_text(f"image{sep}caption\nval2014/a.jpg{sep}{cell}\n")
  local = f"{kind}:{path}" + (f"?{query}" if query else "")
  return sources.get(local), local


def _tfds_features(name, tmp):
  """The FeaturesDict the TFDS builder of `name` declares (no data read)."""
  base = name.split(":")[0]
  if base.startswith(image_folder.NAME + "/"):
    # The builder scans its folder to declare the class names.
    config = base.split("/")[1]
    folder = tmp / "folders" / config / "validation" / "n01440764"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0.JPEG").write_bytes(_image_bytes())
    return image_folder.ImageFolder(
        data_dir=tmp / "tfds", config=image_folder.ImageFolderConfig(
            name=config, root=str(folder.parent.parent))).info.features
  try:
    return tfds.builder(base, data_dir=tmp / "tfds").info.features
  except Exception as e:  # pylint: disable=broad-except
    error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  pytest.fail(f"The TFDS builder of {name!r} cannot declare its features "
              f"here, without TensorFlow ({error}); name a source users can "
              "prepare (README, Data).")


def _synth(feature):
  """An example value for a TFDS feature (images as encoded bytes)."""
  f = tfds.features
  if isinstance(feature, f.FeaturesDict):
    return {k: _synth(v) for k, v in feature.items()}
  if isinstance(feature, f.Sequence):
    return [_synth(feature.feature) for _ in range(3)]
  if isinstance(feature, f.Image):
    h, w, c = (d or s for d, s in zip(feature.shape, (40, 30, 3)))
    fmt = "PNG" if feature.encoding_format == "png" else "JPEG"
    return _image_bytes(h, w, c, fmt)
  if isinstance(feature, f.ClassLabel):
    return 0
  if isinstance(feature, f.Text):
    return CAPTION
  if isinstance(feature, f.BBoxFeature):
    return f.BBox(0.1, 0.2, 0.5, 0.6)
  if isinstance(feature, f.Tensor):
    shape = [d or 2 for d in feature.shape]
    return np.zeros(shape, feature.np_dtype)
  raise NotImplementedError(f"Teach _synth the feature {feature!r}.")


def _tfds_record(spec, split, tmp):
  """(record, class names) of a tfds: spec, as tfds.data_source gives it."""
  if spec == config_lib.DEMO_DATA:
    source = sources.get(spec, split=split)
    return source[0], sources.class_names(source)
  if spec.startswith(f"tfds:{demo_prefs.NAME}/"):  # Generated, as stored.
    kind = spec.split("/")[1].split(":")[0].removesuffix("_small")
    record = demo_prefs.generate_record(kind, split, 0)
    if "images" in record:
      record["images"] = np.array(record["images"], dtype=object)
    return record, None
  name = spec.partition(":")[2]
  features = _tfds_features(name, tmp)
  # pylint: disable-next=g-import-not-at-top
  from tensorflow_datasets.core import example_serializer
  serializer = example_serializer.ExampleSerializer(
      features.get_serialized_info())
  raw = serializer.serialize_example(
      features.encode_example(_synth(features)))
  decoders = {k: tfds.decode.SkipDecoding() for k, v in features.items()
              if isinstance(v, tfds.features.Image)}
  record = features.deserialize_example_np(raw, decoders=decoders or None)
  label = features["label"] if "label" in features else None
  names = list(label.names) if isinstance(
      label, tfds.features.ClassLabel) else None
  return record, names


def _records(data, split, tmp, captions_per_row=1):
  """[(spec, record, class names)] for a spec or a mixture of specs."""
  specs = [s for s, _ in sources.mixture_components(data)] if not isinstance(
      data, str) else [data]
  out = []
  for spec in specs:
    kind = spec.partition(":")[0]
    if kind == "wds":
      out.append((spec, _wds_record(spec, tmp), None))
    elif kind in ("jsonl", "csv"):
      source, _ = _listing(spec, tmp, captions_per_row)
      out.append((spec, source[0], None))
    elif kind == "tfds":
      out.append((spec, *_tfds_record(spec, split, tmp)))
    else:
      pytest.fail(f"Teach this test the layout of {kind!r} sources ({spec}).")
  return out


# -- what each consumer needs --


class Checks:
  """Collects image sizes and token lengths across one config's pps."""

  def __init__(self, config, where):
    self.where = where
    text = config.get("model", {}).get("text", None) or {}
    self.max_len = text.get("max_len", None)
    self.sizes = {}
    self.count = 0

  def image(self, out, what, uint8=False, pp=None, candidates=False):
    image = np.asarray(out["image"])
    if candidates:  # K images per record (preference data).
      image = image[0]
    if "image_pos" in out:  # NaFlex: [N, P, P, 3] patches, [N, 2] positions.
      assert image.ndim == 4 and image.shape[-1] == 3, (what, image.shape)
      assert np.shape(out["image_pos"]) == (image.shape[0], 2), what
      assert (np.asarray(out["image_pos"])[:, 0] >= 0).any(), what
    else:
      assert image.ndim == 3 and image.shape[-1] == 3, (what, image.shape)
    if uint8:
      assert image.dtype == np.uint8, (what, image.dtype)
    else:
      assert image.dtype == np.float32, (what, image.dtype)
      assert np.isfinite(image).all(), what
      if pp is None or "value_range(-1,1)" in pp:
        assert -1.0 <= image.min() and image.max() <= 1.0, what
    self.sizes[what] = image.shape[:2]
    self.count += 1

  def tokens(self, tokens, what, rows=None):
    tokens = np.asarray(tokens)
    assert tokens.dtype == np.int32, (what, tokens.dtype)
    if rows is not None:
      assert tokens.shape[:-1] == rows, (what, tokens.shape, rows)
    # Not only padding: the caption was tokenised, not dropped.
    assert (tokens != tokens.reshape(-1)[-1]).any(), (what, tokens)
    if self.max_len is not None:
      assert tokens.shape[-1] == self.max_len, (
          f"{self.where} {what}: tokens of length {tokens.shape[-1]}, the "
          f"model's text.max_len is {self.max_len}")
    self.count += 1

  def same_image_size(self):
    assert len(set(self.sizes.values())) <= 1, (
        f"{self.where}: image sizes differ between pps: {self.sizes}")


def _check_prompts(checks, pp_txt, templates, class_names, names, what):
  names = (prompts.classnames(class_names) if isinstance(class_names, str)
           else class_names) or names
  assert names, f"{what}: no class names (config or dataset ClassLabel)"
  texts = [t.format(c) for c in names[:3] for t in prompts.get(templates)[:2]]
  checks.tokens(common.pp_tokenizer(pp_txt)(texts), f"{what} prompts",
                rows=(len(texts),))


def _run_train(config, checks, tmp):
  """Runs the training pp (+ device pp); returns the last example made."""
  block = config.input
  rng = np.random.default_rng(0)
  out = None
  # Per-token loss weights (LocCa's prompts) are batch fields too.
  weights = {o.weights_key for o in config.get("objectives", {}).values()
             if o.get("weights_key", None)}
  # A decoder's targets beside the contrastive text (SigLIP 2), and NaFlex
  # patch positions.
  fields = {o.text_key for o in config.get("objectives", {}).values()
            if o.get("text_key", None)}
  if "naflex(" in block.pp:
    fields.add("image_pos")
  # The self-supervised objectives' multi-crop views.
  views = set(two_towers.VIEW_KEYS.values()) if "multi_crop(" in block.pp \
      else set()
  fields |= views
  # A rater's choice among K candidates (preference data).
  fields |= {o.get("choice_key", "choice") for o in
             config.get("objectives", {}).values()
             if o.get("loss", None) == "preference"}
  candidates = "each(" in block.pp
  for spec, record, _ in _records(block.data, block.split, tmp):
    out = pp_lib.build(block.pp)(record, rng)
    assert set(out) == {"image", "text"} | weights | fields, (spec,
                                                               sorted(out))
    for key in weights:
      assert np.shape(out[key]) == np.shape(out["text"]), (spec, key)
    device = block.get("device_pp", None)
    checks.image(out, f"input.pp on {spec}", uint8=bool(device),
                 pp=block.pp, candidates=candidates)
    if device:
      batch = device_pp_lib.build(device)({k: jnp.asarray(out[k])[None]
                                           for k in {"image"} | views})
      checks.image({**out, "image": np.asarray(batch["image"][0])},
                   "input.device_pp", pp=device)
      for key in views:  # uint8 [V, S, S, 3] crops -> [-1, 1] floats.
        view = np.asarray(batch[key][0])
        assert view.ndim == 4 and view.shape[1] == view.shape[2], (key,
                                                                   view.shape)
        assert view.dtype == np.float32 and -1 <= view.min() < view.max() \
            <= 1, (key, view.min(), view.max())
    checks.tokens(out["text"], f"input.pp on {spec}")
  return out


def _fields(out):
  """An example's fields, NaFlex positions aside (`Checks.image` checks
  them with the patches)."""
  return set(out) - {"image_pos"}


def _run_eval(name, block, checks, tmp):
  kind = block.get("type", name)
  what = f"evals.{name}"
  if kind in ("zeroshot", "caption_scoring"):
    for spec, record, names in _records(block.data, block.split, tmp):
      out = pp_lib.build(block.pp_img)(record, None)
      assert _fields(out) == {"image", block.get("label_key", "label")}, (
          what, spec, sorted(out))
      checks.image(out, f"{what}.pp_img", pp=block.pp_img)
      _check_prompts(checks, block.pp_txt, block.get("templates",
                                                     "clip_simple"),
                     block.get("class_names", None), names, what)
  elif kind == "retrieval":
    kind_of_data = block.data.partition(":")[0]
    if kind_of_data in ("jsonl", "csv"):
      source, local = _listing(block.data, tmp, captions_per_row=2)
      rows, captions = retrieval.read_listing(local, source)[:2]
      assert captions == [CAPTION, "the dog."], captions
      out = pp_lib.build(block.pp_img)(source[rows[0]], None)
      checks.image(out, f"{what}.pp_img", pp=block.pp_img)
      checks.tokens(common.pp_tokenizer(block.pp_txt)(captions),
                    f"{what}.pp_txt", rows=(2,))
    else:
      for spec, record, _ in _records(block.data, block.split, tmp):
        out = pp_lib.build(block.pp)(record, None)
        assert _fields(out) == {"image", "texts"}, (what, spec, sorted(out))
        checks.image(out, f"{what}.pp", pp=block.pp)
        checks.tokens(out["texts"], f"{what}.pp")
  elif kind in ("linear_probe", "fewshot"):
    for split in (block.train_split, block.test_split):
      for spec, record, _ in _records(block.data, split, tmp):
        out = pp_lib.build(block.pp)(record, None)
        checks.image(out, f"{what}.pp on {spec}", pp=block.pp)
        assert "label" in out, (what, sorted(out))
  elif kind == "captioning":
    for spec, record, _ in _records(block.data, block.get("split", None), tmp,
                                    captions_per_row=2):
      out = pp_lib.build(block.pp)(record, None)
      assert _fields(out) == {"image"}, (what, spec, sorted(out))
      checks.image(out, f"{what}.pp", pp=block.pp)
      captions = record[block.get("captions_key", "captions")]
      assert captions and all(
          (c.decode() if isinstance(c, bytes) else c).strip()
          for c in captions), (what, spec, captions)
  elif kind == "preference":
    for spec, record, _ in _records(block.data, block.split, tmp):
      out = pp_lib.build(block.pp)(record, None)
      assert _fields(out) == {"image", "text", "ratings", "defects"}, (
          what, spec, sorted(out))
      checks.image(out, f"{what}.pp", pp=block.pp,
                   candidates="each(" in block.pp)
      rows = (np.shape(out["ratings"])[0],) if np.ndim(out["text"]) == 2 \
          else None
      checks.tokens(out["text"], f"{what}.pp", rows=rows)
  elif kind == "locca":
    for spec, record, _ in _records(block.data, block.split, tmp):
      out = pp_lib.build(block.pp)(record, None)
      assert _fields(out) == {"image", "text"}, (what, spec, sorted(out))
      checks.image(out, f"{what}.pp", pp=block.pp)
      checks.tokens(out["text"], f"{what}.pp", rows=(2,))
  else:
    pytest.fail(f"{what}: teach this test the pp keys of evaluator "
                f"{kind!r}.")


def _run_adapt(config, checks, tmp):
  for split in (config.train_split, config.test_split):
    for spec, record, names in _records(config.data, split, tmp):
      out = pp_lib.build(config.pp_img)(record, None)
      assert _fields(out) == {"image", config.label_key}, (spec, sorted(out))
      checks.image(out, f"pp_img on {spec}", pp=config.pp_img)
  _check_prompts(checks, config.pp_txt, config.templates,
                 config.class_names, names, "adapt")


def _cases():
  for path in CONFIG_FILES:
    for arg in FULLSIZE_ARGS.get(path, [""]):
      yield pytest.param(path, arg, id=f"{path}:{arg}")


def test_every_config_is_covered():
  assert len(CONFIG_FILES) >= 13, CONFIG_FILES
  assert not set(FULLSIZE_ARGS) - set(CONFIG_FILES), (
      "FULLSIZE_ARGS names configs that do not exist")


@pytest.mark.parametrize("path,arg", list(_cases()))
def test_fullsize_pp_runs_on_the_named_data(path, arg, files, demo_data,
                                            tmp_path):
  del demo_data
  assert "runlocal" not in arg
  config = config_lib.load_config_module(os.path.join(ROOT, path)).get_config(
      arg.format(**files) or None)
  where = f"{path}:{arg}"
  checks = Checks(config, where)
  if "input" in config:
    train.check_config(config)
    example = _run_train(config, checks, tmp_path)
    _check_param_layout(f"{path}:{arg}", config, example)
    specs = [config.input.data] if isinstance(config.input.data, str) else [
        s for s, _ in sources.mixture_components(config.input.data)]
    if any(s.startswith("wds:") for s in specs):  # Streams have no length.
      epochs = [k for k in config if k.endswith("_epochs")]
      assert not epochs, f"{where}: {epochs} on streaming data"
  for name, block in (config.get("evals", None) or {}).items():
    _run_eval(name, block, checks, tmp_path)
  if "pp_img" in config and "data" in config:  # An adapt config.
    _run_adapt(config, checks, tmp_path)
  assert checks.count >= 2, f"{where}: no pp was checked"
  checks.same_image_size()


# -- the parameter layout of every config, as a committed snapshot --
#
# tests/data/param_shapes.json holds, for each training config (full size
# and runlocal; with growth, each stage), every parameter's "/"-joined path,
# shape and dtype from `jax.eval_shape` of the model's init. Checkpoints,
# converters and every path rule (frozen, lr/wd rules, sharding rules,
# dont_load) name parameters by these paths, so a change of one is a visible
# diff here. After an intended change, rewrite the snapshot with
#   BIG_VL_UPDATE_PARAM_SHAPES=1 python -m pytest tests/test_configs_fullsize.py
# and review `git diff tests/data/param_shapes.json`.

PARAM_SHAPES = os.path.join(ROOT, "tests", "data", "param_shapes.json")
UPDATE_PARAM_SHAPES = bool(os.environ.get("BIG_VL_UPDATE_PARAM_SHAPES"))
# Runlocal arg sets of the training configs ({name}: the fixture files).
RUNLOCAL_ARGS = {
    "configs/demo.py": ["runlocal", "runlocal,loss=sigmoid"],
    "configs/clip.py": ["runlocal"],
    "configs/siglip.py": ["runlocal"],
    "configs/align.py": ["runlocal"],
    "configs/filip.py": ["runlocal"],
    "configs/dreamlip.py": ["runlocal"],
    "configs/growclip.py": ["runlocal"],
    "configs/vitamin.py": ["runlocal"],
    "configs/lit_fashion_mnist.py": ["runlocal,text={minilm}"],
    "configs/finetune.py": ["runlocal,init={demo_run}"],
    "configs/cappa.py": ["runlocal"],
    "configs/coca.py": ["runlocal"],
    "configs/locca.py": ["runlocal"],
    "configs/siglip2.py": ["runlocal", "runlocal,naflex"],
    "configs/preference.py": ["runlocal,init={demo_run}",
                              "runlocal,init={demo_run},kind=captions"],
}


def param_layout(config, example):
  """{stage: {path: "dtype[shape]"}}: the params of `config`'s model.

  Args:
    config: a training ConfigDict.
    example: one preprocessed example ("image", "text") of its train pp.

  Returns:
    Stage "init", plus "after_step_S" after each growth event at step S.
  """
  stages = {"init": config}
  for step, _ in growth.events(config):
    stages[f"after_step_{step}"] = growth.stage_config(config, step + 1)
  layout = {}
  for stage, cfg in stages.items():
    abstract = jax.eval_shape(
        train.params_initializer(train.make_model(cfg), example),
        jax.random.PRNGKey(0))
    layout[stage] = {
        "/".join(str(getattr(k, "key", k)) for k in path):
            f"{leaf.dtype}{list(leaf.shape)}"
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  return layout


def _check_param_layout(case, config, example):
  layout = param_layout(config, example)
  snapshot = {}
  if os.path.exists(PARAM_SHAPES):
    with open(PARAM_SHAPES) as f:
      snapshot = json.load(f)
  if UPDATE_PARAM_SHAPES:
    snapshot[case] = layout
    with open(PARAM_SHAPES, "w") as f:
      json.dump(snapshot, f, indent=1, sort_keys=True)
      f.write("\n")
    return
  assert case in snapshot, (
      f"{case}: no parameter layout in {PARAM_SHAPES}; record it with "
      "BIG_VL_UPDATE_PARAM_SHAPES=1 (see the comment above this test).")
  want = snapshot[case]
  problems = []
  for stage in sorted(set(want) | set(layout)):
    old, new = want.get(stage, {}), layout.get(stage, {})
    problems += [f"{stage}: {p} removed ({old[p]})" for p in sorted(
        set(old) - set(new))]
    problems += [f"{stage}: {p} added ({new[p]})" for p in sorted(
        set(new) - set(old))]
    problems += [f"{stage}: {p} {old[p]} -> {new[p]}" for p in sorted(
        set(old) & set(new)) if old[p] != new[p]]
  assert not problems, (
      f"{case}: the parameter layout changed (checkpoints, converters and "
      "path rules name these paths):\n  " + "\n  ".join(problems[:40])
      + (f"\n  ... {len(problems) - 40} more" if len(problems) > 40 else ""))


def _runlocal_cases():
  for path, args in RUNLOCAL_ARGS.items():
    for arg in args:
      yield pytest.param(path, arg, id=f"{path}:{arg}")


def test_runlocal_cases_are_training_configs():
  assert set(RUNLOCAL_ARGS) <= set(CONFIG_FILES)
  trains = {p for p in CONFIG_FILES
            if not p.startswith(("configs/eval/", "configs/adapt/"))}
  assert trains == set(RUNLOCAL_ARGS), sorted(trains ^ set(RUNLOCAL_ARGS))


@pytest.mark.parametrize("path,arg", list(_runlocal_cases()))
def test_runlocal_param_layout_matches_the_snapshot(path, arg, files,
                                                    demo_data, tmp_path):
  del demo_data
  config = config_lib.load_config_module(os.path.join(ROOT, path)).get_config(
      arg.format(**files))
  rng = np.random.default_rng(0)
  record = _records(config.input.data, config.input.split, tmp_path)[0][1]
  _check_param_layout(f"{path}:{arg}", config,
                      pp_lib.build(config.input.pp)(record, rng))


def test_param_snapshot_has_no_stale_cases():
  with open(PARAM_SHAPES) as f:
    recorded = set(json.load(f))
  fullsize = {f"{p}:{a}" for p, a in (c.values for c in _cases())}
  runlocal = {f"{p}:{a}" for p, a in (c.values for c in _runlocal_cases())}
  assert recorded <= fullsize | runlocal, sorted(
      recorded - fullsize - runlocal)
  assert runlocal <= recorded, sorted(runlocal - recorded)


def test_choice_refuses_a_single_string():
  """LAION-400M's TFDS `caption` is one Text feature: the old configs'
  `choice(key='caption')` picked one byte of it."""
  old_clip_pp = ("decode|resize(32, method='bicubic')|"
                 "choice(key='caption', out='text')|tokenize(max_len=77)|"
                 "keep('image','text')")
  fn = pp_lib.build(old_clip_pp)
  rng = np.random.default_rng(0)
  for caption in (b"a dog on a beach", "a dog on a beach",
                  np.array(b"a dog on a beach", dtype=object)):
    with pytest.raises(TypeError) as e:
      fn({"image": _image_bytes(), "caption": caption}, rng)
    message = str(e.value)
    assert "choice(key='caption')" in message
    assert "single string" in message and "Drop `choice`" in message
    assert "a dog on a beach" in message
    assert not isinstance(e.value, pp_lib.CorruptRecordError)  # Not skipped.
  out = pp_lib.get_choice(key="caption")(
      {"caption": np.array([b"a", b"b"], dtype=object)}, None)
  assert out["text"] == b"a"
