"""The one JSON sanitizer and the one locked JSONL appender/reader (geomtrace._jsonio)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from geomtrace._jsonio import append_jsonl, dumps_line, plain, read_jsonl
from geomtrace.replay.naming import CheckpointKind


def test_plain_keeps_nan_and_strict_writes_null():
    value = {
        "a": np.float32(1.5),
        "b": (1, np.int64(2)),
        "c": float("nan"),
        "d": np.arange(3),
        "e": torch.tensor(2.0),
        "f": torch.ones(2),
        "g": Path("/x/y"),
        "h": CheckpointKind.HUB,
        3: "three",
    }
    loose = plain(value)
    assert loose["a"] == 1.5 and loose["b"] == [1, 2] and math.isnan(loose["c"]) and loose["d"] == [0, 1, 2]
    assert loose["e"] == 2.0 and loose["f"] == [1.0, 1.0] and loose["g"] == "/x/y" and loose["h"] == "hub"
    assert loose["3"] == "three"
    assert type(loose["h"]) is str
    strict = plain({**value, "i": object(), "j": float("inf")}, strict=True)
    assert strict["c"] is None and strict["j"] is None and isinstance(strict["i"], str)
    json.dumps(strict, allow_nan=False)  # always strict JSON
    obj = object()
    assert plain(obj) is obj  # left for json.dumps to name
    assert dumps_line({"x": float("nan")}) == '{"x": null}'
    assert dumps_line({"x": float("nan")}, strict=False) == '{"x": NaN}'


def test_append_is_whole_lines_after_a_torn_one(tmp_path):
    path = tmp_path / "r.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, [{"k": 1}, {"k": 2}])
    with open(path, "ab") as fh:
        fh.write(b'{"k": 3, "trunc')  # a writer killed mid-line
    assert [r["k"] for r in read_jsonl(path)] == [1, 2]
    append_jsonl(path, [{"k": 4, "v": np.float64("nan")}])
    assert [r["k"] for r in read_jsonl(path)] == [1, 2, 4]
    assert read_jsonl(path)[-1]["v"] is None
    append_jsonl(path, [])
    assert path.read_bytes().endswith(b"\n")
