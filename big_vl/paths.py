r"""Parameter paths and the one rule matcher that every rule list uses.

A parameter's path is its keys in the params tree joined by "/", e.g.
`img/Transformer/encoderblock_3/MlpBlock_0/Dense_0/kernel`,
`txt/head/kernel` or `t`. A rule is a Python regex that must match the
WHOLE path (`re.fullmatch`):

    img/.*             every parameter of the image tower
    .*/kernel          every kernel, in any tower
    .*/head/kernel     both towers' head kernels
    txt/head/kernel    the text head's kernel only
    head/kernel        no parameter (none is called that): an error

A rule means the same parameters in every list that takes rules:

    config.frozen                [rule, ...]                 never updated
    config.lr_rules              [(rule, multiplier), ...]   first match wins;
                                                             unmatched: 1
    config.wd_rules              [(rule, multiplier), ...]   first match wins;
                                                             unmatched: 0
    config.sharding_rules        [(rule, spec), ...]         first match wins;
                                                             unmatched:
                                                             replicated
    config.layer_decay           {key: rate}                 key K covers
                                                             what `K/.*` does
    config.model_load.dont_load  [rule, ...]                 keep their init

Sharding rules place the whole train state, and a parameter's copies in it
follow the parameter: the optimiser moments and the EMA of `img/head/kernel`
(state paths `opt/0/mu/img/head/kernel`, `ema/img/head/kernel`) are matched
as `img/head/kernel`, so `img/.*` also shards the image tower's Adam
moments. State leaves that are no parameter's copy (`step`, `rng`, optimiser
step counts) are replicated.

Nothing is silent: at start-up (`check_config_rules`, called when the run's
parameter shapes are known and before anything is put on a device) a rule
that matches no parameter is an error naming the config key, the rule and
the closest real paths; in a first-match list, so is a rule that never
applies because earlier rules take every parameter it matches.
"""

import difflib
import functools
import re

import jax

# The rule lists of a training config, as "dotted.key": ordered (first match
# wins; each entry a (rule, value) pair) or not (a list of rules).
RULE_LISTS = {
    "frozen": False,
    "lr_rules": True,
    "wd_rules": True,
    "sharding_rules": True,
    "layer_decay": False,
    "model_load.dont_load": False,
}


def _key_name(k):
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def tree_paths(tree):
  """Pytree of "/"-joined path strings, with the structure of `tree`."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: "/".join(_key_name(k) for k in p), tree)


def leaf_paths(tree):
  """The "/"-joined paths of `tree`'s leaves, in leaf order."""
  return jax.tree.leaves(tree_paths(tree))


@functools.lru_cache(maxsize=4096)
def _compile(rule):
  return re.compile(rule)


def compile_rule(rule, where="rule"):
  """The compiled regex of `rule`, with an error naming `where` if bad."""
  if not isinstance(rule, str):
    raise ValueError(f"{where}: a rule must be a regex string, got "
                     f"{rule!r} ({type(rule).__name__}).")
  try:
    return _compile(rule)
  except re.error as e:
    raise ValueError(f"{where}: {rule!r} is not a valid regex ({e}).") from e


def matches(rule, path):
  """Whether `rule` matches the whole parameter path `path`."""
  return compile_rule(rule).fullmatch(path) is not None


def first_match(rules, path):
  """The value of the first `(rule, value)` in `rules` matching `path`.

  Args:
    rules: sequence of (regex, value) pairs.
    path: a parameter path, e.g. "img/head/kernel".

  Returns:
    The value of the first matching rule, or None.
  """
  for rule, value in rules:
    if matches(rule, path):
      return value
  return None


def subtree_rest(key, path):
  """The rest of `path` below the subtree `key` (None if not under it).

  `key` covers exactly the paths that the rule `KEY/.*` covers:
  `subtree_rest("img", "img/head/kernel") == "head/kernel"`.
  """
  m = compile_rule(f"(?:{key})/(?P<rest>.*)").fullmatch(path)
  return None if m is None else m.group("rest")


def param_path(path, param_paths):
  """The parameter a state leaf belongs to: its longest "/"-suffix that is a
  parameter path (`opt/0/mu/img/head/kernel` -> `img/head/kernel`), or
  None (`step`, `opt/0/count`)."""
  if path in param_paths:
    return path
  parts = path.split("/")
  for i in range(1, len(parts)):
    suffix = "/".join(parts[i:])
    if suffix in param_paths:
      return suffix
  return None


