r"""CapPa (Tschannen et al. 2023): an image captioner trained with parallel
prediction, on the demo shapes data.

A ViT encodes the image; a transformer decoder predicts the caption from
its patch tokens. 75% of the examples (the paper's `parallel_fraction`)
are predicted in parallel: every decoder input is the mask token and the
causal mask is off, so each word must come from the image; the rest are
teacher-forced. `uncond_prob` (default 0) drops the image for a fraction
of examples so that the model also learns p(caption), for classifier-free
guidance at decoding.

Run (the demo data is built on first use):

    python -m big_vl.train --config=configs/cappa.py --workdir=workdirs/cappa
    python -m big_vl.train --config=configs/cappa.py:runlocal \
        --workdir=/tmp/cappa    # 20 steps, 32x32 images, tiny towers

Metrics: train/caption/loss, train/caption/token_acc,
train/caption/perplexity; at the end, greedy captions of the test split
(64 images with `runlocal`, 1,000 otherwise) scored against their 5
references: captioning/demo_shapes/cider, bleu_1 ... bleu_4.

Measured (2026-12-07, 2 CPU cores; tests/test_captioner.py
`test_cappa_captions_far_above_the_caption_agnostic_baseline`):
`:runlocal,steps=600,parallel=0` with `--config.lr=3e-3` reaches CIDEr-D
1.574 / 1.465 / 1.627 (seeds 0 / 1 / 2, 4.5 min each) on the 64 runlocal
test images, against 0.390 for the most frequent training caption given to
every image; `steps=300` (the test's length) 0.861 / 0.675 / 1.210. With the paper's parallel prediction (0.75) the same 600
steps give 1.371 and 0.395 (seeds 0 and 1): the second names the right
shapes but does not learn to stop in that budget.

Full size (`fullsize`): the paper's ViT-B/16 recipe as big_vision's
reference config (`configs/proj/cappa/pretrain.py`) writes it: 224 px,
patch 16, a 6-layer decoder as wide as the encoder (768, 12 heads, MLP
3072), 64 text tokens, batch 8,192, 366,500 steps (3B examples), big_vision's
Adafactor (beta2_cap 0.999, momentum 0.9) at lr 1e-3 with 10,000 warm-up
steps and cosine decay, decoupled weight decay 1e-4, gradient clipping 1.0,
parallel prediction 0.75, bfloat16 compute, FSDP over every device. Two
substitutions, because neither original is public: WebLI is replaced by
LAION-400M WebDataset shards (`data=`, as configs/clip.py), and the
32,000-piece c4_en SentencePiece vocabulary by CLIP BPE (49,408 ids).
Evaluation every 10,000 steps and at the end: greedy captions of the COCO
Karpathy test split scored by CIDEr / BLEU (`coco=SPEC`, the jsonl listing
of README "Data") and zero-shot ImageNet by the decoder's likelihood of
"a photo of a {class}." (`imagenet=SPEC`; CapPa's scoring protocol). Not
run here (no accelerator); its pp and parameter layout are checked by
tests/test_configs_fullsize.py.

    python -m big_vl.train --config=configs/cappa.py:fullsize \
        --workdir=gs://BUCKET/cappa_b16

big_vision's own CapPa checkpoints (`big_vision.models.proj.cappa`)
convert to a big_vl captioner that `python -m big_vl.caption` and
`Predictor.caption` run (README "Pretrained weights"):

    python -m big_vl.convert --from big_vision --src cappa.npz \
        --tokenizer_model=c4_en.model --out workdirs/cappa_b16

Args (after the colon): `runlocal`, `steps=N`, `batch=N` (with
`runlocal` too: its sizes, trained longer), `parallel=F`
(parallel_fraction), `uncond=F` (uncond_prob), `res=N`, `max_len=N`;
`fullsize` with `variant=B/16`, `data=SHARDS`, `imagenet=SPEC`,
`coco=SPEC` (steps, batch, res and max_len keep the paper's values unless
given).
"""

import ml_collections

from big_vl import config as config_lib


