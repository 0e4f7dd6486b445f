"""`make test` runs pytest on xdist workers with --dist loadgroup, so that the
tests sharing a costly session fixture (the gpu_check dry run, the sm_90
compiles, the quick benchmark) run on one worker and make it once.  pytest
9.2 made that grouping silently stop (pytest-dev/pytest-xdist#1386): each
fixture was then made on both workers, about 6 minutes of CI.  This fails
if a marked test runs ungrouped."""
import os

import pytest


@pytest.mark.xdist_group("xdist_group_check")
def test_xdist_group_marks_take_effect(request):
    # Only under `make test` (which sets the variable), with requirements.txt's
    # pytest; a GPU machine's own pytest (gpu_check) may be 9.2, only slower.
    if not os.environ.get("RNN_EXT_CHECK_XDIST_GROUPS"):
        pytest.skip("checks make test's grouping (make test sets RNN_EXT_CHECK_XDIST_GROUPS)")
    if os.environ.get("PYTEST_XDIST_WORKER") is None or not getattr(request.config.option, "loadgroup", False):
        pytest.skip("checks pytest-xdist's --dist loadgroup (make test runs it)")
    assert request.node.nodeid.endswith("@xdist_group_check"), (
        f"{request.node.nodeid}: --dist loadgroup did not group this test; the xdist_group "
        "marks have no effect with this pytest and pytest-xdist (see requirements.txt)")
