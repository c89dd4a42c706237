"""A frozen two-tower model for few-shot adaptation: features and prompts.

Every adaptation method in `big_vl.adapt` keeps both towers frozen, so image
features are computed once per example and cached; only prompt methods
(CoOp, CoCoOp) run the text tower while training, through
`text_features(params, tokens, embeddings)`.

    bb = Backbone.load("workdirs/lit_fashion_mnist",
                       pp_img="decode|resize(28)|value_range(-1,1)|"
                              "keep('image','label')",
                       pp_txt="tokenize(max_len=16, tokenizer='wordpiece', "
                              "path=...)")
    x, y = bb.image_features(source)        # f32[N, D] unit rows, int[N]
    w = bb.zeroshot_weights(["trouser", ...], ["a photo of a {}."])  # [D, C]
    logits = bb.scale * x @ w
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from big_vl import models
from big_vl import pretrained
from big_vl import sharding
from big_vl.evaluators import common
from big_vl.evaluators import zeroshot


@dataclasses.dataclass
class Backbone:
  """A two-tower model with its params, preprocessing and tokenizer.

  Attributes:
    model: the flax two_towers module.
    params: its params (host or device arrays; never updated here).
    pp_img: pp string giving "image" (and the label) of an example.
    pp_txt: pp string tokenizing "text".
    batch_size: examples per compiled call when computing features.
    mesh: the Mesh features are computed on (default: all devices, data
      parallel).
  """
  model: object
  params: dict
  pp_img: str
  pp_txt: str
  batch_size: int = 256
  mesh: object = None

  def __post_init__(self):
    if self.mesh is None:
      self.mesh = sharding.make_mesh((("data", -1),))
    self._predict = models.make_predict_fn(self.model)
    self.tokenize = common.pp_tokenizer(self.pp_txt)
    self._text_fn = common.text_fn(self._predict)
    # The params on one device, for the small jitted computations of the
    # trained methods (prompt learning): features are computed over the
    # mesh from the host copy.
    self.device_params = jax.device_put(self.params, jax.devices()[0])

  @classmethod
  def load(cls, path, *, pp_img, pp_txt, batch_size=256, mesh=None):
    """The latest checkpoint of a training workdir or converted folder."""
    model_config, params = pretrained.load(path)
    return cls(models.get(model_config), params, pp_img, pp_txt,
               batch_size=batch_size, mesh=mesh)

  @property
  def scale(self):
    """The model's logit scale exp(t) as a Python float (CLIP's 100)."""
    return float(np.exp(np.asarray(self.params["t"])))

  def image_features(self, source, label_key="label"):
    """(f32[N, D] unit-norm features, int[N] labels) of every example.

    Args:
      source: a random-access source (e.g. `sources.get(...)`), or a list
        of example dicts.
      label_key: the label field `pp_img` keeps.
    """
    fn = jax.jit(lambda p, b: {"z": self._predict(p, image=b["image"])[0],
                               "label": b[label_key]})
    out = common.run_over(source, pp=self.pp_img, batch_size=self.batch_size,
                          mesh=self.mesh, fn=fn, params=self.params)
    return out["z"].astype(np.float32), out["label"].astype(np.int64)

  def zeroshot_weights(self, classnames, templates):
    """f32[D, C] prompt-ensemble classifier (see `zeroshot.classifier`)."""
    encode = lambda tokens: common.embed_tokens(
        tokens, batch_size=self.batch_size, mesh=self.mesh,
        predict_fn=self._predict, params=self.params, fn=self._text_fn)
    return zeroshot.classifier(encode, self.tokenize, classnames, templates)

  def token_embedding_table(self):
    """The text tower's token embedding table f32[vocab, width]."""
    return jnp.asarray(self.params["txt"]["Embed_0"]["embedding"])

  def text_features(self, params, tokens, embeddings):
    """Unit-norm text features f32[N, D] of token embeddings (traceable).

    Args:
      params: the model params (`self.device_params`; an argument so that
        jit does not embed them as constants).
      tokens: int32[N, L] token ids (pad mask and pooled position).
      embeddings: f32[N, L, width] token embeddings replacing the lookup.
    """
    return models.outputs_fn("two_towers")(
        self.model, {"params": params},
        {"text": tokens, "text_embeddings": embeddings})["ztxt"]
