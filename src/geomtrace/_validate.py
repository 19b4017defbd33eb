"""Option checks: one declaration per rule, shared by every option set.

Each :class:`Rule` says what an option must be (an int >= 1, a bool, a pair of ints, a
non-empty string, ...). :meth:`Rule.coerce` checks the *type* and normalises the value to a
plain Python one (numpy scalars to ``int``/``float``/``bool``/``str``, lists to tuples), so
that what is stored and later written to JSON (history files, transformers' checkpoint
state) is always serialisable. :meth:`Rule.check` checks the *range*. Calling the rule does
both. Option sets declare ``{field: Rule}`` and call :func:`coerce_fields` from
``__post_init__`` (types, at construction) and :func:`check_fields` from ``validate()``.

What is refused, and why:

* a bool where a number is expected (``every_n_steps=True`` is 1 by accident, not intent);
* anything but a bool (or ``numpy.bool_``) where a flag is expected: ``"no"`` is truthy;
* a float with a fractional part where an int is expected (``fit_range=(1.5, 10)`` would
  silently become ``(1, 10)``); an integral float such as ``16.0`` is taken as ``16``.

Type errors raise :class:`OptionTypeError`, a ``TypeError`` that is also a ``ValueError``
(existing callers catch ``ValueError`` for any bad option); range errors raise ``ValueError``.
Messages name the option, say what to pass and show what was given.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from geomtrace._jsonio import plain  # the one JSON sanitizer; importable from here as before

__all__ = [
    "OptionTypeError",
    "Rule",
    "as_bool",
    "as_float",
    "as_int",
    "as_int_pair",
    "as_ints",
    "as_str",
    "check_fields",
    "coerce_fields",
    "numpy_module",
    "plain",
    "is_bool",
]


def numpy_module() -> Any:
    """numpy when some module has imported it, else None: no value can then be a numpy one, so
    options are checked without importing numpy (the command line's ``--help`` stays light)."""
    return sys.modules.get("numpy")


class OptionTypeError(TypeError, ValueError):
    """An option of the wrong type (a ``TypeError`` that is also a ``ValueError``)."""


def _given(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_bool(value: Any) -> bool:
    """``value`` is a Python or numpy bool (which ``isinstance(value, int)`` would also accept)."""
    np = numpy_module()
    return isinstance(value, bool) or (np is not None and isinstance(value, np.bool_))


def _to_int(name: str, value: Any, what: str) -> int:
    if is_bool(value):
        raise OptionTypeError(f"{name} must be {what}, got {_given(value)}: pass a number, not True/False")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        # typeshed's numbers.Real declares no __int__; float, numpy's floats and Fraction have one
        # (math.trunc would not do: numpy.float32 has no __trunc__).
        return int(value)  # type: ignore[call-overload]  # see above
    if isinstance(value, numbers.Real):
        raise OptionTypeError(f"{name} must be {what}, got {_given(value)}: pass a whole number")
    raise OptionTypeError(f"{name} must be {what}, got {_given(value)}")


def _to_float(name: str, value: Any, what: str) -> float:
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise OptionTypeError(f"{name} must be {what}, got {_given(value)}")
    np = numpy_module()
    if np is not None and isinstance(value, np.floating) and value.dtype.itemsize < 8:
        return float(str(value))  # np.float32(1e-7) is 1e-07 as typed, not 1.0000000116860974e-07
    return float(value)


@dataclass(frozen=True)
class Rule:
    """What one option must be.

    ``kind``: ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"int_pair"`` (two ints, first <=
    last) or ``"ints"`` (a sequence of ints, stored as a tuple). ``minimum``/``maximum`` bound
    numbers (each element of ``ints``/``int_pair``); ``optional`` allows ``None``; ``choices``
    limits strings; ``nonempty`` refuses ``""`` and blank strings; ``example`` is shown in
    messages (``e.g. 100``).
    """

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False
    choices: tuple[str, ...] | None = None
    nonempty: bool = True
    example: str = ""

    # -------------------------------------------------------------- wording
    def describe(self) -> str:
        bound = ""
        if self.minimum is not None and self.maximum is not None:
            bound = f" in [{self.minimum:g}, {self.maximum:g}]"
        elif self.minimum is not None:
            bound = f" >= {self.minimum:g}"
        elif self.maximum is not None:
            bound = f" <= {self.maximum:g}"
        if self.kind == "int":
            text = f"an int{bound}"
        elif self.kind == "float":
            text = f"a finite number{bound}"
        elif self.kind == "bool":
            text = "True, False" if self.optional else "True or False"
        elif self.kind == "str":
            text = f"one of {', '.join(map(repr, self.choices))}" if self.choices else "a non-empty string"
        elif self.kind == "int_pair":
            low = f"{self.minimum:g} <= " if self.minimum is not None else ""
            text = f"two ints (first, last) with {low}first <= last"
        else:
            text = f"a sequence of ints{bound}"
        if self.optional:
            text += " or None"
        return text + (f" (e.g. {self.example})" if self.example else "")

    # ---------------------------------------------------------------- types
    def coerce(self, name: str, value: Any) -> Any:
        """``value`` as a plain Python value of this rule's type; raises OptionTypeError."""
        if value is None:
            if self.optional:
                return None
            raise OptionTypeError(f"{name} must be {self.describe()}, got None")
        what = self.describe()
        kind = self.kind
        if kind == "int":
            return _to_int(name, value, what)
        if kind == "float":
            return _to_float(name, value, what)
        if kind == "bool":
            if not is_bool(value):
                why = (
                    "; a string is not a flag (any non-empty one would count as True)" if isinstance(value, str) else ""
                )
                raise OptionTypeError(f"{name} must be {what}, got {_given(value)}{why}")
            return bool(value)
        if kind == "str":
            if not isinstance(value, str):
                raise OptionTypeError(f"{name} must be {what}, got {_given(value)}")
            return str(value)
        np = numpy_module()
        arrays = (Sequence,) if np is None else (Sequence, np.ndarray)
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, arrays):
            raise OptionTypeError(f"{name} must be {what}, got {_given(value)}")
        if kind == "int_pair":
            if len(value) != 2:
                raise OptionTypeError(f"{name} must be {what}, got {value!r} ({len(value)} values)")
            return tuple(_to_int(f"{name}[{i}]", v, "an int") for i, v in enumerate(value))
        return tuple(_to_int(f"{name}[{i}]", v, "an int") for i, v in enumerate(value))

    # ---------------------------------------------------------------- range
    def check(self, name: str, value: Any) -> None:
        """Raise ValueError when a coerced ``value`` is out of range."""
        if value is None:
            return
        kind = self.kind
        numbers_ = value if kind in ("ints", "int_pair") else (value,) if kind in ("int", "float") else ()
        for number in numbers_:
            bad = (
                (kind == "float" and not math.isfinite(number))
                or (self.minimum is not None and number < self.minimum)
                or (self.maximum is not None and number > self.maximum)
            )
            if bad:
                raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        if kind == "int_pair" and value[0] > value[1]:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        if kind == "str":
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
            if self.nonempty and not value.strip():
                raise ValueError(f"{name} must be {self.describe()}, got {value!r}")

    def __call__(self, name: str, value: Any) -> Any:
        value = self.coerce(name, value)
        self.check(name, value)
        return value


def as_int(name: str, value: Any, *, minimum: int | None = None, optional: bool = False, example: str = "") -> Any:
    return Rule("int", minimum=minimum, optional=optional, example=example)(name, value)


def as_float(name: str, value: Any, *, minimum: float | None = None, optional: bool = False) -> Any:
    return Rule("float", minimum=minimum, optional=optional)(name, value)


def as_bool(name: str, value: Any, *, optional: bool = False) -> Any:
    return Rule("bool", optional=optional)(name, value)


def as_int_pair(name: str, value: Any, *, minimum: int | None = None, example: str = "") -> tuple[int, int]:
    return Rule("int_pair", minimum=minimum, example=example)(name, value)


def as_ints(name: str, value: Any, *, minimum: int | None = None, example: str = "") -> tuple[int, ...]:
    return Rule("ints", minimum=minimum, example=example)(name, value)


def as_str(
    name: str, value: Any, *, choices: Sequence[str] | None = None, optional: bool = False, nonempty: bool = True
) -> Any:
    return Rule("str", choices=tuple(choices) if choices else None, optional=optional, nonempty=nonempty)(name, value)


def coerce_fields(obj: Any, rules: Mapping[str, Rule]) -> None:
    """Normalise the fields of a (frozen) dataclass ``obj`` named in ``rules`` (types only)."""
    for name, rule in rules.items():
        object.__setattr__(obj, name, rule.coerce(name, getattr(obj, name)))


def check_fields(obj: Any, rules: Mapping[str, Rule]) -> None:
    """Range checks of the fields of ``obj`` named in ``rules`` (after :func:`coerce_fields`)."""
    for name, rule in rules.items():
        rule.check(name, getattr(obj, name))
