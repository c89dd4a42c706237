r"""CLIP (Radford et al. 2021) / ALIGN-style softmax contrastive pre-training.

The paper's hyper-parameters for ViT-B/32 and ViT-B/16 (CLIP Table 19/20):
global batch 32,768; AdamW (b1 0.9, b2 0.98, eps 1e-6), weight decay 0.2
(PyTorch-style, multiplied by the lr), peak lr 5e-4, 2,000 warm-up steps then
cosine decay to 0, 32 epochs; image 224 px; text: 12-layer, 512-wide, 8-head
causal transformer, context length 77, CLIP BPE vocabulary of 49,408, pooled at
the end-of-text token; embedding width 512; learned temperature initialised to
1/0.07 (CLIP also clips it at 100; not done here). 32 epochs of 400M pairs
are 12.8B examples (`examples=N`; streaming data has no length, so the
duration is in examples).

Data: CLIP's private WIT-400M is replaced by LAION-400M as img2dataset
WebDataset shards (how LAION-400M and DataComp are distributed; read by
`wds:`, each sample's `KEY.txt` is the caption). Download the metadata
(parquet, https://huggingface.co/datasets/laion/laion400m) and the images
(no TensorFlow needed; about 10 TB at 256 px):

    pip install img2dataset
    img2dataset --url_list laion400m-meta --input_format parquet \
        --url_col URL --caption_col TEXT --output_format webdataset \
        --output_folder /data/laion400m --image_size 256 \
        --processes_count 16 --thread_count 128

and name the shards with `data=` (default /data/laion400m/{00000..41455}.tar:
41,456 shards of 10,000 pairs; any brace pattern, local or gs://).
DataComp's download script writes the same layout, so `data=` can name its
shards instead.

Evaluation (`big_vl.config.fullsize_evals`, every 5,000 steps and at the
end): ImageNet zero-shot on the 50,000 validation images with CLIP's 1,000
class names and 80 templates (`imagenet=SPEC`, default
`tfds:big_vl_image_folder/imagenet`: a folder `imagenet/validation/<wnid>/
*.JPEG` listed in $BIG_VL_IMAGE_FOLDERS, built on first use; or
`imagenet=tfds:imagenet2012` if you have it as array_record), and COCO
image <-> text retrieval on the Karpathy 5k test split (`coco=SPEC`, default
`jsonl:/data/coco/karpathy_test.jsonl`, one row {"image": path, "caption":
[captions]} per image; README, "Data", has the commands that make both).

Full run (a TPU pod; one of):

    python -m big_vl.train --config=configs/clip.py:variant=B/32 --workdir=W
    python -m big_vl.train --workdir=W \
        --config=configs/clip.py:variant=B/16,data=gs://B/laion400m/{00000..41455}.tar

Expected: CLIP reports ImageNet zero-shot top-1 of 63.2% (B/32) and 68.6%
(B/16) on WIT-400M; open_clip's LAION-400M runs reach 62.9% / 67.1%
(`zeroshot/imagenet/top1`). Not reproduced here (no accelerator pod); the
evaluators these configs use are.

Local run on the embedded demo data (2 CPU cores, about a minute):

    python -m big_vl.train --config=configs/clip.py:runlocal --workdir=/tmp/c

Expected locally: loss falls from about ln(32)=3.47 to below 3.3 in 20 steps;
zero-shot top-1 on 256 demo test images well above chance (1/35) is not
expected after 20 steps.
"""

import ml_collections
from ml_collections import config_dict

from big_vl import config as config_lib

# ViT size -> (lr, embed width, text width, text heads) from the CLIP paper.
PAPER = {
    "B/32": dict(lr=5e-4, out_dim=512, text_width=512, text_heads=8),
    "B/16": dict(lr=5e-4, out_dim=512, text_width=512, text_heads=8),
}


def get_config(arg=None):
  """CLIP config. Args: `variant=B/32|B/16`, `batch=N`, `examples=N`,
  `res=N`, `data=SHARDS`, `imagenet=SPEC`, `coco=SPEC`, `runlocal`."""
  arg = config_lib.parse_arg(arg, variant="B/32", batch=32768,
                             examples=12_800_000_000, res=224,
                             data=config_lib.LAION400M_SHARDS,
                             imagenet=config_lib.IMAGENET_DATA,
                             coco=config_lib.COCO_DATA, runlocal=False)
  if arg.variant not in PAPER:
    raise ValueError(f"configs/clip.py: variant must be one of {list(PAPER)}.")
  paper = PAPER[arg.variant]
  config = ml_collections.ConfigDict()
  config.seed = 0
  image_pp = f"decode|resize({arg.res}, method='bicubic')"
  tokenize = "tokenize(max_len=77)"
  config.input = ml_collections.ConfigDict(dict(
      # WebDataset samples: "image" (encoded) and "text" (KEY.txt).
      data=config_lib.shards_spec(arg.data), split="train", data_dir=None,
      batch_size=arg.batch,
      pp=f"{image_pp}|{tokenize}|keep('image','text')",
      # uint8 from the host; [-1, 1] inside the train step.
      device_pp="value_range(-1,1)",
      workers=8, read_threads=16, shuffle=True))

  config.model_name = "two_towers"
  config.model = ml_collections.ConfigDict(dict(
      image=dict(variant=arg.variant, pool_type="cls", pre_norm=True,
                 act="quick_gelu", remat_policy="none", scan=False),
      text=dict(width=paper["text_width"], depth=12,
                mlp_dim=4 * paper["text_width"], num_heads=paper["text_heads"],
                vocab_size=49408, max_len=77, causal=True, pool_type="eot",
                act="quick_gelu", remat_policy="none", scan=False),
      out_dim=paper["out_dim"], temperature_init=1 / 0.07, bias_init=None,
      dtype="bfloat16"))
  # The loss: one named objective (`train/contrastive/...` metrics); more
  # objectives are summed with their weights (big_vl/objectives.py).
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0, impl="ring")))

  config.total_examples = arg.examples
  config.warmup_steps = 2000
  config.log_steps = 50
  config.ckpt_steps = 1000
  config.lr = paper["lr"]
  config.wd = 0.2
  config.wd_mode = "coupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.98, eps=1e-6)
  # Scale knobs (see README): GradCache micro-batches per step, and a
  # compute dtype for the params (fp32 master weights stay in the state).
  config.grad_accum_steps = 1
  config.param_compute_dtype = config_dict.placeholder(str)
  # Start from pretrained weights (a `python -m big_vl.convert` output or
  # another run): --config.model_init=DIR, and regexes of params that keep
  # their init, e.g. --config.model_load.dont_load="('img/head/.*',)".
  config.model_init = config_dict.placeholder(str)
  config.model_load = ml_collections.ConfigDict(dict(dont_load=()))
  config.grad_clip_norm = None

  # FSDP (ZeRO-3): params and optimiser moments split over every device,
  # which also share the batch (`fsdp` is a batch axis of big_vl.sharding).
  config.mesh = (("fsdp", -1),)
  config.sharding_rules = ((".*", "fsdp"),)
  config.evals = config_lib.fullsize_evals(
      image_pp, tokenize, every=5000, imagenet=arg.imagenet, coco=arg.coco)

  if arg.runlocal:
    config_lib.runlocal_on_demo(config)
    config.model.dtype = "float32"
    config.model.temperature_init = 10.0
  return config
