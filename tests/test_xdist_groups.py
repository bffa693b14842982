"""tests/xdist_groups.py: which test files must keep their tests on one pytest-xdist worker."""

from __future__ import annotations

from pathlib import Path

from tests.xdist_groups import BROWSER, SHARED_DEPLOYMENT, file_group

TESTS = Path(__file__).resolve().parent


def test_the_shared_deployment_the_browser_and_module_fixtures_keep_their_files_together():
    for name in ("test_flower.py", "test_flower_research.py", "test_flower_scaffold.py", "test_flower_secagg.py"):
        assert file_group(TESTS / name) == SHARED_DEPLOYMENT, name
    for name in ("test_browser.py", "test_browser_byod.py", "test_browser_deployment.py"):
        assert file_group(TESTS / name) == BROWSER, name
    for name in ("test_flower_hostile.py", "test_bad_inputs.py", "test_preprocess.py",  # module / session scope
                 "test_fedbuff.py"):  # imports test_engine_composition's module-scoped ``bench``
        assert file_group(TESTS / name) == str(TESTS / name), name
    assert file_group(TESTS / "test_aggregation.py") is None  # function-scoped fixtures only: spread


def test_a_fixture_is_shared_only_with_a_wider_scope(tmp_path):
    (tmp_path / "test_one.py").write_text(
        "import pytest\n@pytest.fixture\ndef a(): ...\n@pytest.fixture(scope='function')\ndef b(): ...\n"
        "def test_x(a, b): ...\n")
    (tmp_path / "test_two.py").write_text("import pytest\n@pytest.fixture(scope='module')\ndef c(): ...\n")
    (tmp_path / "test_three.py").write_text("from tests.test_two import c\ndef test_y(c): ...\n")
    (tmp_path / "test_four.py").write_text("def test_z(flower_deployment): ...\n")
    assert file_group(tmp_path / "test_one.py") is None
    assert file_group(tmp_path / "test_two.py") == str(tmp_path / "test_two.py")
    assert file_group(tmp_path / "test_three.py") == str(tmp_path / "test_three.py")
    assert file_group(tmp_path / "test_four.py") == SHARED_DEPLOYMENT
