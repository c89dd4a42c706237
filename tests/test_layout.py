"""The code's layout: who may import the trainer, and long modules say why."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Modules longer than this say why in their docstring ("Length: ...").
LONG = 500


def _modules():
  for root, _, names in os.walk(os.path.join(REPO, "big_vl")):
    for name in sorted(names):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        yield os.path.relpath(path, REPO), open(path).read()


def test_only_entry_points_import_the_trainer():
  allowed = {"big_vl/evaluate.py", "big_vl/sweep.py"}
  found = set()
  for rel, text in _modules():
    if rel.startswith("big_vl/train/"):
      continue
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.ImportFrom) and node.module and (
          node.module == "big_vl.train"
          or node.module.startswith("big_vl.train.")
          or (node.module == "big_vl"
              and any(a.name == "train" for a in node.names))):
        found.add(rel)
      elif isinstance(node, ast.Import) and any(
          a.name.startswith("big_vl.train") for a in node.names):
        found.add(rel)
  assert found <= allowed, sorted(found - allowed)
  assert found  # the check sees the entry points that do


def test_long_modules_say_why():
  unexplained = [
      f"{rel} ({text.count(chr(10))} lines)" for rel, text in _modules()
      if text.count("\n") > LONG
      and "Length: " not in (ast.get_docstring(ast.parse(text)) or "")]
  assert not unexplained, unexplained
