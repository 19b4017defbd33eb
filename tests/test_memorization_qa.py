"""QA sets: the seed's prompt, JSONL files (errors name file and line), TriviaQA, cloze pairs."""

from __future__ import annotations

import json

import pytest

from geomtrace.memorization import QALoadError, QASet, hold_out, seed_prompt


def test_seed_prompt_adds_a_question_mark_only_when_missing():
    assert seed_prompt("Who wrote Hamlet", "Shakespeare") == (
        "Question: Who wrote Hamlet? Answer:",
        "Question: Who wrote Hamlet? Answer: Shakespeare",
    )
    assert seed_prompt("Who wrote Hamlet?", "Shakespeare")[0] == "Question: Who wrote Hamlet? Answer:"


def test_answer_tokens_are_those_after_the_question_prefix(tokenizer):
    qa = QASet.from_pairs(
        [("Which module handles regular expressions", "the re module"), ("What is None?", "a singleton")]
    )
    pairs = qa.tokenize(tokenizer)
    for pair, (question, answer) in zip(pairs, qa.texts()):
        prefix, full = seed_prompt(question, answer)
        assert list(pair.context_ids) == tokenizer(prefix)["input_ids"]
        assert list(pair.context_ids + pair.answer_ids) == tokenizer(full)["input_ids"]
        assert tokenizer.decode(list(pair.answer_ids)) == " " + answer


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_pairs_skip_blank_lines_and_are_keyed_by_line(tmp_path):
    path = write_lines(
        tmp_path / "qa.jsonl",
        [json.dumps({"question": "q1", "answer": "a1"}), "", json.dumps({"question": "q2", "answer": "a2", "id": 7})],
    )
    qa = QASet.from_jsonl(path)
    assert [(p.key, p.question, p.answer) for p in qa.pairs] == [(1, "q1", "a1"), (3, "q2", "a2")]
    assert str(path) in qa.description


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ('["q", "a"]', "line 2: expected a JSON object, got list"),
        ('{"question": "q"}', "line 2: missing field 'answer'"),
        ('{"question": "q", "answer": 3}', "line 2: field 'answer' must be a string, got int"),
        ('{"question": "q", "answer": "  "}', "line 2: the answer is empty"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"question": "q", "answer": "a"}), line])
    with pytest.raises(ValueError, match=message) as err:
        QASet.from_jsonl(path)
    assert str(path) in str(err.value)


def test_jsonl_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        QASet.from_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="holds no pairs"):
        QASet.from_jsonl(write_lines(tmp_path / "empty.jsonl", ["", "  "]))


def test_trivia_qa_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(QALoadError, match="cannot load TriviaQA.*offline.*QASet.cloze"):
        QASet.trivia_qa(limit=5)


