"""What every option set shares: the :class:`OptionSet` base of the frozen option dataclasses and
the one shim that keeps the old flat keywords working.

The option sets (:class:`~geomtrace.probes.ProbeOptions`, :class:`~geomtrace.measure.MeasureConfig`,
:class:`~geomtrace.options.Schedule`, :class:`~geomtrace.phases.DetectorOptions`,
:class:`~geomtrace.options.LoadOptions`) are each declared once, as a frozen dataclass; the
callbacks, the tracker, ``run_replay`` and the command line take them as objects, and everything
that lists their fields (the record, the transformers checkpoint state, the command line's
``--GROUP.FIELD`` options, the deprecation shim) derives the list from :func:`dataclasses.fields`.

This module imports only the standard library (the command line builds its parser from these
classes without importing torch).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

__all__ = ["OptionSet", "legacy_options", "option_set"]

_T = TypeVar("_T", bound="OptionSet")


def _jsonish(value: Any) -> Any:
    """Tuples as lists, paths as strings (the shape JSON gives back)."""
    if isinstance(value, (tuple, list)):
        return [_jsonish(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class OptionSet:
    """Base of the frozen option dataclasses: names, ``to_dict``/``from_dict`` and validation.

    A subclass is a ``@dataclass(frozen=True)``; it may override :meth:`validate` (raise
    ``ValueError`` naming the option) and :meth:`to_dict`. ``group`` is the name the set goes by
    as a keyword (``measure=``) and on the command line (``--measure.layers``).
    """

    #: The keyword / command-line group this set goes by (``measure`` -> ``--measure.layers``).
    group: ClassVar[str] = ""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def unknown_names(cls, names: Any) -> str | None:
        """A message naming those of ``names`` that are no option (and the options), or None."""
        unknown = sorted(set(map(str, names)) - set(cls.field_names()))
        if not unknown:
            return None
        what = cls.group or cls.__name__
        return f"unknown {what} option(s) {', '.join(unknown)}; the options are {', '.join(cls.field_names())}"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option when a value is out of range (types are checked
        at construction)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python, JSON-ready dict of every option: the shape :meth:`from_dict` reads."""
        return {name: _jsonish(getattr(self, name)) for name in self.field_names()}

    @classmethod
    def from_dict(cls: type[_T], data: Mapping[str, Any]) -> _T:
        """Options from a mapping of (some of) the fields, the others at their defaults; validated.

        Raises ValueError naming unknown keys (and the known ones) or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{cls.group or cls.__name__} options must be a mapping of option names, got {type(data).__name__}"
            )
        unknown = cls.unknown_names(data)
        if unknown:
            raise ValueError(unknown)
        options = cls(**data)
        options.validate()
        return options

    def replace(self: _T, **changes: Any) -> _T:
        """A copy with ``changes`` (checked like a new object)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def option_set(value: Any, cls: type[_T], *, owner: str, name: str | None = None) -> _T:
    """``value`` as a ``cls``: None gives the defaults, a mapping its fields (a config file, a
    transformers checkpoint's saved arguments), an instance itself; anything else a TypeError."""
    name = name or cls.group
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls.from_dict(value)
        except TypeError as err:
            raise ValueError(f"{owner}: {name}: {err}") from err
    raise TypeError(
        f"{owner}: {name} must be a {cls.__module__}.{cls.__name__} (or a dict of its fields), got {value!r}"
    )


def legacy_options(
    owner: str,
    flat: Mapping[str, Any],
    groups: Mapping[str, tuple[type[OptionSet], Any]],
    *,
    renamed: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The one deprecation shim: old flat keywords (``layers=``, ``every_n_steps=``, ``probe_source=``)
    merged into their option sets, with one ``DeprecationWarning`` naming the new spelling.

    Args:
        owner: the class whose keywords these are (named in the messages).
        flat: the keywords the caller gave that are not parameters any more.
        groups: ``{group: (OptionSet class, the value the caller gave for it)}``; a field's flat
            keyword is its name, or its ``metadata["flat"]`` (``ProbeOptions.source`` was
            ``probe_source``).
        renamed: whole parameters that were renamed: ``{"config": "measure"}``.

    Returns:
        ``{group: option set}`` for every group, the flat values applied on top of the given set
        (or of its defaults). A flat keyword given together with a set that is not an option set
        (a ready ``ProbeSet``) is an error; an unknown keyword a TypeError, as Python gives.
    """
    renamed = dict(renamed or {})
    where = {}
    for group, (cls, _) in groups.items():
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            where[f.metadata.get("flat", f.name)] = (group, f.name)
    values = {group: given for group, (_, given) in groups.items()}
    updates: dict[str, dict[str, Any]] = {group: {} for group in groups}
    spelled: list[str] = []
    for key, value in flat.items():
        if key in renamed:
            new = renamed[key]
            if values[new] is not None:
                raise TypeError(f"{owner}: give {new}= only ({key}= is its old name)")
            values[new] = value
            spelled.append(f"{key}= -> {new}=")
            continue
        if key not in where:
            close = difflib.get_close_matches(key, [*where, *groups, *renamed], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}{hint}")
        group, field_name = where[key]
        updates[group][field_name] = value
        spelled.append(f"{key}= -> {group}={groups[group][0].__name__}({field_name}=...)")
    out: dict[str, Any] = {}
    for group, (cls, _) in groups.items():
        given = values[group]
        if not updates[group]:
            out[group] = given
            continue
        if given is not None and not isinstance(given, (cls, Mapping)):
            names = ", ".join(updates[group])
            raise ValueError(f"{owner}: {names} cannot be combined with a ready {type(given).__name__} as {group}=")
        base = option_set(given, cls, owner=owner, name=group)
        out[group] = dataclasses.replace(base, **updates[group])  # type: ignore[type-var]
    if spelled:
        warnings.warn(
            f"{owner}: flat keyword options are deprecated and will be removed in geomtrace 0.3; pass the option "
            f"objects instead ({'; '.join(spelled)})",
            DeprecationWarning,
            stacklevel=_caller_stacklevel(),
        )
    return out


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside geomtrace: the warning points at the user's
    line (Python shows a DeprecationWarning by default only when it points at ``__main__``),
    however many geomtrace layers (callback, tracker, shim) lie between."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
