"""The infini-gram API client, against a local HTTP stub on 127.0.0.1 (never the real service)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from geomtrace.memorization import InfiniGramAPI, InfiniGramAPIError, infgram_scores
from geomtrace.memorization.qa import TokenizedPair
from memorization_helpers import brute_infgram, queries, random_docs

DOCS = random_docs(11, n_docs=12)


class Stub:
    """An infini-gram API look-alike: brute-force answers, scripted failures, a request log."""

    def __init__(self) -> None:
        self.failures: list[str] = []  # consumed one per request: "503", "message", "garbage", "error", "400"
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(payload)
                failure = stub.failures.pop(0) if stub.failures else None
                if failure in ("503", "400"):
                    self._reply(int(failure), b'{"detail": "scripted"}')
                elif failure == "message":
                    self._reply(200, b'{"message": "Endpoint request timed out"}')
                elif failure == "garbage":
                    self._reply(200, b"<html>bad gateway</html>")
                elif failure == "error":
                    self._reply(200, b'{"error": "unknown index"}')
                else:
                    ids = payload["query_ids"]
                    prob, suffix_len, prompt, cont = brute_infgram(DOCS, ids[:-1], ids[-1])
                    body = {
                        "prompt_cnt": prompt,
                        "cont_cnt": cont,
                        "prob": prob,
                        "suffix_len": suffix_len,
                        "latency": 0.01,
                        "token_ids": ids,
                    }
                    self._reply(200, json.dumps(body).encode())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = Stub()
    yield server
    server.close()


def client(stub_url: str, cache_dir, sleeps: list[float] | None = None, **kwargs) -> InfiniGramAPI:
    kwargs.setdefault("max_retries", 3)
    return InfiniGramAPI(
        "v4_test_llama",
        cache_dir=cache_dir,
        url=stub_url,
        backoff_s=0.5,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        timeout_s=5,
        **kwargs,
    )


def test_answers_and_payload_match_the_seeds_query(stub, tmp_path):
    api = client(stub.url, tmp_path)
    for context, token in queries(DOCS, 30, seed=1):
        prob, suffix_len, prompt, cont = brute_infgram(DOCS, context, token)
        got = api.prob(context, token)
        assert (got.prob, got.suffix_len, got.prompt_cnt, got.cont_cnt) == (
            pytest.approx(prob),
            suffix_len,
            prompt,
            cont,
        )
    first = stub.requests[0]
    assert first["index"] == "v4_test_llama" and first["query_type"] == "infgram_prob"
    context, token = queries(DOCS, 1, seed=1)[0]
    assert first["query_ids"] == [*context, token]  # the seed's layout: the last id is scored


def test_retries_with_backoff_then_succeeds(stub, tmp_path):
    stub.failures = ["503", "message", "garbage"]
    sleeps: list[float] = []
    api = client(stub.url, tmp_path, sleeps)
    got = api.prob([1, 2], 3)
    assert got.prob == pytest.approx(brute_infgram(DOCS, [1, 2], 3)[0])
    assert len(stub.requests) == 4 and sleeps == [0.5, 1.0, 2.0]  # doubled each time


def test_retries_are_bounded(stub, tmp_path):
    stub.failures = ["503"] * 10
    sleeps: list[float] = []
    api = client(stub.url, tmp_path, sleeps, max_retries=2)
    with pytest.raises(InfiniGramAPIError, match="kept failing.*3 attempts") as err:
        api.prob([1], 2)
    assert len(stub.requests) == 3 and len(sleeps) == 2
    assert str(tmp_path) in str(err.value)  # says where the answered queries are kept


@pytest.mark.parametrize("failure, message", [("error", "rejected the query: unknown index"), ("400", "HTTP 400")])
def test_rejected_queries_are_not_retried(stub, tmp_path, failure, message):
    stub.failures = [failure]
    with pytest.raises(InfiniGramAPIError, match=message):
        client(stub.url, tmp_path).prob([1], 2)
    assert len(stub.requests) == 1


def test_offline_gives_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on: connection refused, like no network
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = client(f"http://127.0.0.1:{port}/", tmp_path, max_retries=1)
    with pytest.raises(InfiniGramAPIError, match="cannot reach the infini-gram API.*offline.*NgramIndex.build"):
        api.prob([1], 2)


def test_cache_means_a_rerun_sends_no_query_twice(stub, tmp_path):
    pairs = [TokenizedPair((1, 2, 3), (4, 5)), TokenizedPair((6,), (7, 8, 9)), TokenizedPair((1, 2, 3), (4, 5))]
    first = infgram_scores(client(stub.url, tmp_path), pairs)
    sent = len(stub.requests)
    assert sent == 5  # the repeated pair is answered from the cache
    rerun = infgram_scores(client(stub.url, tmp_path), pairs)
    assert len(stub.requests) == sent  # nothing sent again
    for a, b in zip(first.token_probs, rerun.token_probs):
        assert list(a) == list(b)
    lines = (tmp_path / "v4_test_llama.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["q"] for line in lines)


def test_a_torn_cache_line_is_asked_again_and_the_file_stays_readable(stub, tmp_path):
    api = client(stub.url, tmp_path)
    api.prob([1, 2], 3)
    api.prob([4], 5)
    path = tmp_path / "v4_test_llama.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 9])  # killed while writing the second line
    api = client(stub.url, tmp_path)
    before = len(stub.requests)
    api.prob([1, 2], 3)
    assert len(stub.requests) == before  # the whole first line survived
    api.prob([4], 5)
    assert len(stub.requests) == before + 1  # the torn one is asked again
    api.prob([7], 8)
    reread = client(stub.url, tmp_path)
    before = len(stub.requests)
    for context, token in (([1, 2], 3), ([4], 5), ([7], 8)):
        reread.prob(context, token)
    assert len(stub.requests) == before


def test_bad_index_names_and_ids(tmp_path):
    with pytest.raises(ValueError, match="index name"):
        InfiniGramAPI("../etc/passwd", cache_dir=tmp_path)
    api = InfiniGramAPI("v4_x", cache_dir=tmp_path, url="http://127.0.0.1:9/")
    with pytest.raises(ValueError, match=">= 0"):
        api.prob([-1], 2)
