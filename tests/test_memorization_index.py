"""The local ∞-gram index: probabilities equal a brute-force n-gram count; builds are resumable-safe."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("infini_gram", reason="the infini-gram package (Python >= 3.11 wheels only) is not installed")

from geomtrace.memorization import (  # noqa: E402
    IndexBuildError,
    IndexIntegrityError,
    IndexNotReadyError,
    IndexState,
    NgramIndex,
)
from geomtrace.memorization import index as index_module  # noqa: E402
from geomtrace.memorization.index import BUILD_MARKER, INDEX_MARKER  # noqa: E402
from memorization_helpers import brute_count, brute_infgram, queries, random_docs  # noqa: E402

# Hand-made documents: "5 6" ends document 0 and "7" starts document 1, so "5 6 7" occurs only
# across a boundary; "1 2 3" occurs three times, followed by 4, 4 and 9.
HAND_DOCS = [
    [1, 2, 3, 4, 8, 5, 6],
    [7, 1, 2, 3, 4, 2, 3],
    [3, 1, 2, 3, 9, 8, 8, 2],
]


@pytest.fixture(scope="module")
def hand_index(tmp_path_factory):
    return NgramIndex.build(HAND_DOCS, tmp_path_factory.mktemp("hand") / "index", progress=False)


@pytest.fixture(scope="module")
def random_index(tmp_path_factory):
    docs = random_docs(0)
    return docs, NgramIndex.build(docs, tmp_path_factory.mktemp("random") / "index", progress=False)


def test_document_boundaries_are_never_crossed(hand_index):
    # "5 6 7" exists only across the boundary between documents 0 and 1.
    assert hand_index.count([5, 6, 7]) == 0 == brute_count(HAND_DOCS, [5, 6, 7])
    assert hand_index.count([6, 7]) == 0
    answer = hand_index.prob([5, 6], 7)
    assert (answer.prob, answer.suffix_len, answer.prompt_cnt, answer.cont_cnt) == (0.0, 2, 1, 0)
    # "2 3 | 3 1" (end of doc 1, start of doc 2) does not match either.
    assert hand_index.count([2, 3, 3]) == 0


def test_longest_suffix_rule_on_hand_made_corpus(hand_index):
    # Longest suffix of "0 1 2 3" in the corpus is "1 2 3" (3 times: followed by 4, 4, 9).
    answer = hand_index.prob([0, 1, 2, 3], 4)
    assert answer.suffix_len == 3 and answer.prompt_cnt == 3 and answer.cont_cnt == 2
    assert answer.prob == pytest.approx(2 / 3)
    # No back-off: "8 8 2" is never followed by 3, so 0 even though "2 3" is common.
    zero = hand_index.prob([8, 8, 2], 3)
    assert zero.suffix_len == 3 and zero.prob == 0.0
    # An unseen last token leaves the empty suffix: count(4) / (tokens + one separator per document).
    empty = hand_index.prob([10], 4)
    assert empty.suffix_len == 0
    assert empty.prob == pytest.approx(brute_count(HAND_DOCS, [4]) / (sum(map(len, HAND_DOCS)) + len(HAND_DOCS)))


def test_probabilities_equal_brute_force_counts(random_index):
    docs, index = random_index
    for context, token in queries(docs, 300, seed=1):
        prob, suffix_len, prompt, cont = brute_infgram(docs, context, token)
        got = index.prob(context, token)
        assert (got.suffix_len, got.prompt_cnt, got.cont_cnt) == (suffix_len, prompt, cont), (context, token)
        assert got.prob == pytest.approx(prob, rel=1e-12)
        assert index.count(context) == brute_count(docs, context)


def test_ids_above_65535_use_a_compact_two_byte_vocabulary(tmp_path):
    # A vocabulary above 65,535: ids up to 70,000 + 12 * 5,000. They are renumbered in 2 bytes;
    # the probabilities must still be those of the original ids (absent ids included).
    docs = random_docs(2, shift=70_000, scale=5_000)
    index = NgramIndex.build(docs, tmp_path / "big", progress=False)
    assert index.token_width == 2 and index.info["compact_vocabulary"] is True
    absent = 70_001  # in the vocabulary range, in no document
    checks = queries(docs, 150, seed=3) + [
        ([absent], docs[0][0]),
        (docs[1][:3], absent),
        ([absent, *docs[2][:2]], docs[2][2]),
    ]
    for context, token in checks:
        prob, suffix_len, prompt, cont = brute_infgram(docs, context, token)
        got = index.prob(context, token)
        assert (got.suffix_len, got.prompt_cnt, got.cont_cnt) == (suffix_len, prompt, cont), (context, token)
        assert got.prob == pytest.approx(prob, rel=1e-12)
    reopened = NgramIndex.open(tmp_path / "big")
    context, token = checks[0]
    assert reopened.prob(context, token) == index.prob(context, token)


def test_two_byte_index_rejects_ids_it_cannot_hold(random_index):
    _, index = random_index
    with pytest.raises(ValueError, match="cannot occur in this 2-byte index"):
        index.prob([1, 2], 70_000)
    with pytest.raises(ValueError, match=">= 0"):
        index.count([-1])


def _available_gib() -> float:
    available = index_module._available_memory_bytes()
    return (available or 0) / 2**30


@pytest.mark.skipif(
    _available_gib() < 40,
    reason="infini-gram's 4-byte indexer allocates 32 GiB whatever the corpus size; "
    f"this machine has {_available_gib():.0f} GiB available",
)
def test_four_byte_index_equals_brute_force(tmp_path):
    docs = random_docs(4, shift=70_000, scale=5_000)
    index = NgramIndex.build(docs, tmp_path / "u32", token_width=4, progress=False)
    assert index.token_width == 4
    for context, token in queries(docs, 100, seed=5):
        prob, suffix_len, prompt, cont = brute_infgram(docs, context, token)
        got = index.prob(context, token)
        assert (got.suffix_len, got.prompt_cnt, got.cont_cnt) == (suffix_len, prompt, cont)


def test_four_byte_build_without_memory_fails_before_touching_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "_available_memory_bytes", lambda: 8 * 2**30)
    with pytest.raises(IndexBuildError, match="32 GiB"):
        NgramIndex.build(HAND_DOCS, tmp_path / "u32", token_width=4, progress=False)
    assert not (tmp_path / "u32").exists()


# --------------------------------------------------------------------------- resumable builds


def _interrupted_build(monkeypatch, docs, directory, damage):
    """Run the real indexer, damage its output, then die as a kill would (no clean-up)."""
    real = index_module._run_indexer

    def killed(directory_, width, memory_gib, report):
        real(directory_, width, memory_gib, report)
        damage(directory_)
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(index_module, "_run_indexer", killed)
    with pytest.raises(KeyboardInterrupt):
        NgramIndex.build(docs, directory, progress=False)
    monkeypatch.setattr(index_module, "_run_indexer", real)


def test_half_built_folder_is_refused_by_open_and_rebuilt_by_build(tmp_path, monkeypatch):
    docs = random_docs(6)
    directory = tmp_path / "index"

    def truncate(d):  # killed while infini-gram was writing its suffix array
        table = d / "table.0"
        table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])

    assert IndexState.of(directory) is IndexState.EMPTY
    _interrupted_build(monkeypatch, docs, directory, truncate)
    assert (directory / BUILD_MARKER).exists() and not (directory / INDEX_MARKER).exists()
    assert IndexState.of(directory) is IndexState.HALF_BUILT
    with pytest.raises(IndexNotReadyError, match="half-built"):
        NgramIndex.open(directory)
    with pytest.warns(UserWarning, match="half-built"):
        index = NgramIndex.build(docs, directory, progress=False)
    assert not (directory / BUILD_MARKER).exists()
    assert IndexState.of(directory) is IndexState.COMPLETE
    for context, token in queries(docs, 60, seed=7):
        prob, suffix_len, _, _ = brute_infgram(docs, context, token)
        got = index.prob(context, token)
        assert got.suffix_len == suffix_len and got.prob == pytest.approx(prob, rel=1e-12)


def test_an_index_that_miscounts_is_never_marked_complete(tmp_path, monkeypatch):
    real = index_module._run_indexer

    def corrupt(directory, width, memory_gib, report):
        real(directory, width, memory_gib, report)
        table = directory / "table.0"
        table.write_bytes(bytes(table.stat().st_size))  # right size, wrong content

    monkeypatch.setattr(index_module, "_run_indexer", corrupt)
    with pytest.raises(IndexBuildError, match="miscounts"):
        NgramIndex.build(random_docs(8), tmp_path / "index", progress=False)
    assert (tmp_path / "index" / BUILD_MARKER).exists()
    assert not (tmp_path / "index" / INDEX_MARKER).exists()


def test_same_corpus_is_reused_other_corpus_needs_overwrite(tmp_path):
    directory = tmp_path / "index"
    lines: list[str] = []
    NgramIndex.build(HAND_DOCS, directory, progress=lines.append)
    assert any("infini-gram: Step 2" in line for line in lines)  # progress relays the indexer's steps
    table_time = os.stat(directory / "table.0").st_mtime_ns
    lines.clear()
    again = NgramIndex.build([list(d) for d in HAND_DOCS], directory, progress=lines.append)
    assert os.stat(directory / "table.0").st_mtime_ns == table_time and any("reusing" in line for line in lines)
    assert again.count([1, 2, 3]) == 3
    other = [[4, 4, 4, 1]]
    with pytest.raises(FileExistsError, match="different corpus"):
        NgramIndex.build(other, directory, progress=False)
    assert NgramIndex.build(other, directory, overwrite=True, progress=False).count([4, 4]) == 2


def test_open_an_infini_gram_folder_geomtrace_did_not_build(tmp_path):
    directory = tmp_path / "index"
    NgramIndex.build(HAND_DOCS, directory, progress=False)
    (directory / INDEX_MARKER).unlink()  # as if infini-gram's own indexer had made it
    index = NgramIndex.open(directory)
    assert index.token_width == 2 and index.n_documents == 3 and index.n_tokens == sum(map(len, HAND_DOCS))
    assert index.prob([0, 1, 2, 3], 4).prob == pytest.approx(2 / 3)
    with pytest.raises(FileExistsError, match="did not build"):
        NgramIndex.build(HAND_DOCS, directory, progress=False)
    assert (directory / "table.0").exists()  # nothing of the user's was deleted
    (directory / "table.0").write_bytes((directory / "table.0").read_bytes()[:-2])
    with pytest.raises(IndexNotReadyError, match="fits no complete suffix array"):
        NgramIndex.open(directory)


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="every document is empty"):
        NgramIndex.build([[], []], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="negative token id"):
        NgramIndex.build([[1, -2]], tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="integers"):
        NgramIndex.build([[1.5, 2.0]], tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="vocab_size=3"):
        NgramIndex.build([[1, 2, 3]], tmp_path / "d", vocab_size=3, progress=False)
    with pytest.raises(IndexNotReadyError, match="not a folder"):
        NgramIndex.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotReadyError, match="holds no infini-gram index"):
        NgramIndex.open(tmp_path / "empty")


def test_from_texts_with_a_locally_trained_tokenizer(tmp_path, make_tokenizer):
    texts = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]
    tokenizer = make_tokenizer(texts * 5, vocab_size=300)
    index = NgramIndex.from_texts(texts, tokenizer, tmp_path / "index", progress=False)
    docs = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert index.n_documents == 3 and index.n_tokens == sum(map(len, docs))
    sat_on = tokenizer(" sat on", add_special_tokens=False)["input_ids"]
    assert index.count(sat_on) == brute_count(docs, sat_on) == 2
    assert index.info["vocab_size"] == len(tokenizer)


def test_missing_engine_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "infini_gram.engine", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"geomtrace\[memorization\]"):
        index_module.require_infini_gram()


def test_progress_rejects_non_callables():
    from geomtrace.memorization._io import Reporter

    with pytest.raises(TypeError, match="progress"):
        Reporter("loud")


def test_answer_scores_from_the_index_equal_full_context_brute_force(random_index):
    # infgram_scores sends each answer token only the context the previous match allows;
    # the values must be those of the full context.
    from geomtrace.memorization import QASet, infgram_scores

    docs, index = random_index
    pairs = (
        QASet.cloze(docs, n=20, answer_tokens=4, question_tokens=10, min_question_tokens=2, seed=0).tokenize()
        + QASet.cloze(random_docs(50), n=20, answer_tokens=4, question_tokens=10, min_question_tokens=2).tokenize()
    )
    scores = infgram_scores(index, pairs)
    for pair, probs, lens in zip(pairs, scores.token_probs, scores.suffix_lens):
        context = list(pair.context_ids)
        for j, token in enumerate(pair.answer_ids):
            prob, suffix_len, _, _ = brute_infgram(docs, context + list(pair.answer_ids[:j]), token)
            assert probs[j] == pytest.approx(prob, rel=1e-12) and lens[j] == suffix_len


# ---------------------------------------------------------------------- content checks at open

LARGE_DOCS = [[int(t) for t in row] for row in np.random.default_rng(0).integers(0, 50, (200, 500))]


@pytest.fixture(scope="module")
def large_index_dir(tmp_path_factory):
    """A 100k-token index: tokenized.0 (200 kB) and table.0 (300 kB) have bytes outside the sample."""
    directory = tmp_path_factory.mktemp("large") / "index"
    NgramIndex.build(LARGE_DOCS, directory, progress=False)
    return directory


def _copy(directory, tmp_path):
    import shutil

    target = tmp_path / "index"
    shutil.copytree(directory, target)
    return target


def _flip(path, offset, n=100):
    """Overwrite ``n`` bytes at ``offset`` with other values (same file size)."""
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(b ^ 0x5A for b in data[offset : offset + n])
    path.write_bytes(bytes(data))


def _unsampled_offset(size, n=100):
    block = index_module.SAMPLE_BLOCK_BYTES
    offsets = index_module.sample_offsets(size)
    for start, following in zip(offsets, offsets[1:]):
        if following - (start + block) >= n:
            return start + block
    raise AssertionError("every byte is sampled")


@pytest.mark.parametrize("name", ["tokenized.0", "table.0"])
def test_open_catches_100_bytes_overwritten_in_a_sampled_block(large_index_dir, tmp_path, name):
    directory = _copy(large_index_dir, tmp_path)
    path = directory / name
    _flip(path, index_module.sample_offsets(path.stat().st_size)[7] + 50)
    with pytest.raises(IndexIntegrityError, match=rf"{name} differs from the file built.*rebuild the index"):
        NgramIndex.open(directory)


@pytest.mark.parametrize("name", ["tokenized.0", "table.0"])
def test_verify_true_catches_100_bytes_overwritten_between_sampled_blocks(large_index_dir, tmp_path, name):
    directory = _copy(large_index_dir, tmp_path)
    path = directory / name
    _flip(path, _unsampled_offset(path.stat().st_size))
    NgramIndex.open(directory)  # the documented limit of the default check: these bytes are not read
    with pytest.raises(IndexIntegrityError, match=rf"{name} differs.*every byte.*rebuild the index"):
        NgramIndex.open(directory, verify=True)


def test_open_catches_a_resized_missing_or_extra_file(large_index_dir, tmp_path):
    directory = _copy(large_index_dir, tmp_path)
    (directory / "offset.0").write_bytes((directory / "offset.0").read_bytes() + bytes(8))
    with pytest.raises(IndexIntegrityError, match="offset.0 has 1,608 bytes; it had 1,600"):
        NgramIndex.open(directory)
    directory = _copy(large_index_dir, tmp_path / "b")
    (directory / "tokenized.1").write_bytes((directory / "tokenized.0").read_bytes())
    with pytest.raises(IndexIntegrityError, match="not part of the build: tokenized.1"):
        NgramIndex.open(directory)


def test_build_of_the_same_corpus_rebuilds_a_damaged_index(large_index_dir, tmp_path):
    directory = _copy(large_index_dir, tmp_path)
    _flip(directory / "tokenized.0", 1000)
    with pytest.warns(UserWarning, match="rebuilding the index.*tokenized.0 differs"):
        index = NgramIndex.build(LARGE_DOCS, directory, progress=False)
    assert index.count(LARGE_DOCS[3][:3]) == brute_count(LARGE_DOCS, LARGE_DOCS[3][:3])
    NgramIndex.open(directory, verify=True)


def _as_if_built_before_the_record(directory):
    import json

    marker = directory / INDEX_MARKER
    info = json.loads(marker.read_text())
    del info["files"], info["sample"], info["tokenizer"]
    marker.write_text(json.dumps(info))


def test_an_index_without_a_file_record_opens_with_a_note_and_is_upgraded_by_build(large_index_dir, tmp_path):
    directory = _copy(large_index_dir, tmp_path)
    _as_if_built_before_the_record(directory)
    with pytest.warns(UserWarning, match="recorded no file fingerprints: open.. checked the file sizes only"):
        index = NgramIndex.open(directory)
    assert index.count([]) == 100_200
    with pytest.warns(UserWarning, match="verify=True checked the token stream"):
        NgramIndex.open(directory, verify=True)
    table_time = os.stat(directory / "table.0").st_mtime_ns
    NgramIndex.build(LARGE_DOCS, directory, progress=False)  # checked, reused, given the record
    assert os.stat(directory / "table.0").st_mtime_ns == table_time
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NgramIndex.open(directory, verify=True)


def test_verify_true_on_an_index_without_a_file_record_checks_its_token_stream(large_index_dir, tmp_path):
    directory = _copy(large_index_dir, tmp_path)
    _as_if_built_before_the_record(directory)
    _flip(directory / "tokenized.0", _unsampled_offset((directory / "tokenized.0").stat().st_size))
    with pytest.warns(UserWarning, match="checked the file sizes only"):
        NgramIndex.open(directory)
    with pytest.raises(IndexIntegrityError, match="does not hold the corpus recorded"):
        NgramIndex.open(directory, verify=True)
    with pytest.warns(UserWarning, match="rebuilding the index"):
        NgramIndex.build(LARGE_DOCS, directory, progress=False)
    NgramIndex.open(directory, verify=True)


def test_verify_true_on_a_folder_geomtrace_did_not_build_says_nothing_is_recorded(tmp_path):
    directory = tmp_path / "index"
    NgramIndex.build(HAND_DOCS, directory, progress=False)
    (directory / INDEX_MARKER).unlink()
    with pytest.warns(UserWarning, match="nothing is recorded"):
        NgramIndex.open(directory, verify=True)
    with pytest.raises(TypeError, match="verify must be True or False"):
        NgramIndex.open(directory, verify="yes")


# ---------------------------------------------------------------------- the index's tokenizer

PET_TEXTS = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    from geomtrace.tiny import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(PET_TEXTS * 5, vocab_size=300)
    index = NgramIndex.from_texts(PET_TEXTS, tokenizer, tmp_path_factory.mktemp("pets") / "index", progress=False)
    return tokenizer, index


def _pets_probe(index, **kwargs):
    from geomtrace.memorization import MemorizationProbe, QASet

    return MemorizationProbe(QASet.from_pairs([("what sat on the mat", "the cat")]), index, **kwargs)


def test_the_index_records_its_tokenizer(pets):
    tokenizer, index = pets
    recorded = index.info["tokenizer"]
    assert recorded == index_module.tokenizer_identity(tokenizer)
    assert recorded["vocab_size"] == len(tokenizer) and len(recorded["vocab_sha256"]) == 64


def test_a_probe_querying_the_index_with_another_tokenizer_warns_with_a_hint(pets):
    import warnings

    from geomtrace import GeometryWarning
    from geomtrace.tiny import train_bpe_tokenizer

    tokenizer, index = pets
    other = train_bpe_tokenizer(["an entirely different corpus of words", "with other merges"] * 5, vocab_size=280)
    with pytest.warns(GeometryWarning, match=r"was built with the tokenizer .* Rebuild the index with this tokenizer"):
        _pets_probe(index).prepare(other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _pets_probe(index).prepare(tokenizer)  # the index's own tokenizer
        _pets_probe(index, index_tokenizer=tokenizer).prepare(other)  # the model's differs; the index side is right


def test_a_saved_copy_of_the_tokenizer_is_the_same_tokenizer(pets, tmp_path):
    import warnings

    from transformers import PreTrainedTokenizerFast

    tokenizer, index = pets
    tokenizer.save_pretrained(tmp_path / "tok")
    copy = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")
    assert copy.name_or_path != index.info["tokenizer"]["name_or_path"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert index.check_tokenizer(copy) is None


def test_an_index_without_a_recorded_tokenizer_warns_on_ids_the_tokenizer_cannot_make(pets, tmp_path):
    from geomtrace import GeometryWarning

    tokenizer, _ = pets
    index = NgramIndex.build([[1, 2, 3, len(tokenizer) + 5]], tmp_path / "ids", progress=False)
    assert index.info["tokenizer"] is None
    with pytest.warns(GeometryWarning, match=rf"holds token id {len(tokenizer) + 5}, which the tokenizer"):
        _pets_probe(index).prepare(tokenizer)
    assert NgramIndex.build([[1, 2, 3]], tmp_path / "small", progress=False).check_tokenizer(tokenizer) is None


def test_index_folder_states_are_a_str_enum_read_from_the_markers(tmp_path):
    assert [state.value for state in IndexState] == ["empty", "half-built", "foreign", "complete"]
    assert IndexState.HALF_BUILT == "half-built" and f"{IndexState.COMPLETE}" == "complete"
    directory = tmp_path / "index"
    assert IndexState.of(directory) is IndexState.EMPTY  # no folder
    directory.mkdir()
    (directory / "notes.txt").write_text("not an index file")
    assert IndexState.of(str(directory)) is IndexState.EMPTY
    (directory / "table.0").write_bytes(b"")
    assert IndexState.of(directory) is IndexState.FOREIGN
    (directory / BUILD_MARKER).write_text("{}")
    assert IndexState.of(directory) is IndexState.HALF_BUILT
    (directory / INDEX_MARKER).write_text("{}")
    assert IndexState.of(directory) is IndexState.COMPLETE
    (directory / INDEX_MARKER).unlink()
    with pytest.raises(IndexNotReadyError, match="half-built"):
        NgramIndex.open(directory)