def _closest(rule, paths, n=3):
  """Real paths (and subtree rules such as `img/.*`) closest to `rule`."""
  candidates = set(paths)
  for path in paths:
    parts = path.split("/")
    for i in range(1, len(parts)):
      candidates.add("/".join(parts[:i]) + "/.*")
  return difflib.get_close_matches(rule, sorted(candidates), n=n, cutoff=0.3)


def _no_match_error(where, rule, paths, what=None):
  close = _closest(rule, paths)
  trailing = []
  try:
    tail = re.compile(f"(?:^|/)(?:{rule})$")
    trailing = [p for p in paths if tail.search(p)]
  except re.error:
    pass
  what = what or f"rule {rule!r}"
  message = (f"{where}: {what} matches no parameter. Rules match the "
             "whole '/'-joined parameter path (re.fullmatch; see "
             "big_vl/paths.py).")
  if trailing:
    message += (f" It matches the end of {len(trailing)} path(s), e.g. "
                f"{trailing[0]!r}: write {'.*/' + rule!r} to match below any "
                "prefix.")
  if close:
    message += f" Closest paths: {', '.join(close)}."
  tops = sorted({p.split("/")[0] for p in paths})
  message += f" Top-level names: {', '.join(tops)}."
  return ValueError(message)


def _rule_of(entry, where, ordered):
  if ordered:
    if isinstance(entry, str) or len(entry) != 2:
      raise ValueError(f"{where}: each entry must be a (regex, value) pair, "
                       f"got {entry!r}.")
    return entry[0]
  return entry


def check_rules(where, rules, paths, *, ordered):
  """Raises unless every rule in `rules` matches (and, if `ordered`, wins)
  at least one of `paths`.

  Args:
    where: the config key in messages, e.g. "config.frozen".
    rules: a list of regexes, or of (regex, value) pairs if `ordered`.
    paths: the parameter paths.
    ordered: first match wins (lr/wd/sharding rules): a rule that only
      matches paths an earlier rule takes is an error too.

  Raises:
    ValueError: naming `where`, the rule and the closest real paths.
  """
  if isinstance(rules, str):
    raise ValueError(f"{where} must be a list of regexes, not the string "
                     f"{rules!r}; write ({rules!r},).")
  paths = list(paths)
  taken = {}  # path -> the earlier rule that takes it
  for i, entry in enumerate(rules):
    rule = _rule_of(entry, where, ordered)
    pattern = compile_rule(rule, where)
    hits = [p for p in paths if pattern.fullmatch(p)]
    if not hits:
      raise _no_match_error(where, rule, paths)
    if ordered:
      fresh = [p for p in hits if p not in taken]
      if not fresh:
        raise ValueError(
            f"{where}: rule #{i} {rule!r} never applies: earlier rules take "
            f"every parameter it matches (e.g. {hits[0]!r} is taken by "
            f"{taken[hits[0]]!r}). Move it before them or remove it.")
      for p in fresh:
        taken[p] = rule


def _get(config, dotted):
  value = config
  for part in dotted.split("."):
    if value is None or part not in value:
      return None
    value = value[part]
  return value


def check_config_rules(config, params, keys=tuple(RULE_LISTS)):
  """Checks a run config's rule lists against the model's parameters.

  Args:
    config: the run's ConfigDict.
    params: the params pytree (arrays or ShapeDtypeStructs).
    keys: which lists of `RULE_LISTS` to check.

  Raises:
    ValueError: for a rule that matches no parameter (or never applies),
      naming `config.KEY`, the rule and the closest real paths.
  """
  paths = leaf_paths(params)
  for key in keys:
    rules = _get(config, key)
    if not rules:
      continue
    where = f"config.{key}"
    if key == "layer_decay":
      # A key K covers the subtree K, i.e. what the rule `K/.*` covers.
      for tower in rules:
        if not any(subtree_rest(tower, p) is not None for p in paths):
          raise _no_match_error(
              where, f"{tower}/.*", paths,
              what=f"key {tower!r} (the subtree rule '{tower}/.*')")
      continue
    if not isinstance(rules, str):
      rules = list(rules)
    check_rules(where, rules, paths, ordered=RULE_LISTS[key])
