"""The test suite's own layout: what `make test` relies on to stay within its budget."""
import pytest


@pytest.mark.xdist_group("suite-layout")
def test_a_group_reaches_xdists_scheduler(request, pytestconfig):
    """conftest.py keeps the tests of one session fixture (the pipeline run, a database server) on
    one worker through xdist groups; a pytest that drops the group from the test's id spreads them
    over both workers and pays each fixture twice (pytest-dev/pytest-xdist#1386)."""
    if not pytestconfig.getoption("loadgroup", default=False):
        pytest.skip("not under `pytest -n N --dist loadgroup`")
    assert request.node.nodeid.endswith("@suite-layout")
