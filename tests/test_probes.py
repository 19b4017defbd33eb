"""Fixed probe sets: sources, selection, determinism, sharding, batching."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from geomtrace._warnings import GeometryWarning
from geomtrace.probes import ProbeFileError, ProbeLoadError, ProbeSet, load_probes


def _texts(n: int) -> list[str]:
    # Distinct texts of varied length (all well above 11 tokens).
    return [
        f"Probe text number {i}: " + ("the quick brown fox jumps over the lazy dog " * (1 + i % 4)).strip()
        for i in range(n)
    ]


def test_default_embedded_probes(tokenizer):
    probes = load_probes(tokenizer)
    assert len(probes) == 1024
    assert probes.description == "embedded:pydoc_data.topics n=1024 len=11..128 seed=0"
    lengths = [len(s) for s in probes.sequences]
    assert min(lengths) >= 11 and max(lengths) == 128  # long paragraphs are truncated
    assert probes.pad_token_id == tokenizer.pad_token_id
    assert len({tuple(s) for s in probes.sequences}) > 1000  # near-duplicates are rare


def test_determinism_and_seed(tokenizer):
    a = load_probes(tokenizer, num_sequences=64, seed=0)
    b = load_probes(tokenizer, num_sequences=64, seed=0)
    c = load_probes(tokenizer, num_sequences=64, seed=1)
    assert a.sequences == b.sequences and a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    assert len(a.fingerprint()) == 16
    # The selection does not depend on how many are asked for: 64 is a prefix of 128.
    assert load_probes(tokenizer, num_sequences=128, seed=0).sequences[:64] == a.sequences


def test_fingerprint_sees_sequence_boundaries():
    a = ProbeSet([[1, 2], [3]], "x", 0)
    b = ProbeSet([[1], [2, 3]], "x", 0)
    assert a.fingerprint() != b.fingerprint()


def test_from_strings_with_length_filters(tokenizer):
    texts = ["too short", "a b"] + _texts(10)
    with pytest.warns(GeometryWarning, match="only 10 of the requested 50"):
        probes = load_probes(tokenizer, texts, num_sequences=50, max_tokens=20)
    assert len(probes) == 10 and probes.description.startswith("texts n=10 len=11..20")
    assert all(11 <= len(s) <= 20 for s in probes.sequences)
    assert max(len(s) for s in probes.sequences) == 20
    expected = {tuple(tokenizer(t)["input_ids"][:20]) for t in texts[2:]}
    assert {tuple(s) for s in probes.sequences} == expected
    # min_tokens decides what is kept.
    lengths = sorted(len(tokenizer(t)["input_ids"]) for t in _texts(10))
    cut = lengths[5]
    with pytest.warns(GeometryWarning):
        kept = load_probes(tokenizer, _texts(10), num_sequences=50, min_tokens=cut, max_tokens=500)
    assert len(kept) == sum(n >= cut for n in lengths)


def test_all_filtered_raises_with_counts(tokenizer):
    with pytest.raises(ValueError, match=r"3 texts read.*3 had fewer than min_tokens=11"):
        load_probes(tokenizer, ["a", "b c", "d"])
    with pytest.raises(ValueError, match="min_tokens"):
        load_probes(tokenizer, _texts(3), min_tokens=20, max_tokens=10)


def test_from_txt_and_jsonl_files(tokenizer, tmp_path):
    texts = _texts(6)
    txt = tmp_path / "probes.txt"
    txt.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    jsonl = tmp_path / "probes.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(texts)), encoding="utf-8")
    from_list = load_probes(tokenizer, texts, num_sequences=6)
    from_txt = load_probes(tokenizer, str(txt), num_sequences=6)
    from_jsonl = load_probes(tokenizer, jsonl, num_sequences=6, text_column="body")
    assert from_txt.fingerprint() == from_list.fingerprint() == from_jsonl.fingerprint()
    assert from_txt.description.startswith("file:probes.txt n=6")
    with pytest.raises(ProbeFileError, match=r"probes.jsonl:1 has no field 'text'.*text_column"):
        load_probes(tokenizer, jsonl)  # default column "text" is missing
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_probes(tokenizer, str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_probes(tokenizer, tmp_path / "missing.jsonl")


def test_from_datasets_dataset(tokenizer):
    datasets = pytest.importorskip("datasets")
    texts = _texts(8)
    ds = datasets.Dataset.from_dict({"content": texts, "n": list(range(8))})
    probes = load_probes(tokenizer, ds, num_sequences=8, text_column="content")
    assert probes.fingerprint() == load_probes(tokenizer, texts, num_sequences=8).fingerprint()
    dd = datasets.DatasetDict({"validation": ds})
    assert load_probes(tokenizer, dd, num_sequences=8, text_column="content", split="validation").fingerprint() == (
        probes.fingerprint()
    )
    with pytest.raises(ValueError, match="no column 'text'"):
        load_probes(tokenizer, ds)
    with pytest.raises(ValueError, match="split 'train'"):
        load_probes(tokenizer, dd, text_column="content")


def test_offline_hub_name_fails_clearly(tokenizer):
    with pytest.raises(ProbeLoadError, match=r"isn't available offline.*--probe-file"):
        load_probes(tokenizer, "wikitext", config_name="wikitext-103-raw-v1")


def test_unsupported_source_type(tokenizer):
    with pytest.raises(TypeError, match="unsupported probe source"):
        load_probes(tokenizer, 42)


def test_chat_template_probes(tokenizer):
    probes = load_probes(tokenizer, _texts(5), num_sequences=5, chat_template=True, system_prompt="Be brief.")
    assert len(probes) == 5 and probes.description.endswith("chat")
    gen_prompt = tokenizer("<|assistant|>\n", add_special_tokens=False)["input_ids"]
    for seq in probes.sequences:
        text = tokenizer.decode(seq)
        assert text.startswith("<|system|>\nBe brief.") and "<|user|>\nProbe text number" in text
        assert seq[-len(gen_prompt) :] == gen_prompt  # measured at the generation prompt
    # A long text is shortened inside the template: the generation prompt survives truncation.
    long = load_probes(tokenizer, ["word " * 500], num_sequences=1, chat_template=True, max_tokens=40)
    assert len(long.sequences[0]) <= 40 and long.sequences[0][-len(gen_prompt) :] == gen_prompt
    with pytest.raises(ValueError, match="system_prompt"):
        load_probes(tokenizer, _texts(5), system_prompt="x")


def test_sharding_covers_everything_once():
    probes = ProbeSet([[i, i + 1] for i in range(10)], "x", 0)
    shards = [probes.shard(rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 4]
    assert [seq for s in shards for seq in s.sequences] == probes.sequences
    assert shards[1].description == "x shard=1/3"
    tiny = ProbeSet([[1], [2]], "x", 0)
    small = [tiny.shard(rank, 3) for rank in range(3)]
    assert sorted(len(s) for s in small) == [0, 1, 1]
    assert [seq for s in small for seq in s.sequences] == tiny.sequences
    empty = next(s for s in small if len(s) == 0)
    assert list(empty.batches(4)) == []
    with pytest.raises(ValueError, match="rank"):
        probes.shard(3, 3)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_padding(side):
    probes = ProbeSet([[1, 2, 3], [4], [5, 6], [7, 8, 9, 10, 11]], "x", pad_token_id=0)
    batches = list(probes.batches(3, padding_side=side))
    assert [b["input_ids"].shape for b in batches] == [torch.Size([3, 3]), torch.Size([1, 5])]
    first = batches[0]
    assert first["input_ids"].dtype == torch.long and first["attention_mask"].dtype == torch.long
    if side == "right":
        assert first["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
        assert first["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    else:
        assert first["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4], [0, 5, 6]]
        assert first["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    # Unpadding the batches gives back the probes, in order.
    rows = [ids[mask.bool()].tolist() for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]
    assert rows == probes.sequences
    with pytest.raises(ValueError, match="padding_side"):
        next(probes.batches(2, padding_side="up"))


def test_probe_batches_feed_feature_extraction(tokenizer):
    from geomtrace.features import FeatureSpec, extract_features
    from geomtrace.tiny import build_tiny_model

    model = build_tiny_model("gpt_neox", tokenizer=tokenizer).eval()
    probes = load_probes(tokenizer, num_sequences=12)
    rows = [extract_features(model, **b, spec=FeatureSpec())[2] for b in probes.batches(5, padding_side="left")]
    assert sum(r.shape[0] for r in rows) == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warnings in the common path
        list(probes.batches(5))


def test_long_non_ascii_chat_probes_keep_the_generation_prompt(tokenizer):
    # CJK and accented texts take more tokens after a decode / re-encode round trip; the
    # truncation cuts the user text until the prompt fits, never the template's suffix
    # (issue 9 item 10: 40 of 40 lost the generation prompt).
    texts = [("日本語のテキストです。漢字とかなを含みます。" * 12) + str(i) for i in range(20)]
    texts += [("Ça a été très éprouvé, où ç'était « déjà » là — naïveté. " * 10) + str(i) for i in range(20)]
    gen_prompt = tokenizer("<|assistant|>\n", add_special_tokens=False)["input_ids"]
    for max_tokens in (40, 64):
        probes = load_probes(tokenizer, texts, num_sequences=40, chat_template=True, max_tokens=max_tokens)
        assert len(probes) == 40
        for seq in probes.sequences:
            assert len(seq) <= max_tokens and seq[-len(gen_prompt) :] == gen_prompt
            assert "\ufffd" not in tokenizer.decode(seq)  # no half characters left where the text was cut


def _write(path, data: bytes | str):
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("latin1.txt", "café au lait\nsecond line\n".encode("latin-1"), r"latin1.txt:1: not UTF-8 text"),
        ("late.txt", b"ok line\nsecond ok\ncaf\xe9\n", r"late.txt:3: not UTF-8"),
        ("bad.jsonl", '{"text": "a fine line"}\n{"text": broken}\n', r"bad.jsonl:2: not valid JSON"),
        (
            "list.jsonl",
            '{"text": "a fine line"}\n["not", "an", "object"]\n',
            r"list.jsonl:2: a JSON list where an object",
        ),
        ("number.jsonl", '{"text": 42}\n', r"number.jsonl:1: field 'text' is a int"),
        ("dict.json", '{"data": ["a", "b"]}', r"dict.json: a .json probe file holds a list"),
        ("broken.json", '["a", ', r"broken.json:1: not valid JSON"),
        ("table.csv", "text\nhello\n", r"table.csv: .csv files are not read as probes"),
    ],
)
def test_probe_file_errors_name_the_file_and_line(tokenizer, tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(ProbeFileError, match=message):
        load_probes(tokenizer, str(path))


def test_json_probe_files_and_folders(tokenizer, tmp_path):
    texts = _texts(6)
    _write(tmp_path / "list.json", json.dumps(texts))
    _write(tmp_path / "objects.json", json.dumps([{"text": t} for t in texts]))
    _write(tmp_path / "column.json", json.dumps({"text": texts}))
    reference = load_probes(tokenizer, texts, num_sequences=6).fingerprint()
    for name in ("list.json", "objects.json", "column.json"):
        assert load_probes(tokenizer, tmp_path / name, num_sequences=6).fingerprint() == reference
    with pytest.raises(ProbeFileError, match="is a folder; pass a file inside it"):
        load_probes(tokenizer, str(tmp_path))


def test_a_mistyped_local_path_is_not_a_hub_dataset(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "probes.txt", "\n".join(_texts(4)))
    for typo in ("data/probes.txtt", "data/probe", "./probes", "data/prbes.txt"):
        with pytest.raises(FileNotFoundError, match="does not exist") as err:
            load_probes(tokenizer, typo)
        assert "hub" not in str(err.value).lower()
    with pytest.raises(FileNotFoundError, match=r"Did you mean: data/probes.txt"):
        load_probes(tokenizer, "data/prbes.txt")
    # a bare name is still a hub dataset, and the message says where a local file was looked for
    with pytest.raises(ProbeLoadError, match=r"meant as a local file, it does not exist in"):
        load_probes(tokenizer, "probes")


def test_probe_options_of_the_wrong_type_are_clear_errors(tokenizer):
    import numpy as np

    texts = [f"text number {i} " * 8 for i in range(20)]
    for kwargs, match in [
        ({"num_sequences": True}, "num_sequences must be an int >= 1.*not True/False"),
        ({"num_sequences": 0}, "num_sequences must be an int >= 1"),
        ({"min_tokens": 1.5}, "min_tokens.*whole number"),
        ({"seed": -3}, "seed must be an int >= 0"),
        ({"chat_template": "no"}, "chat_template must be True or False"),
        ({"text_column": ""}, "text_column must be a non-empty string"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens <= max_tokens"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_probes(tokenizer, texts, **kwargs)
    same = load_probes(tokenizer, texts, num_sequences=np.int64(5), seed=np.int64(1), max_tokens=np.int32(16))
    assert same.sequences == load_probes(tokenizer, texts, num_sequences=5, seed=1, max_tokens=16).sequences


def test_truncated_cuts_every_probe_and_says_so(tokenizer):
    probes = load_probes(tokenizer, num_sequences=8, max_tokens=64)
    cut = probes.truncated(16)
    assert cut.longest() == 16 and len(cut) == 8 and cut.description.endswith("cut=16")
    assert all(c == s[:16] for c, s in zip(cut.sequences, probes.sequences))
    assert probes.truncated(64) is probes