def test_trivia_qa_reads_the_seeds_fields(monkeypatch):
    import datasets

    rows = [
        {"question": "Who?", "answer": {"value": "Me", "aliases": ["me"]}},
        {"question": "What", "answer": {"value": "That"}},
        {"question": "Extra", "answer": {"value": "row"}},
    ]
    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split))
        return iter(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    qa = QASet.trivia_qa(limit=2)
    assert calls == [("mandarjoshi/trivia_qa", "rc", "validation")]
    assert [(p.key, p.question, p.answer) for p in qa.pairs] == [(0, "Who?", "Me"), (1, "What", "That")]


def corpus():
    return [list(range(100 * d, 100 * d + length)) for d, length in enumerate([3, 20, 50, 11, 30])]


def test_cloze_pairs_are_contiguous_cuts_of_one_document_and_deterministic():
    docs = corpus()
    qa = QASet.cloze(docs, n=40, answer_tokens=3, question_tokens=8, min_question_tokens=4, seed=5)
    assert len(qa) == 40 and qa.is_tokenized
    again = QASet.cloze(docs, n=40, answer_tokens=3, question_tokens=8, min_question_tokens=4, seed=5)
    assert [p.answer_ids for p in qa.pairs] == [p.answer_ids for p in again.pairs]
    other = QASet.cloze(docs, n=40, answer_tokens=3, question_tokens=8, min_question_tokens=4, seed=6)
    assert [p.answer_ids for p in qa.pairs] != [p.answer_ids for p in other.pairs]
    cuts = set()
    for pair in qa.pairs:
        assert len(pair.answer_ids) == 3 and 4 <= len(pair.question_ids) <= 8
        joined = list(pair.question_ids + pair.answer_ids)
        doc = docs[joined[0] // 100]  # ids encode their document
        start = joined[0] % 100
        assert doc[start : start + len(joined)] == joined
        assert len(pair.question_ids) == min(8, start + len(pair.question_ids))  # as long as the document allows
        cuts.add(joined[len(pair.question_ids)])
    assert len(cuts) == 40  # drawn without replacement
    assert 0 not in {c // 100 for c in cuts}  # document 0 (3 tokens) is too short for a pair


def test_cloze_edge_cases():
    docs = [[1, 2, 3, 4, 5, 6]]
    with pytest.warns(UserWarning, match="only 2 cloze positions"):
        qa = QASet.cloze(docs, n=10, answer_tokens=2, min_question_tokens=3, question_tokens=3)
    assert [(p.question_ids, p.answer_ids) for p in qa.pairs] == [((1, 2, 3), (4, 5)), ((2, 3, 4), (5, 6))]
    with pytest.raises(ValueError, match="no document has the 12 tokens"):
        QASet.cloze(docs, n=1, answer_tokens=4, min_question_tokens=8)
    with pytest.raises(ValueError, match="answer_tokens >= 1"):
        QASet.cloze(docs, n=1, answer_tokens=0)


def test_hold_out_partitions_documents_deterministically():
    docs = [[i] for i in range(50)]
    indexed, held = hold_out(docs, fraction=0.2, seed=1)
    assert len(held) == 10 and len(indexed) == 40
    assert sorted(d[0] for d in indexed + held) == list(range(50))
    assert hold_out(docs, fraction=0.2, seed=1) == (indexed, held)
    assert hold_out(docs, fraction=0.2, seed=2)[1] != held
    with pytest.raises(ValueError, match="fraction"):
        hold_out(docs, fraction=1.0)


def test_text_sets_need_a_tokenizer_and_cloze_texts_decode(tokenizer):
    with pytest.raises(ValueError, match="pass the tokenizer"):
        QASet.from_pairs([("q", "a")]).tokenize()
    with pytest.raises(ValueError, match="empty"):
        QASet.from_pairs([("q", " ")])
    ids = tokenizer("The quick brown fox jumps over the lazy dog again and again")["input_ids"]
    qa = QASet.cloze([ids], n=1, answer_tokens=2, min_question_tokens=3)
    question, answer = qa.texts(tokenizer)[0]
    assert tokenizer.decode(list(qa.pairs[0].question_ids)) == question and answer


def test_tokenized_jsonl_pairs_and_keys(tmp_path):
    path = write_lines(
        tmp_path / "ids.jsonl",
        [
            json.dumps({"question_ids": [5, 6, 7], "answer_ids": [8, 9]}),
            "",
            json.dumps({"question_ids": [1], "answer_ids": [0], "key": 40}),
        ],
    )
    qa = QASet.from_jsonl(path)
    assert qa.is_tokenized
    assert [(p.key, p.question_ids, p.answer_ids, p.question) for p in qa.pairs] == [
        (1, (5, 6, 7), (8, 9), None),
        (40, (1,), (0,), None),
    ]
    assert [(t.context_ids, t.answer_ids) for t in qa.tokenize()] == [((5, 6, 7), (8, 9)), ((1,), (0,))]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q", "answer": "a"}', "line 2: a text pair in a file of token-id pairs \\(line 1\\)"),
        ('{"question_ids": [1]}', "line 2: missing field 'answer_ids'"),
        ('{"question_ids": [1], "answer_ids": []}', "line 2: field 'answer_ids' is empty"),
        ('{"question_ids": [], "answer_ids": [2]}', "line 2: field 'question_ids' is empty"),
        (
            '{"question_ids": [1], "answer_ids": [2, -3]}',
            "line 2: field 'answer_ids', position 1: -3 is not a token id",
        ),
        (
            '{"question_ids": [1.5], "answer_ids": [2]}',
            "line 2: field 'question_ids', position 0: 1.5 is not a token id",
        ),
        ('{"question_ids": [true], "answer_ids": [2]}', "line 2: field 'question_ids', position 0: True is not"),
        ('{"question_ids": [1], "answer_ids": "2"}', "line 2: field 'answer_ids' must be a list of token ids, got str"),
        ('{"question_ids": [1], "answer_ids": [2], "key": "a"}', "line 2: field 'key' must be an integer, got str"),
        ('{"question_ids": [1], "answer_ids": [2], "key": 7}', "line 2: key 7 already names the pair of line 1"),
    ],
)
def test_tokenized_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"question_ids": [1], "answer_ids": [2], "key": 7}), line])
    with pytest.raises(ValueError, match=message) as err:
        QASet.from_jsonl(path)
    assert str(path) in str(err.value)


def test_a_token_id_pair_after_text_pairs_is_refused(tmp_path):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [json.dumps({"question": "q", "answer": "a"}), json.dumps({"question_ids": [1], "answer_ids": [2]})],
    )
    with pytest.raises(ValueError, match="line 2: a token-id pair in a file of text pairs"):
        QASet.from_jsonl(path)


def test_to_jsonl_round_trips_cloze_and_text_sets(tmp_path):
    documents = [[(7 * i + 3 * j) % 50 for j in range(30)] for i in range(6)]
    cloze = QASet.cloze(documents, n=20, seed=3)
    text = QASet.from_jsonl(
        write_lines(
            tmp_path / "text.jsonl",
            [
                json.dumps({"question": "Où est la gare ?", "answer": " à gauche", "key": 12}),
                "",
                json.dumps({"question": "", "answer": "x\ny"}),
            ],
        )
    )
    for qa, name in ((cloze, "cloze.jsonl"), (text, "text.jsonl")):
        path = qa.to_jsonl(tmp_path / "out" / name)
        assert path == tmp_path / "out" / name and not list(path.parent.glob(".*.tmp"))
        assert QASet.from_jsonl(path).pairs == qa.pairs
    assert [p.key for p in QASet.from_jsonl(tmp_path / "out" / "text.jsonl").pairs] == [12, 3]
