"""Print pip constraints pinning every `>=` floor that pyproject.toml declares (`name==floor`).

The floors are declared once, in pyproject.toml; `.ci/min-versions` installs with these pins.
torch is left out: its floor's only Linux x86_64 build on PyPI is a CUDA one (about 3 GB of
nvidia wheels), so the job uses the CPU wheel `.ci/run` installs (see .ci/min-versions).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

UNPINNED = {"torch"}
#: Upper bounds on packages geomtrace does not declare, where the newest release breaks beside a
#: declared floor without saying so in its metadata (pip would install it). A user at these floors
#: needs the same bound.
TRANSITIVE = {
    # pyarrow 26 (pulled in by datasets) needs numpy >= 2 at import but does not declare it.
    "pyarrow": "<26",
}


def floors(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    out: dict[str, str] = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*(;.*)?", requirement)
        if match and match.group(1).lower() not in UNPINNED:
            name = match.group(1).lower().replace("_", "-")
            out[name] = max(out.get(name, match.group(3)), match.group(3), key=_version_key)
    return out


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    for name, version in sorted(floors(root / "pyproject.toml").items()):
        print(f"{name}=={version}")
    for name, bound in TRANSITIVE.items():
        print(f"{name}{bound}")
