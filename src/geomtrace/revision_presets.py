"""Named checkpoint grids (``--revisions NAME``): one declaration per preset, with what it is,
what differs from the paper's released scripts and why.

The paper's scripts (Li et al., 2025, github.com/melodylizx/Tracing-the-representation-geometry-of-language-models):

* ``rankme_alpha_scripts/compute_alpha_pythia.py`` runs ``step_nums = [0, 8, 16, 32, 64, 128,
  256, 512] + list(np.arange(1000, 143000 + 1, 1000))``: 151 Pythia checkpoints (no step1, 2,
  4); a coarser grid, ``[0, 1, 2, 4, ..., 512] + arange(1000, 143001, 10000)``, is commented out.
* ``rankme_alpha_scripts/compute_alpha_rankme_olmo2.py`` reads ``allenai/OLMo-1B``'s branch
  names (``stepN-tokensMB``) from a file and keeps every step <= 10000, then every step that is a
  multiple of 10000.

This module imports nothing (the command line's ``--revisions`` help and ``docs/replay.md`` are
derived from it); :mod:`geomtrace.replay.hub` expands the presets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "PYTHIA_COARSE_REVISIONS",
    "PYTHIA_PAPER_REVISIONS",
    "PYTHIA_REVISIONS",
    "REVISION_PRESETS",
    "RevisionPreset",
    "olmo_paper_step",
    "presets_help",
    "presets_markdown",
]


def _steps(steps: list[int]) -> list[str]:
    return [f"step{s}" for s in sorted(set(steps))]


#: All 154 Pythia checkpoints: step0, step1, 2, 4, …, 512 (log-spaced), then every 1000 steps
#: from step1000 to step143000 (the final one, also on ``main``).
PYTHIA_REVISIONS: list[str] = _steps([0, *(2**i for i in range(10)), *range(1000, 143001, 1000)])

#: Exactly the 151 steps of the paper's ``compute_alpha_pythia.py``.
PYTHIA_PAPER_REVISIONS: list[str] = _steps([0, 8, 16, 32, 64, 128, 256, 512, *range(1000, 143001, 1000)])

#: 30 roughly log-spaced Pythia checkpoints: the coarse grid commented out in the paper's script
#: (``[0, 1, 2, 4, …, 512] + range(1000, 143001, 10000)``) plus step2000, 4000, 8000 and step143000.
PYTHIA_COARSE_REVISIONS: list[str] = _steps(
    [0, *(2**i for i in range(10)), *range(1000, 143001, 10000), 2000, 4000, 8000, 143000]
)


def olmo_paper_step(step: int | None) -> bool:
    """The paper's OLMo grid: every step up to 10000, then every multiple of 10000."""
    return step is not None and (step <= 10000 or step % 10000 == 0)


@dataclass(frozen=True)
class RevisionPreset:
    """A named grid of hub revisions.

    Attributes:
        name: what ``--revisions`` takes.
        summary: what it is, in one line (the ``--revisions`` help).
        differs: what differs from the paper's released script and why ("" when nothing does).
        revisions: the fixed revision names, or ``()`` for a preset listed from the hub repo
            (needs network).
        keep: for a listed preset, which steps to keep (a branch whose name gives no step is
            passed None); without it, every branch that names a step (all, when none does).
        changed: for a name whose meaning changed, what it meant before (said when it is used).
    """

    name: str
    summary: str
    differs: str
    revisions: tuple[str, ...] = ()
    keep: Callable[[int | None], bool] | None = None
    changed: str = ""

    @property
    def listed(self) -> bool:
        """Whether the revisions are listed from the hub (network) rather than fixed."""
        return not self.revisions

    @property
    def size(self) -> str:
        """How many revisions, as said in the help: a number, or "listed"."""
        return "listed from the hub" if self.listed else str(len(self.revisions))


_PRESETS = (
    RevisionPreset(
        "pythia-paper",
        "the paper's Pythia grid, exactly what its compute_alpha_pythia.py runs: step0, step8, 16, ..., 512, then "
        "every 1000 steps from step1000 to step143000",
        "",
        tuple(PYTHIA_PAPER_REVISIONS),
        changed="earlier geomtrace 0.1 builds gave this name to the 30-step coarse grid, now `pythia-coarse`",
    ),
    RevisionPreset(
        "pythia-coarse",
        "30 roughly log-spaced Pythia steps: step0, 1, 2, 4, ..., 512, step1000 and every 10000 to step141000, "
        "plus step2000, 4000, 8000 and step143000",
        "not the paper's grid: the coarse grid left commented out in its script, plus step2000/4000/8000 for the "
        "early phases and the final step143000; a 5x cheaper overview of the three phases (for Pythia-12B "
        "about 0.7 TB of downloads instead of 3.6 TB)",
        tuple(PYTHIA_COARSE_REVISIONS),
    ),
    RevisionPreset(
        "pythia",
        "all 154 Pythia checkpoints: step0, 1, 2, 4, ..., 512, then every 1000 steps to step143000",
        "the paper's grid plus step1, step2, step4, which its script skips",
        tuple(PYTHIA_REVISIONS),
    ),
    RevisionPreset(
        "olmo-paper",
        "the paper's OLMo grid: every branch of the repo with a step up to 10000, then every multiple of 10000 "
        "(lists the repo's branches: needs network)",
        "the grid only: the paper's script also loads allenai/OLMo-1B with trust_remote_code in fp16 and probes "
        "with 33..512 tokens; recipes/replay_olmo1_paper.yaml sets those (that repo needs ai2-olmo)",
        keep=olmo_paper_step,
    ),
    RevisionPreset(
        "all",
        "every branch of the repo that names a step (lists the repo's branches: needs network)",
        "not a paper grid: whatever the repo holds",
    ),
)

#: The presets by name (``--revisions NAME``), in the order the help lists them.
REVISION_PRESETS: dict[str, RevisionPreset] = {p.name: p for p in _PRESETS}


def presets_help() -> str:
    """The presets as the ``--revisions`` help lists them."""
    return "; ".join(f"{p.name} ({p.size}): {p.summary}" for p in REVISION_PRESETS.values())


def presets_markdown() -> str:
    """The presets as the table of ``docs/replay.md`` (a test keeps the page in step)."""
    rows = ["| `--revisions` | checkpoints | what it is | differs from the paper |", "| --- | --- | --- | --- |"]
    for p in REVISION_PRESETS.values():
        differs = p.differs or "nothing"
        if p.changed:
            differs += f" ({p.changed})"
        rows.append(f"| `{p.name}` | {p.size} | {p.summary} | {differs} |")
    return "\n".join(rows)
