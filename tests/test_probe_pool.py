"""One probe-selection rule for every way of reading a source (the pool), and probe files
written by ``write_probe_file`` that rebuild exactly the chosen probes."""

from __future__ import annotations

import json
import warnings

import pytest

import geomtrace.probes as probes_module
from geomtrace._warnings import GeometryWarning
from geomtrace.probes import PROBE_FILE_KEY, ProbeSet, load_probes, read_probe_file_header, write_probe_file

datasets = pytest.importorskip("datasets")

POOL = 40


def _rows(n: int) -> list[str]:
    """Rows as a hub split holds them: blank rows and short headings between long paragraphs."""
    out = []
    for i in range(n):
        if i % 5 == 0:
            out.append("")
        elif i % 7 == 0:
            out.append(f" = Heading {i} = ")
        else:
            out.append(f" Paragraph {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 3))
    return out


ROWS = _rows(200)
OPTIONS = {"num_sequences": 12, "pool_size": POOL, "seed": 4}


def _pool_texts() -> list[str]:
    return [r.strip() for r in ROWS if r.strip()][:POOL]


def _stream(rows: list[str], fail_after: int | None = None):
    """An IterableDataset of ``rows``; raises once a row past ``fail_after`` is read."""

    def gen():
        for i, row in enumerate(rows):
            if fail_after is not None and i >= fail_after:
                raise AssertionError(f"row {i} was read: the stream must stop at the pool")
            yield {"text": row, "id": i}

    return datasets.IterableDataset.from_generator(gen)


def test_dataset_its_iterable_and_a_list_give_the_same_probes(tokenizer):
    ds = datasets.Dataset.from_dict({"text": ROWS, "id": list(range(len(ROWS)))})
    built = {
        "dataset": load_probes(tokenizer, ds, **OPTIONS),
        "to_iterable_dataset": load_probes(tokenizer, ds.to_iterable_dataset(), **OPTIONS),
        "generator stream": load_probes(tokenizer, _stream(ROWS), **OPTIONS),
        "dataset dict": load_probes(tokenizer, datasets.DatasetDict({"train": ds}), **OPTIONS),
        "list": load_probes(tokenizer, ROWS, **OPTIONS),
    }
    reference = built["dataset"]
    assert len(reference) == 12
    for name, probes in built.items():
        assert probes.texts == reference.texts, name
        assert probes.sequences == reference.sequences, name
        assert probes.fingerprint() == reference.fingerprint(), name
    # Every chosen text is one of the pool's: nothing past the first POOL non-empty texts.
    assert set(reference.texts or []) <= set(_pool_texts())
    assert "pool=40" in reference.description


def test_a_stream_is_read_no_further_than_the_pool(tokenizer):
    needed = next(i for i in range(len(ROWS)) if len([r for r in ROWS[: i + 1] if r.strip()]) == POOL) + 1
    probes = load_probes(tokenizer, _stream(ROWS, fail_after=needed), **OPTIONS)
    assert probes.texts == load_probes(tokenizer, ROWS, **OPTIONS).texts
    with pytest.raises(AssertionError, match="must stop at the pool"):  # the guard itself works
        load_probes(tokenizer, _stream(ROWS, fail_after=needed - 1), **OPTIONS)


def test_the_pool_size_is_the_rule_not_the_reader(tokenizer):
    small = load_probes(tokenizer, ROWS, **OPTIONS)
    whole = load_probes(tokenizer, ROWS, **{**OPTIONS, "pool_size": 10_000})
    assert small.fingerprint() != whole.fingerprint()
    assert "pool=" not in whole.description  # the whole source fitted in the pool
    assert small.options is not None and small.options.pool_size == POOL
    assert small.options.to_dict()["pool_size"] == POOL  # recorded in the provenance


@pytest.mark.parametrize("streaming", [True, False], ids=["online-streamed", "offline-cached"])
@pytest.mark.parametrize("returned", ["iterable", "dataset"])
def test_a_hub_name_gives_the_same_probes_streamed_or_cached(tokenizer, monkeypatch, streaming, returned):
    ds = datasets.Dataset.from_dict({"text": ROWS})
    calls = []

    def load_dataset(name, config_name=None, *, split, streaming):
        calls.append((name, config_name, split, streaming))
        return ds.to_iterable_dataset() if returned == "iterable" else ds

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(probes_module, "hub_offline", lambda: not streaming)
    probes = load_probes(tokenizer, "some/corpus", config_name="raw", **OPTIONS)
    assert calls == [("some/corpus", "raw", "train", streaming)]
    reference = load_probes(tokenizer, ds, **OPTIONS)
    assert probes.texts == reference.texts and probes.fingerprint() == reference.fingerprint()
    assert probes.description.startswith("hub:some/corpus/raw:train n=12")


def test_a_written_probe_file_rebuilds_the_same_probes(tokenizer, tmp_path):
    ds = datasets.Dataset.from_dict({"text": ROWS})
    probes = load_probes(tokenizer, ds, **OPTIONS)
    path = write_probe_file(probes, tmp_path / "probes.jsonl", tokenizer="tiny")
    header = read_probe_file_header(path)
    assert header is not None and header[PROBE_FILE_KEY] == 1
    assert header["fingerprint"] == probes.fingerprint() and header["n_probes"] == 12
    assert header["options"]["pool_size"] == POOL and header["tokenizer"] == "tiny"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["text"] for line in lines[1:]] == probes.texts
    # Read back in its order, whatever the seed and pool: the texts are the chosen probes.
    for kwargs in ({}, {"seed": 9, "pool_size": 3}, {"num_sequences": 12}):
        again = load_probes(tokenizer, path, **kwargs)
        assert again.fingerprint() == probes.fingerprint(), kwargs
        assert again.texts == probes.texts
    assert load_probes(tokenizer, path, num_sequences=5).sequences == probes.sequences[:5]


def test_a_written_probe_file_read_with_another_tokenizer_says_so(tokenizer, make_tokenizer, tmp_path):
    probes = load_probes(tokenizer, ROWS, **OPTIONS)
    path = write_probe_file(probes, tmp_path / "probes.jsonl", tokenizer="tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_probes(tokenizer, path)  # same tokenizer: no warning
    other = make_tokenizer(vocab_size=512)
    with pytest.warns(GeometryWarning, match=rf"written with fingerprint {probes.fingerprint()} \(tokenizer 'tiny'"):
        load_probes(other, path)


def test_write_probe_file_refuses_what_cannot_rebuild(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="holds no texts"):
        write_probe_file(ProbeSet([[1, 2], [3, 4]], "hand-made", 0), tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match=r"\.jsonl"):
        write_probe_file(load_probes(tokenizer, ROWS, **OPTIONS), tmp_path / "p.txt")
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "a"}\n', encoding="utf-8")
    assert read_probe_file_header(plain) is None  # an ordinary probe file: pool and shuffle apply


def test_shards_and_cuts_keep_the_texts(tokenizer):
    probes = load_probes(tokenizer, ROWS, **OPTIONS)
    shards = [probes.shard(r, 3) for r in range(3)]
    assert sum((s.texts or [] for s in shards), []) == probes.texts
    cut = probes.truncated(12)
    assert cut.texts == probes.texts and cut.options is not None
