r"""Evaluates a trained demo model: zero-shot + retrieval on demo test data.

Train, then evaluate the run's latest checkpoint (any mesh; the default is
every device, data parallel):

    python -m big_vl.train --config=configs/demo.py --workdir=workdirs/demo
    python -m big_vl.evaluate --config=configs/eval/demo.py \
        --checkpoint=workdirs/demo --output=workdirs/demo/eval
    python -m big_vl.results aggregate workdirs/demo/eval/results \
        --format=markdown

Expected result: exactly the numbers of the trainer's final evaluation (same
params, same data, same evaluators; see configs/demo.py): zero-shot top-1
45.9% over the 35 colour+shape classes (top-5 99.5%), retrieval image->text
R@1/5/10 18.3/42.1/57.4%, text->image 6.5/20.6/31.6% (2,000 test images,
10,000 captions; measured on the 2026-11-29 demo run). About 10 s per evaluator on 2 CPU cores. It writes
workdirs/demo/eval/metrics.json and two CLIP_benchmark-format files in
workdirs/demo/eval/results/ (demo_shapes, zeroshot_classification and
zeroshot_retrieval).

For a `configs/demo.py:runlocal` run (32x32 images) use `:runlocal`, which
evaluates the first 256 test examples as the local trainer does:

    python -m big_vl.evaluate --config=configs/eval/demo.py:runlocal \
        --checkpoint=/tmp/d --output=/tmp/d/eval

With `:probes`, also a linear probe and few-shot (1/5/10-shot probe and
ridge) on frozen image features of the demo data; measured on the same run:
linear probe top-1 46.5% (probe trained on 5,000 train images; the 5
held-out colour+shape classes have no training examples, so a probe cannot
predict them), 1/5/10-shot probe 32.5/36.9/39.6% (ridge 31.2/35.8/38.8%),
about 40 s in all.

Args (after the colon): `runlocal`, `probes`, `res=N` (image size the model
was trained at), `split=SPLIT`, `batch=N` (global eval batch; the data
shards of the mesh must divide it).
"""

import ml_collections

from big_vl import config as config_lib


def get_config(arg=None):
  """The demo eval config. Args: `runlocal`, `res=N`, `split=S`, `batch=N`."""
  arg = config_lib.parse_arg(arg, runlocal=False, probes=False, res=0,
                             max_len=24, split="", batch=0)
  res = arg.res or (32 if arg.runlocal else 64)
  split = arg.split or ("test[:256]" if arg.runlocal else "test")
  batch = arg.batch or (64 if arg.runlocal else 256)
  config = ml_collections.ConfigDict()
  config.mesh = (("data", -1),)
  config.sharding_rules = ((".*", "replicate"),)
  config.evals = config_lib.demo_evals(res, arg.max_len, batch_size=batch,
                                       split=split)
  if arg.probes:
    pp = config_lib.demo_pp(res, arg.max_len).zeroshot_img
    common = dict(data=config_lib.DEMO_DATA, pp=pp, batch_size=batch,
                  test_split=split)
    config.evals.linear_probe = dict(type="linear_probe",
                                     train_split="train[:5000]", **common)
    config.evals.fewshot = dict(type="fewshot", train_split="train[:5000]",
                                shots=(1, 5, 10), **common)
  # Names in the result files (None: the run's model_name, and
  # "<workdir name>-step<N>").
  config.model_label = ml_collections.config_dict.placeholder(str)
  config.pretrained = ml_collections.config_dict.placeholder(str)
  config.language = "en"
  return config