def get_config(arg=None):
  """The CapPa demo config, or the paper's recipe with `fullsize`."""
  arg = config_lib.parse_arg(arg, runlocal=False, fullsize=False, steps=0,
                             batch=0, parallel=0.75, uncond=0.0, res=0,
                             max_len=0, variant="B/16",
                             data=config_lib.LAION400M_SHARDS,
                             imagenet=config_lib.IMAGENET_DATA,
                             coco=config_lib.COCO_DATA)
  if arg.fullsize:
    if arg.runlocal:
      raise ValueError("configs/cappa.py: `runlocal` is the demo config's; "
                       "drop `fullsize`.")
    return fullsize_config(arg)
  arg.steps = arg.steps or (20 if arg.runlocal else 800)
  arg.batch = arg.batch or (32 if arg.runlocal else 128)
  arg.res, arg.max_len = arg.res or 64, arg.max_len or 24
  res = 32 if arg.runlocal else arg.res
  config = ml_collections.ConfigDict()
  config.seed = 0
  pp = config_lib.demo_pp(res, arg.max_len)
  config.input = ml_collections.ConfigDict(dict(
      data=config_lib.data_field(config_lib.DEMO_DATA), split="train",
      data_dir=None, batch_size=arg.batch,
      pp=pp.train, workers=0, read_threads=4, shuffle=True))

  config.model_name = "captioner"
  image = (dict(variant="mu/8") if arg.runlocal else
           dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8))
  decoder = (dict(width=64, depth=2, mlp_dim=256, num_heads=2)
             if arg.runlocal else
             dict(width=128, depth=4, mlp_dim=512, num_heads=4))
  config.model = ml_collections.ConfigDict(dict(
      image=dict(pool_type="gap", **image), decoder=decoder,
      vocab_size=49408, max_len=arg.max_len,
      parallel_fraction=arg.parallel, uncond_prob=arg.uncond,
      mask_token=0, dtype="float32"))
  config.objectives = ml_collections.ConfigDict(dict(
      caption=dict(loss="caption", weight=1.0, label_smoothing=0.0)))

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
  # Greedy captions of the test split, scored against its 5 references.
  config.evals = ml_collections.ConfigDict(dict(captioning=dict(
      type="captioning", data=config_lib.DEMO_DATA,
      split="test[:64]" if arg.runlocal else "test[:1000]",
      pp=pp.zeroshot_img.replace("|keep('image','label')", "|keep('image')"),
      captions_key="captions", batch_size=32 if arg.runlocal else 250,
      beam=1)))
  return config


def fullsize_config(arg):
  """The paper's ViT-B/16 CapPa (see the module docstring)."""
  res, max_len = arg.res or 224, arg.max_len or 64
  config = ml_collections.ConfigDict()
  config.seed = 0
  image_pp = f"decode|resize({res})"
  tokenize = f"tokenize(max_len={max_len})"
  config.input = ml_collections.ConfigDict(dict(
      # WebDataset samples: "image" (encoded) and "text" (KEY.txt).
      data=config_lib.shards_spec(arg.data), split="train", data_dir=None,
      batch_size=arg.batch or 8192,
      pp=f"{image_pp}|{tokenize}|keep('image','text')",
      device_pp="value_range(-1,1)",  # uint8 from the host
      workers=8, read_threads=16, shuffle=True))
  config.model_name = "captioner"
  config.model = ml_collections.ConfigDict(dict(
      image=dict(variant=arg.variant, pool_type="gap", posemb="learn"),
      # As wide as the encoder (big_vision's decoder_emb_dim=0).
      decoder=dict(width=768, depth=6, mlp_dim=3072, num_heads=12,
                   remat_policy="none", scan=False),
      vocab_size=49408, max_len=max_len, parallel_fraction=arg.parallel,
      uncond_prob=arg.uncond, mask_token=0, dtype="bfloat16"))
  config.objectives = ml_collections.ConfigDict(dict(
      caption=dict(loss="caption", weight=1.0, label_smoothing=0.0)))
  config.total_steps = arg.steps or 366_500
  config.warmup_steps = 10_000
  config.log_steps = 50
  config.ckpt_steps = 1000
  config.lr = 1e-3
  config.wd = 1e-4
  config.wd_mode = "decoupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adafactor", beta2_cap=0.999, momentum=0.9)
  config.grad_clip_norm = 1.0
  config.mesh = (("fsdp", -1),)
  config.sharding_rules = ((".*", "fsdp"),)
  img = f"{image_pp}|value_range(-1,1)"
  config.evals = ml_collections.ConfigDict(dict(
      captioning=dict(
          type="captioning", every=10_000, data=arg.coco,
          pp=f"{img}|keep('image')", captions_key="caption",
          batch_size=1024, beam=1, name="coco"),
      caption_zeroshot=dict(
          type="caption_scoring", every=10_000, data=arg.imagenet,
          split="validation", pp_img=f"{img}|keep('image','label')",
          pp_txt=tokenize, templates=["a photo of a {}."],
          class_names="imagenet", batch_size=1024, name="imagenet")))
  return config
