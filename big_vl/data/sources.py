"""Data sources: random-access readers selected by a name in the config.

    config.input.data = "tfds:big_vl_demo_shapes"   # or "tfds:NAME/CONFIG"
    config.input.split = "train"

`get(spec, split=..., data_dir=...)` returns a random-access source (`len`,
`[i]`) of dicts of numpy values / bytes, read with `tfds.data_source` from an
array_record-prepared TFDS dataset; images are left encoded (bytes) so that the
`decode` pp op decodes them and a corrupt record can be skipped and counted.
Datasets whose builder ships with big_vl (the demo set) are built on first use.
"""

import importlib

import tensorflow_datasets as tfds

from big_vl import registry

# TFDS builders shipped with big_vl: dataset name -> module with prepare().
SHIPPED_BUILDERS = {
    "big_vl_demo_shapes": "big_vl.data.builders.demo_shapes",
}


def _image_keys(features):
  return [k for k, f in features.items() if isinstance(f, tfds.features.Image)]


@registry.register("source", "tfds")
def tfds_source(name, *, split, data_dir=None):
  """A TFDS dataset prepared as array_record, with images left encoded.

  Args:
    name: "NAME" or "NAME/CONFIG" (optionally with ":VERSION").
    split: TFDS split string, e.g. "train", "test[:1000]".
    data_dir: TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).

  Returns:
    A random-access `tfds` data source; `source.dataset_info` has features,
    class names and split sizes.
  """
  parts = name.split(":")[0].split("/")
  if parts[0] in SHIPPED_BUILDERS:
    kwargs = {"config": parts[1]} if len(parts) > 1 else {}
    importlib.import_module(SHIPPED_BUILDERS[parts[0]]).prepare(
        data_dir=data_dir, **kwargs)
  builder = tfds.builder(name, data_dir=data_dir)
  decoders = {k: tfds.decode.SkipDecoding()
              for k in _image_keys(builder.info.features)}
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            decoders=decoders or None)
  except (NotImplementedError, ValueError) as e:
    raise ValueError(
        f"Cannot read TFDS dataset {name!r} split {split!r} as a random-access "
        f"source ({e}). big_vl reads array_record files: prepare it with "
        f"`tfds build {name} --file_format=array_record` or "
        f"`builder.download_and_prepare(file_format='array_record')`.") from e


def get(spec, *, split=None, data_dir=None):
  """Opens the source named by `spec` ("KIND:NAME[:SPLIT]").

  Args:
    spec: e.g. "tfds:big_vl_demo_shapes" or "tfds:mnist:test".
    split: split to read, unless `spec` names one.
    data_dir: data directory passed to the source.

  Returns:
    A random-access source.
  """
  kind, sep, rest = spec.partition(":")
  if not sep:
    raise ValueError(f"Data spec {spec!r} needs a kind, e.g. 'tfds:{spec}'.")
  name, sep, spec_split = rest.partition(":")
  if sep and spec_split:
    split = spec_split
  if split is None:
    raise ValueError(f"No split given for data {spec!r}.")
  return registry.get("source", kind)(name, split=split, data_dir=data_dir)


def class_names(source, key="label"):
  """Class names of a TFDS source's ClassLabel feature `key`, or None."""
  info = getattr(source, "dataset_info", None)
  feature = info.features[key] if info is not None and key in info.features \
      else None
  return list(feature.names) if feature is not None else None
