"""tests/skip_policy.py: only `peer` tests may skip; any other skip fails."""

import os

pytest_plugins = ["pytester"]

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_skips_outside_peer_fail_and_peer_skips_are_listed(pytester):
  with open(os.path.join(TESTS, "skip_policy.py")) as f:
    pytester.makeconftest(f.read())
  pytester.makeini("[pytest]\nmarkers =\n  peer: heavy peers\n"
                   "  realdata: optional real data\n")
  pytester.makepyfile(
      test_a="""
import pytest

@pytest.mark.peer
def test_peer_may_skip():
  pytest.importorskip("no_such_peer_module")

@pytest.mark.realdata
def test_realdata_may_skip():
  pytest.skip("Fashion-MNIST IDX files not found: apt-get install ...")

@pytest.mark.skipif(True, reason="ftfy not installed")
def test_skipif_fails():
  pass

def test_importorskip_fails():
  pytest.importorskip("no_such_pinned_module")

@pytest.fixture
def needs_it():
  pytest.skip("built-in module big_vl.x not written yet")

def test_fixture_skip_fails(needs_it):
  pass

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail_is_left_alone():
  assert False

def test_passes():
  pass
""")
  result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
  outcomes = result.parseoutcomes()
  assert outcomes.get("skipped") == 2 and outcomes.get("passed") == 1
  assert outcomes.get("xfailed") == 1
  assert outcomes.get("failed") == 1 and outcomes.get("errors") == 2
  text = result.stdout.str()
  assert "SKIPPED [1] test_a.py:5: could not import 'no_such_peer_module'" in (
      text)
  assert "Fashion-MNIST IDX files not found" in text
  for expected in (
      "test_a.py::test_skipif_fails skipped (setup): ftfy not installed",
      "test_a.py::test_importorskip_fails skipped (call): could not import "
      "'no_such_pinned_module'",
      "test_a.py::test_fixture_skip_fails skipped (setup): built-in module "
      "big_vl.x not written yet",
      "only tests marked @pytest.mark.peer may skip"):
    assert expected in text, expected
  assert result.ret == 1


def test_a_module_skipped_at_collection_fails(pytester):
  with open(os.path.join(TESTS, "skip_policy.py")) as f:
    pytester.makeconftest(f.read())
  pytester.makepyfile(test_b="""
import pytest
nbformat = pytest.importorskip("no_such_nbformat")

def test_never_collected():
  pass
""")
  result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
  assert result.parseoutcomes() == {"errors": 1}
  assert ("test_b.py skipped at collection: could not import "
          "'no_such_nbformat'") in result.stdout.str()
  assert result.ret != 0
