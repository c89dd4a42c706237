r"""CoCa (Yu et al. 2022): a contrastive captioner, on the demo shapes data.

One model (`big_vl/models/coca.py`) is a CLIP-style dual encoder and an
image captioner: unimodal causal text layers give the text embedding from
an appended [CLS] token, an attentional pooler gives the image embedding
(query 0) and the decoder's memory (the other queries), and multimodal
layers cross-attend to that memory to predict the caption. The step
minimises two named objectives, the softmax contrastive loss (weight 1)
and the caption cross-entropy (weight 2.0, the paper's caption_weight).
The layout is open_clip's `coca_*` models' (`big_vl.convert.open_clip_coca`
converts their weights both ways).

Run (the demo data is built on first use):

    python -m big_vl.train --config=configs/coca.py --workdir=workdirs/coca
    python -m big_vl.train --config=configs/coca.py:runlocal \
        --workdir=/tmp/coca    # 20 steps, 32x32 images, tiny towers

Metrics: train/contrastive/loss, train/caption/loss (and token_acc,
perplexity), train/loss (1 x contrastive + 2 x caption); at the end
zero-shot and retrieval on the test split (zeroshot/demo_shapes/top1,
retrieval/demo_shapes/...) and greedy captions of its first 64 / 1,000
images (captioning/demo_shapes/cider, bleu_*; clip_score,
ref_clip_score and self_retrieval_r@1/5 by the model's own embeddings;
captions.jsonl/.png), and zero-shot by the decoder's likelihood of the
class prompts (zeroshot/demo_shapes_scored/top1, `caption_scoring`).

Measured (bench/guidance.py, 2026-12-07, 2 CPU cores): `runlocal` sizes
trained for 1,500 steps of 64 with `uncond_prob` 0.1 reach caption loss
about 0.75 and greedy test captions of CIDEr-D 1.86 ± 0.01 over 3 seeds
(the most frequent training caption for every image: 0.35).

Full size (`fullsize`, `arch=coca_ViT-B-32|coca_ViT-L-14`): open_clip's
architecture (`big_vl.convert.open_clip_coca.ARCHS`, so that its released
LAION-2B weights and this run's share one layout) trained with the
paper's recipe (Yu et al. 2022, section 4.1): batch 65,536, 500,000 steps,
Adafactor (beta1 0.9, beta2 0.999), weight decay 0.01, lr 8e-4 after a
linear warm-up over the first 2% of steps then linear decay to 0,
contrastive weight 1 and caption weight 2. The paper's JFT-3B + ALIGN data
are replaced by LAION-400M WebDataset shards (`data=`), its 288 px / 18 px
patches by the architecture's 224 px, and Adafactor is big_vision's variant
(beta2 capped at 0.999, momentum 0.9). Evaluation every 10,000 steps and at
the end: ImageNet zero-shot and COCO retrieval (`big_vl.config.
fullsize_evals`), and greedy COCO captions (CIDEr / BLEU, CLIPScore and
self-retrieval by the model's own embeddings). Not run here (no
accelerator); its pp and parameter layout are checked by
tests/test_configs_fullsize.py.

    python -m big_vl.train --config=configs/coca.py:fullsize \
        --workdir=gs://BUCKET/coca_b32

Args (after the colon): `runlocal`, `steps=N`, `batch=N` (with
`runlocal` too: its sizes, trained longer),
`caption_weight=F`, `uncond=F` (uncond_prob, for classifier-free guidance),
`res=N`, `max_len=N`; `fullsize` with `arch=`, `data=SHARDS`,
`imagenet=SPEC`, `coco=SPEC` (steps and batch keep the paper's values
unless given).
"""

import ml_collections

from big_vl import config as config_lib
from big_vl.convert import open_clip_coca


