"""pytest hooks: a skip outside the `peer` and `realdata` markers fails the
test.

Only tests marked `peer` (optional heavy peers: PyTorch, open_clip, timm,
sentence-transformers) may skip, and only because a peer is not installed,
and tests marked `realdata` (optional real data from a system package), only
because the data is absent.
Any other skip (a `skipif`, an `importorskip` of a pinned dependency, a
`pytest.skip` in a test or fixture, a whole module skipped at collection)
hides breakage, so it is reported as a failure naming the reason. xfail
outcomes are left alone. tests/conftest.py imports these hooks;
tests/test_skip_policy.py checks them with pytester.
"""

import pytest

PEER_MARKER = "peer"
# Tests of optional real data (e.g. Fashion-MNIST from a Debian package) may
# skip too, with the install hint; CI sets BIG_VL_REQUIRE_REAL_DATA=1, under
# which their fixtures fail instead of skipping.
SKIPPABLE_MARKERS = (PEER_MARKER, "realdata")
HINT = ("only tests marked @pytest.mark.peer may skip (and those marked "
        "realdata, for absent optional data; see tests/"
        "skip_policy.py): install the missing pinned dependency "
        "(pip install -r requirements-dev.txt) or fix what the skip hid")


def _reason(longrepr):
  """The skip reason from a skipped report's longrepr (path, line, msg)."""
  if isinstance(longrepr, tuple) and len(longrepr) == 3:
    return str(longrepr[2]).removeprefix("Skipped: ")
  return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if (report.skipped and not hasattr(report, "wasxfail")
      and not any(item.get_closest_marker(m) for m in SKIPPABLE_MARKERS)):
    report.outcome = "failed"
    report.longrepr = (f"{item.nodeid} skipped ({call.when}): "
                       f"{_reason(report.longrepr)}\n{HINT}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  outcome = yield
  report = outcome.get_result()
  if report.skipped and not any(collector.get_closest_marker(m)
                                for m in SKIPPABLE_MARKERS):
    report.outcome = "failed"
    report.longrepr = (f"{collector.nodeid} skipped at collection: "
                       f"{_reason(report.longrepr)}\n{HINT}")
