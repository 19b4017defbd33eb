"""The docstring examples of src/geomtrace run as tests, one test per docstring with examples.

Only the modules whose source holds an example (``>>>``) are imported, so the integrations
(Lightning, transformers) are not imported for nothing; a module whose optional dependency is
missing is skipped with its install hint, not failed. A ``GeometryWarning`` fails the example.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import geomtrace

PACKAGE = Path(geomtrace.__file__).resolve().parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("geomtrace", *parts[: -1 if parts[-1] == "__init__" else None]))


def _examples() -> list:
    params = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        name = _module_name(path)
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            if (err.name or "").split(".")[0] == "geomtrace":
                raise
            params.append(pytest.param(None, id=name, marks=pytest.mark.skip(reason=f"{name}: {err}")))
            continue
        for test in doctest.DocTestFinder().find(module, name):
            if test.examples:
                params.append(pytest.param(test, id=test.name))
    return params


EXAMPLES = _examples()


def test_the_package_has_examples():
    assert any(param.id == "geomtrace.metrics.Geometry" for param in EXAMPLES)


@pytest.mark.filterwarnings("error::geomtrace.GeometryWarning")  # an example that warns shows a bad use
@pytest.mark.parametrize("example", EXAMPLES)
def test_docstring_example(example: doctest.DocTest):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    runner.run(example, out=report.append)
    assert runner.failures == 0, "".join(report)