def get_config(arg=None):
  """The CoCa demo config, or the paper's recipe with `fullsize`."""
  arg = config_lib.parse_arg(arg, runlocal=False, fullsize=False, steps=0,
                             batch=0, caption_weight=2.0, uncond=0.0, res=64,
                             max_len=24, arch="coca_ViT-B-32",
                             data=config_lib.LAION400M_SHARDS,
                             imagenet=config_lib.IMAGENET_DATA,
                             coco=config_lib.COCO_DATA)
  if arg.fullsize:
    if arg.runlocal:
      raise ValueError("configs/coca.py: `runlocal` is the demo config's; "
                       "drop `fullsize`.")
    return fullsize_config(arg)
  arg.steps = arg.steps or (20 if arg.runlocal else 800)
  arg.batch = arg.batch or (32 if arg.runlocal else 128)
  res = 32 if arg.runlocal else arg.res
  config = ml_collections.ConfigDict()
  config.seed = 0
  pp = config_lib.demo_pp(res, arg.max_len)
  config.input = ml_collections.ConfigDict(dict(
      data=config_lib.data_field(config_lib.DEMO_DATA), split="train",
      data_dir=None, batch_size=arg.batch,
      pp=pp.train, workers=0, read_threads=4, shuffle=True))

  config.model_name = "coca"
  width = 64 if arg.runlocal else 128
  image = (dict(variant="mu/8") if arg.runlocal else
           dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8))
  tower = (dict(width=64, depth=2, mlp_dim=256, num_heads=2)
           if arg.runlocal else
           dict(width=128, depth=4, mlp_dim=512, num_heads=4))
  patches = (res // 8) ** 2
  config.model = ml_collections.ConfigDict(dict(
      image=image, text=tower, decoder=dict(tower), out_dim=width,
      vocab_size=49408, max_len=arg.max_len,
      # One query for the contrastive embedding, one per patch for the
      # decoder (open_clip: 256 at any resolution).
      num_queries=patches + 1, pool_heads=tower["num_heads"],
      uncond_prob=arg.uncond, dtype="float32"))
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0, impl="dense"),
      caption=dict(loss="caption", weight=arg.caption_weight,
                   label_smoothing=0.0)))

  config.total_steps = arg.steps
  config.warmup_steps = max(arg.steps // 10, 1) if arg.runlocal else 100
  config.log_steps = 5 if arg.runlocal else 25
  config.ckpt_steps = config.total_steps
  config.keep_ckpts = 2
  config.lr = 1e-3
  config.wd = 1e-4
  config.wd_mode = "coupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.999, eps=1e-8)
  config.grad_clip_norm = 1.0
  config.mesh = (("data", -1),)
  config.sharding_rules = ((".*", "replicate"),)
  config.evals = config_lib.demo_evals(
      res, arg.max_len, batch_size=32 if arg.runlocal else 256)
  config.evals.captioning = dict(
      type="captioning", data=config_lib.DEMO_DATA,
      split="test[:64]" if arg.runlocal else "test[:1000]",
      pp=pp.zeroshot_img.replace("|keep('image','label')", "|keep('image')"),
      captions_key="captions", batch_size=32 if arg.runlocal else 250,
      beam=1,
      # CLIPScore, RefCLIPScore and self-retrieval by the model's own
      # contrastive half.
      scorer="self", scorer_pp_txt=pp.text)
  # Zero-shot by the decoder's likelihood of each class prompt (CapPa's
  # protocol), next to the contrastive zero-shot above.
  config.evals.caption_zeroshot = dict(
      type="caption_scoring", data=config_lib.DEMO_DATA,
      split="test[:64]" if arg.runlocal else "test[:1000]",
      pp_img=pp.zeroshot_img, pp_txt=pp.text,
      templates=["a {}."] if arg.runlocal else "demo_shapes",
      batch_size=32 if arg.runlocal else 250, name="demo_shapes_scored")
  if arg.runlocal:
    for name in ("zeroshot", "retrieval"):
      config.evals[name].split = "test[:256]"
  return config


def fullsize_config(arg):
  """open_clip's CoCa architecture with the paper's recipe (see the module
  docstring)."""
  if arg.arch not in open_clip_coca.ARCHS:
    raise ValueError(f"configs/coca.py: arch={arg.arch!r}; known: "
                     f"{sorted(open_clip_coca.ARCHS)}.")
  model = open_clip_coca.model_config_from_open_clip(
      open_clip_coca.ARCHS[arg.arch])
  del model["name"]
  res = model["image"].get("image_size", 224)
  tokenize = f"tokenize(max_len={model['max_len']})"
  image_pp = f"decode|resize({res}, method='bicubic')"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.input = ml_collections.ConfigDict(dict(
      data=config_lib.shards_spec(arg.data), split="train", data_dir=None,
      batch_size=arg.batch or 65536,
      pp=f"{image_pp}|{tokenize}|keep('image','text')",
      device_pp="value_range(-1,1)",
      workers=8, read_threads=16, shuffle=True))
  config.model_name = "coca"
  config.model = ml_collections.ConfigDict(
      dict(model, uncond_prob=arg.uncond, dtype="bfloat16"))
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0, impl="ring"),
      caption=dict(loss="caption", weight=arg.caption_weight,
                   label_smoothing=0.0)))
  config.total_steps = arg.steps or 500_000
  config.warmup_steps = config.total_steps // 50
  config.log_steps = 50
  config.ckpt_steps = 1000
  config.lr = 8e-4
  config.wd = 0.01
  config.wd_mode = "decoupled"
  config.schedule = dict(name="linear", end_frac=0.0)
  config.optim = dict(name="adafactor", beta2_cap=0.999, momentum=0.9)
  config.grad_clip_norm = 1.0
  config.mesh = (("fsdp", -1),)
  config.sharding_rules = ((".*", "fsdp"),)
  config.evals = config_lib.fullsize_evals(
      image_pp, tokenize, every=10_000, imagenet=arg.imagenet, coco=arg.coco)
  config.evals.captioning = dict(
      type="captioning", every=10_000, data=arg.coco,
      pp=f"{image_pp}|value_range(-1,1)|keep('image')",
      captions_key="caption", batch_size=1024, beam=1, name="coco",
      scorer="self", scorer_pp_txt=tokenize)
  return config
