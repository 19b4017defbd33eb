"""House rules checked on the source tree itself (issue 16, part 2).

No private name crosses a module boundary: a helper another module needs is public in its own
module (no leading underscore, listed in ``__all__``). ``from geomtrace import _signals`` is
fine, since ``_signals`` is a house *module*, not a private name; dunder names are fine too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "geomtrace"

#: ``(importing file, "geomtrace.module.name")`` uses tolerated for now. Each entry must still
#: occur (the test fails on a stale one), so the list only shrinks.
ALLOWED: set[tuple[str, str]] = set()
# Names owned by replay/runner.py and tracking.py go here, each with the comment
# ``# until runner.py switches (issue 16)``; today none is imported elsewhere (cli.py takes
# ``load_tokenizer`` from replay/loading.py).


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_uses(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, "geomtrace.module._name")`` for each private name of another module used in ``path``."""
    here = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source, filename=str(path))
    found: list[tuple[int, str]] = []
    bound: dict[str, str] = {}  # local name -> the geomtrace module it names

    def check(line: int, module: str, name: str) -> None:
        target = f"{module}.{name}"
        if module != here and _private(name) and target not in MODULES:
            found.append((line, target))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, here, path.name == "__init__.py")
            if module.split(".")[0] != "geomtrace":
                continue
            for alias in node.names:
                check(node.lineno, module, alias.name)
                if f"{module}.{alias.name}" in MODULES:
                    bound[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "geomtrace":
                    bound[alias.asname or "geomtrace"] = alias.name if alias.asname else "geomtrace"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, value = [node.attr], node.value  # geomtrace.replay.store._x -> store, replay, geomtrace
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in bound:
            continue
        module = bound[value.id]
        for part in reversed(chain[1:]):  # walk down through submodules
            if f"{module}.{part}" not in MODULES:
                break
            module = f"{module}.{part}"
        else:
            check(node.lineno, module, chain[0])
    return sorted(found)


def test_the_scanner_sees_each_kind_of_use():
    source = (
        "from geomtrace import _signals\n"  # a house module: fine
        "from geomtrace.features import _hidden, find_causal_lm\n"
        "from geomtrace.replay import store\n"
        "import geomtrace.measure\n"
        "import geomtrace.probes as probes\n"
        "store._helper()\n"
        "geomtrace.measure._bar\n"
        "probes._offline()\n"
        "probes.__name__\n"  # dunder: fine
    )
    assert private_uses(PACKAGE / "cli.py", source) == [
        (2, "geomtrace.features._hidden"),
        (6, "geomtrace.replay.store._helper"),
        (7, "geomtrace.measure._bar"),
        (8, "geomtrace.probes._offline"),
    ]


def test_no_private_name_is_imported_across_modules():
    uses = {
        (str(path.relative_to(SRC)), target): line
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, target in private_uses(path)
    }
    bad = sorted(f"{file}:{line}: {target}" for (file, target), line in uses.items() if (file, target) not in ALLOWED)
    assert not bad, "private names used across modules (make them public in their module):\n" + "\n".join(bad)
    stale = sorted(f"{file}: {target}" for file, target in ALLOWED if (file, target) not in uses)
    assert not stale, "allowlisted uses that are gone (remove them from ALLOWED):\n" + "\n".join(stale)
