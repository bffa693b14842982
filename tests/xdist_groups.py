"""Which tests must share a pytest-xdist worker (``python -m pytest -n 2``), decided from the test files.

pytest-xdist 3.8's own ``--dist loadgroup`` reads ``xdist_group`` marks by rewriting ``item._nodeid``,
which pytest 9 no longer reads (its node ids come from ``item._id``): the marks are silently ignored and
every test goes to any worker. So tests/conftest.py installs :class:`SharedFixtureScheduling` instead
(``pytest_xdist_make_scheduler``, for ``python -m pytest -n 2 --dist loadgroup``). It keeps on one
worker, in file order:

- every file whose tests use the session's shared Flower deployment (``flower_deployment``): it starts once
  per run, on that worker, and its users run one after the other as without xdist;
- the headless-Chromium files (``tests/test_browser*.py``): one `streamlit run` and one browser at a time;
- each file that defines, or imports from another test file, a fixture of a wider scope than a function
  (a module's trained run, a Flower deployment of its own): built once, as without xdist.

Any other test may go to either worker. A file is read (``ast``), never imported, by the scheduler.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

SHARED_DEPLOYMENT = "flower_deployment"
BROWSER = "browser"


def _fixture_scope(node: ast.FunctionDef) -> str | None:
    """The scope of a ``@pytest.fixture(...)`` function ("function" when none is given), None if not one."""
    for decorator in node.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        target = call.func if call else decorator
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            for keyword in call.keywords if call else ():
                if keyword.arg == "scope" and isinstance(keyword.value, ast.Constant):
                    return str(keyword.value.value)
            return "function"
    return None


@lru_cache(maxsize=None)
def _read(path: Path) -> tuple[frozenset[str], frozenset[str], tuple[tuple[str, frozenset[str]], ...]]:
    """(names of its wider-than-function fixtures, every argument name, (test module, names) it imports)."""
    tree = ast.parse(path.read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    shared = frozenset(f.name for f in functions if _fixture_scope(f) not in (None, "function"))
    arguments = frozenset(a.arg for f in functions for a in f.args.args)
    imports = tuple((node.module, frozenset(alias.name for alias in node.names)) for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"))
    return shared, arguments, imports


def file_group(path: Path) -> str | None:
    """The worker group of every test in ``path`` (see the module docstring), None if they may be spread."""
    shared, arguments, imports = _read(path)
    if SHARED_DEPLOYMENT in arguments:
        return SHARED_DEPLOYMENT
    if path.name.startswith("test_browser"):
        return BROWSER
    imported = any(names & _read(path.parent / f"{module.rsplit('.', 1)[1]}.py")[0]
                   for module, names in imports if (path.parent / f"{module.rsplit('.', 1)[1]}.py").exists())
    return str(path) if shared or imported else None


def make_scheduler(config: pytest.Config, log):
    """A ``LoadScopeScheduling`` whose work units are :func:`file_group`'s groups, single tests otherwise."""
    from xdist.scheduler import LoadScopeScheduling

    root = Path(config.rootpath)

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            group = file_group(root / nodeid.split("::", 1)[0])
            return group if group is not None else nodeid

    return SharedFixtureScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup`` with :func:`file_group`'s groups; any other --dist as xdist has it."""
    return make_scheduler(config, log) if config.getvalue("dist") == "loadgroup" else None
