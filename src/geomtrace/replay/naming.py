"""Checkpoint names: the one registry of naming schemes, and what a name says (step, tokens, stage).

Every place that reads a step from a checkpoint's name (hub revisions, local folders, Lightning
files, the keys of an imported seed ``.npy``) asks :func:`parse_name`, which tries the entries of
:data:`NAMING_SCHEMES` in order. A new naming scheme is one :class:`NamingScheme` entry there;
``tests/test_replay_naming.py`` then checks it through discovery, ``--step-range`` and the seed
import without further edits.

Revision names understood (hub branches, also as local folder names):

* Pythia: ``step0``, ``step1``, ``step2``, ``step4`` … ``step512``, ``step1000`` … ``step143000``.
* OLMo (v1): ``step1000-tokens4B`` (also ``tokens4194M``, ``tokens2048MB``, ``tokens512K``).
* OLMo-2: ``stage1-step1000-tokens5B``, ``stage2-ingredient3-step1000-tokens5B``.
* Any other hub branch with a ``stepN`` part (``run7-step1000``); anything else (``main``)
  names no step.

Token counts are stored as integer numbers of tokens: ``K`` = 1e3, ``M`` = 1e6, ``B``/``G``
= 1e9, ``T`` = 1e12 (a trailing ``B`` after ``K``/``M``/``G``/``T``, as in ``2048MB``, is
read as "tokens", not bytes).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

__all__ = [
    "NAMING_SCHEMES",
    "CheckpointKind",
    "NamingScheme",
    "ParsedName",
    "natural_key",
    "parse_name",
    "parse_revision",
    "revision_sort_key",
]


class CheckpointKind(str, enum.Enum):
    """Where a checkpoint lives and so how it is loaded. A ``str``: ``kind == "hub"`` holds and
    records write the plain value."""

    HUB = "hub"  #: a hub revision (branch) of a model id
    HF_FOLDER = "hf_folder"  #: a folder saved with ``save_pretrained`` (HF Trainer ``checkpoint-N/``)
    PEFT_ADAPTER = "peft_adapter"  #: a folder holding only a PEFT adapter, replayed on its base model
    LIGHTNING_CKPT = "lightning_ckpt"  #: a Lightning ``.ckpt`` file

    def __str__(self) -> str:  # "hub", not "CheckpointKind.HUB", in messages and f-strings
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


#: The folder kinds: a folder's content says which of the two it is, its name gives the step.
FOLDER_KINDS = (CheckpointKind.HF_FOLDER, CheckpointKind.PEFT_ADAPTER)


class ParsedName(NamedTuple):
    """What a checkpoint name says; ``scheme`` is the registry entry that read it."""

    step: int | None
    tokens: int | None
    stage: str | None
    scheme: NamingScheme


_TOKEN_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}
_TOKENS_PART = re.compile(r"^tokens(\d+(?:\.\d+)?)([KMGBT]?)B?$", re.IGNORECASE)


def _parse_tokens(text: str) -> int | None:
    m = _TOKENS_PART.match(text)
    if not m:
        return None
    value, unit = m.group(1), m.group(2).upper()
    if "." in value:
        return int(round(float(value) * _TOKEN_UNITS[unit]))
    return int(value) * _TOKEN_UNITS[unit]


@dataclass(frozen=True)
class NamingScheme:
    """One way of naming checkpoints.

    Attributes:
        name: the entry's name (``"pythia"``, ``"hf_trainer"``, ...).
        pattern: a regular expression matched against the whole name. Named groups: ``step``
            (digits; a scheme without it names no step), ``stage`` (OLMo-2's training stage)
            and ``rest`` (dash-separated parts searched for a ``tokensN`` count).
        kinds: the checkpoint kinds whose names this scheme reads.
        example: a name this entry reads (the registry's tests build a checkpoint from it).
        ignore_case: match case-insensitively.
        copy_of_latest: a file that copies the newest checkpoint (Lightning's ``last.ckpt``): left
            out of a discovery that finds other checkpoints, and reported as such.
        note: what to tell the user about a checkpoint of this scheme that is left out.
    """

    name: str
    pattern: str
    kinds: tuple[CheckpointKind, ...]
    example: str
    ignore_case: bool = True
    copy_of_latest: bool = False
    note: str = ""

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)

    def match(self, name: str) -> ParsedName | None:
        """``(step, tokens, stage, self)`` when ``name`` is of this scheme, else None."""
        m = self.regex.fullmatch(name)
        if m is None:
            return None
        groups = m.groupdict()
        step = int(groups["step"]) if groups.get("step") is not None else None
        tokens = None
        for part in (groups.get("rest") or "").split("-"):
            tokens = _parse_tokens(part)
            if tokens is not None:
                break
        return ParsedName(step, tokens, groups.get("stage") or None, self)


_HUB_AND_FOLDERS = (CheckpointKind.HUB, *FOLDER_KINDS)
_LIGHTNING = (CheckpointKind.LIGHTNING_CKPT,)
# a dash-separated part that is exactly stepN, and what follows it
_STEP_PART = r"step(?P<step>\d+)(?=-|$)(?P<rest>.*)"

#: The naming schemes, tried in order (the first entry that reads a name wins).
NAMING_SCHEMES: tuple[NamingScheme, ...] = (
    NamingScheme("pythia", r"step(?P<step>\d+)", _HUB_AND_FOLDERS, example="step1000"),
    NamingScheme("olmo", _STEP_PART, _HUB_AND_FOLDERS, example="step1000-tokens4B"),
    NamingScheme(
        "olmo2", r"(?=step|stage)(?P<stage>.*?)-" + _STEP_PART, _HUB_AND_FOLDERS, example="stage1-step1000-tokens5B"
    ),
    NamingScheme("hf_trainer", r"checkpoint-(?P<step>\d+)", FOLDER_KINDS, example="checkpoint-1000", ignore_case=False),
    # any other hub branch naming a step; as a folder name it would be too loose
    NamingScheme("revision", r"(?:(?P<stage>.*?)-)??" + _STEP_PART, (CheckpointKind.HUB,), example="run7-step1000"),
    NamingScheme(
        "lightning_last",
        r"last(?:.*?(?i:step)[=_-]?(?P<step>\d+))?.*\.ckpt",
        _LIGHTNING,
        example="last.ckpt",
        ignore_case=False,
        copy_of_latest=True,
        note="Lightning's copy of the newest checkpoint (ModelCheckpoint(save_last=True)); the step=N files "
        "are replayed instead. Replay it on its own with --checkpoints PATH/last.ckpt",
    ),
    NamingScheme(
        "lightning",
        r".*?(?i:step)[=_-]?(?P<step>\d+).*\.ckpt",
        _LIGHTNING,
        example="epoch=0-step=100.ckpt",
        ignore_case=False,
    ),
    NamingScheme("lightning_other", r".*\.ckpt", _LIGHTNING, example="model.ckpt", ignore_case=False),
)


def parse_name(name: str, kind: CheckpointKind | str | None = None) -> ParsedName | None:
    """What ``name`` says by the first scheme of :data:`NAMING_SCHEMES` that reads it (among those
    for ``kind``, when given); None when none does."""
    want = None if kind is None else CheckpointKind(kind)
    for scheme in NAMING_SCHEMES:
        if want is None or want in scheme.kinds:
            parsed = scheme.match(name)
            if parsed is not None:
                return parsed
    return None


def parse_revision(name: str) -> tuple[int | None, int | None, str | None]:
    """Parse a revision name into ``(step, tokens, stage)``.

    ``"step1000"`` -> ``(1000, None, None)``; ``"step1000-tokens4B"`` -> ``(1000, 4_000_000_000,
    None)``; ``"stage2-ingredient2-step1000-tokens4B"`` -> ``(1000, 4_000_000_000,
    "stage2-ingredient2")``; names without a ``stepN`` part (``"main"``) -> ``(None, None, None)``.
    """
    parsed = parse_name(name.strip(), CheckpointKind.HUB)
    return (None, None, None) if parsed is None else (parsed.step, parsed.tokens, parsed.stage)


def natural_key(text: str) -> tuple:
    """Sort key putting ``"step10"`` after ``"step9"``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def revision_sort_key(name: str) -> tuple:
    """Sort key ordering revisions by (stage, step); names without a step go last."""
    step, _, stage = parse_revision(name)
    return (
        0 if step is not None else 1,
        natural_key(stage or ""),
        step if step is not None else 0,
        name,
    )
