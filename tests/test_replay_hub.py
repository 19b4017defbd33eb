"""Replay's hub path through huggingface_hub itself, against the local stub (tests/hubstub.py).

Listing revisions, downloading ``.bin``-only and safetensors revisions, prefetch, retries of
scripted 429/500 answers and a 404 recorded as that checkpoint's failure; no network.
"""

from __future__ import annotations

import math
import os

import pytest

from fakehub import build_tiny_model, hub_repo_dir, make_fake_hub_model, revision_seed, save_revision, tiny_tokenizer
from geomtrace.replay import ProbeOptions, ResultsStore, hub_checkpoints, run_replay
from geomtrace.replay.loading import fetch_checkpoint, hub_fetch_patterns, load_checkpoint_model

REPO = "stub-org/pythia-tiny"
PROBES = ProbeOptions(num_sequences=8, max_tokens=16)


@pytest.fixture
def no_backoff(monkeypatch):
    """Retries without waiting (the backoff's length is not what these tests check)."""
    from geomtrace.replay import retry

    monkeypatch.setattr(retry, "BACKOFF_S", 0.0)


def _values(out) -> dict:
    return {(r["key"], r["layer"]): (r["rankme"], r["alpha"], r["r2"]) for r in ResultsStore(out).records()}


def _replay(checkpoints, out, **kw):
    return run_replay(checkpoints, out, probes=PROBES, progress=False, verbose=False, **kw)


def _serve(stub, tmp_path, repo=REPO, revisions=("step0", "step1000"), weights="bin", tokenizer=True):
    """Serve tiny models for ``revisions`` of ``repo`` (fakehub's seeds: twins across repos)."""
    tok = tiny_tokenizer() if tokenizer else None
    for i, rev in enumerate(revisions):
        folder = tmp_path / "src" / repo.replace("/", "--") / rev
        save_revision(build_tiny_model(seed=revision_seed(rev, i)), folder, weights, tok)
        stub.add_folder(repo, rev, folder)


# ----------------------------------------------------------------------------- offline: the fake cache


def test_a_bin_revision_measures_like_its_safetensors_twin(tmp_path):
    # Pythia's stepN branches hold only pytorch_model.bin; the same weights as safetensors
    # must give the very same values through replay.
    revs = ("step0", "step1000")
    make_fake_hub_model(os.environ["HF_HOME"], "EleutherAI/pythia-bin-twin", revs, weights="bin")
    make_fake_hub_model(os.environ["HF_HOME"], "EleutherAI/pythia-st-twin", revs)
    snapshots = hub_repo_dir(os.environ["HF_HOME"], "EleutherAI/pythia-bin-twin") / "snapshots"
    assert {p.name for p in snapshots.glob("*/*") if "model" in p.name} == {"pytorch_model.bin"}
    done = {}
    for repo in ("EleutherAI/pythia-bin-twin", "EleutherAI/pythia-st-twin"):
        summary = _replay(hub_checkpoints(repo, list(revs)), tmp_path / repo.split("/")[1])
        assert summary.measured == list(revs) and not summary.failed
        done[repo] = _values(tmp_path / repo.split("/")[1])
    bin_values, st_values = done["EleutherAI/pythia-bin-twin"], done["EleutherAI/pythia-st-twin"]
    assert bin_values.keys() == st_values.keys() and all(math.isfinite(v[0]) for v in bin_values.values())
    for key, values in bin_values.items():  # bit for bit (NaN alpha/R^2 of a tiny spectrum included)
        assert [repr(v) for v in values] == [repr(v) for v in st_values[key]], key


def test_the_fetch_patterns_take_one_weight_format():
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"]
    assert "model*.safetensors" in hub_fetch_patterns(both) and not any(".bin" in p for p in hub_fetch_patterns(both))
    # other copies of the weights (Mistral's consolidated.*, a subfolder) are not what from_pretrained reads
    others = ["config.json", "pytorch_model.bin", "consolidated.safetensors", "original/model.safetensors"]
    assert hub_fetch_patterns(others)[-1] == "pytorch_model*.bin"
    shards = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json"]
    assert "pytorch_model*.bin" in hub_fetch_patterns(shards)
    assert not any("safetensors" in p or ".bin" in p for p in hub_fetch_patterns(["config.json"]))


def test_retry_waits_longer_each_time_and_stops_at_permanent_errors():
    from geomtrace.replay.retry import is_transient, retry_transient

    class Response:
        def __init__(self, status):
            self.status_code = status

    class HTTPError(OSError):
        def __init__(self, status):
            super().__init__(f"HTTP {status}")
            self.response = Response(status)

    def wrapped(inner):  # as transformers raises: OSError(...) from the hub's error
        try:
            raise inner
        except OSError as err:
            try:
                raise OSError("There was a specific connection error") from err
            except OSError as outer:
                return outer

    assert is_transient(wrapped(HTTPError(500))) and is_transient(wrapped(HTTPError(429)))
    assert is_transient(TimeoutError()) and is_transient(ConnectionResetError())
    assert not is_transient(wrapped(HTTPError(404))) and not is_transient(OSError("no file named"))

    class RevisionNotFoundError(HTTPError):  # huggingface_hub's name: never retried, whatever the status
        pass

    assert not is_transient(wrapped(RevisionNotFoundError(500)))
    waits, tries = [], []

    def flaky():
        tries.append(1)
        if len(tries) < 4:
            raise wrapped(HTTPError(503))
        return "ok"

    assert retry_transient(flaky, retries=3, what="x", backoff=1.0, sleep=waits.append) == "ok"
    assert waits == [1.0, 2.0, 4.0]
    tries.clear()
    with pytest.raises(OSError):
        retry_transient(flaky, retries=2, what="x", backoff=1.0, sleep=waits.append)
    tries.clear()

    def missing():
        tries.append(1)
        raise wrapped(HTTPError(404))

    with pytest.raises(OSError):
        retry_transient(missing, retries=5, what="x", sleep=waits.append)
    assert len(tries) == 1


# ----------------------------------------------------------------------------- through the stub


def test_list_hub_revisions_reads_the_branches(hub_stub, tmp_path, no_backoff):
    from geomtrace.replay.hub import list_hub_revisions

    for rev in ("step1000", "step0", "step2"):
        hub_stub.add_revision(REPO, rev, {"config.json": b"{}"})
    hub_stub.fail("/refs", 503, method="GET")  # retried
    assert list_hub_revisions(REPO) == ["step0", "step2", "step1000", "main"]  # sorted by step
    assert ("GET", f"/api/models/{REPO}/refs") in hub_stub.requests


def test_a_missing_repo_is_a_clear_listing_error(hub_stub):
    from geomtrace.replay.hub import list_hub_revisions

    with pytest.raises(RuntimeError, match="Could not list the revisions"):
        list_hub_revisions("stub-org/nothing-here")


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_a_revision_downloads_and_loads_through_huggingface_hub(hub_stub, tmp_path, weights, monkeypatch):
    import torch
    import transformers.modeling_utils

    conversions = []
    monkeypatch.setattr(transformers.modeling_utils, "auto_conversion", lambda *a, **k: conversions.append(a))
    monkeypatch.delenv("DISABLE_SAFETENSORS_CONVERSION", raising=False)  # as a user has it; restored after
    _serve(hub_stub, tmp_path, revisions=("step0",), weights=weights)
    (ckpt,) = hub_checkpoints(REPO, "step0")
    model, tok = load_checkpoint_model(ckpt, device="cpu")
    assert conversions == []  # no safetensors-conversion thread (more hub calls) for a .bin revision
    want = build_tiny_model(seed=revision_seed("step0", 0)).state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
    assert tok is not None
    weights_file = "pytorch_model.bin" if weights == "bin" else "model.safetensors"
    assert hub_stub.downloads(weights_file), hub_stub.requests


def test_a_revision_without_tokenizer_files_gives_no_tokenizer(hub_stub, tmp_path):
    # transformers 5 would build a two-token tokenizer from config.json alone
    from geomtrace.replay.loading import load_checkpoint_tokenizer

    _serve(hub_stub, tmp_path, revisions=("step0",), tokenizer=False)
    (ckpt,) = hub_checkpoints(REPO, "step0")
    tok = load_checkpoint_tokenizer(ckpt)
    assert tok is None


def test_prefetch_downloads_what_the_revision_holds(hub_stub, tmp_path):
    _serve(hub_stub, tmp_path, revisions=("step0",), weights="bin")
    folder = tmp_path / "both"
    model = build_tiny_model(seed=3)
    save_revision(model, folder, "safetensors")
    save_revision(model, folder, "bin")  # a revision holding both formats (Pythia's main)
    hub_stub.add_folder(REPO, "step1000", folder)
    bin_only, both = hub_checkpoints(REPO, "step0,step1000")
    fetch_checkpoint(bin_only)
    assert [p.split("/")[-1] for p in hub_stub.downloads(".bin")] == ["pytorch_model.bin"]
    assert not hub_stub.downloads(".safetensors")
    hub_stub.requests.clear()
    fetch_checkpoint(both)
    assert hub_stub.downloads("model.safetensors") and not hub_stub.downloads(".bin")
    hub_stub.requests.clear()
    load_checkpoint_model(bin_only, device="cpu")  # from the cache: nothing downloaded again
    assert not hub_stub.downloads(".bin")


def test_scripted_500_and_503_are_retried_then_the_load_succeeds(hub_stub, tmp_path, no_backoff):
    # huggingface_hub retries a HEAD's 5xx itself, not a download's: that reaches transformers
    # (an OSError raised from the hub's HfHubHTTPError), and replay's retries
    from geomtrace.replay.checkpoint import CheckpointLoadError

    _serve(hub_stub, tmp_path, revisions=("step0", "step1000"), weights="safetensors")
    first, second = hub_checkpoints(REPO, "step0,step1000")
    hub_stub.fail("/model.safetensors", 500, 503, method="GET")
    model, tok = load_checkpoint_model(first, device="cpu", retries=2)
    assert model is not None and tok is not None
    assert hub_stub.pending() == 0  # both scripted answers were served
    hub_stub.fail("/model.safetensors", 500, method="GET")
    with pytest.raises(CheckpointLoadError, match="(?s)step1000.*500.*try again later"):
        load_checkpoint_model(second, device="cpu", retries=0)


def test_a_404_is_that_checkpoints_failure_and_the_run_goes_on(hub_stub, tmp_path, no_backoff):
    shas = {}
    for i, rev in enumerate(("step0", "step1000", "step2000")):
        folder = tmp_path / rev
        save_revision(build_tiny_model(seed=revision_seed(rev, i)), folder, "bin", tiny_tokenizer())
        shas[rev] = hub_stub.add_folder(REPO, rev, folder, skip=("pytorch_model.bin",) if rev == "step1000" else ())
    # a passing hub outage on the last one: retried
    hub_stub.fail(f"{shas['step2000']}/pytorch_model.bin", 500, 503, method="GET")
    out = tmp_path / "out"
    summary = _replay(hub_checkpoints(REPO, "step0,step1000,step404,step2000"), out)
    assert summary.measured == ["step0", "step2000"]
    assert set(summary.failed) == {"step1000", "step404"}
    assert "pytorch_model.bin" in summary.failed["step1000"] or "model" in summary.failed["step1000"]
    assert {f["key"] for f in ResultsStore(out).failures()} == {"step1000", "step404"}
    assert hub_stub.pending() == 0  # the outage was met (and outlived)


def test_a_first_revision_without_a_tokenizer_does_not_stop_the_run(hub_stub, tmp_path):
    for i, rev in enumerate(("step0", "step1000")):
        folder = tmp_path / rev
        tok = tiny_tokenizer() if rev == "step1000" else None  # step0 holds no tokenizer
        save_revision(build_tiny_model(seed=revision_seed(rev, i)), folder, "bin", tok)
        hub_stub.add_folder(REPO, rev, folder)
    out = tmp_path / "out"
    summary = _replay(hub_checkpoints(REPO, "step0,step1000"), out)
    assert summary.measured == ["step0", "step1000"] and not summary.failed
    assert summary.n_probes == PROBES.num_sequences  # built with step1000's tokenizer
    assert len(hub_stub.downloads("/pytorch_model.bin")) == 2  # each revision's weights once (prefetch, load)


def test_a_tokenizer_fetch_is_retried(hub_stub, tmp_path, no_backoff):
    from geomtrace.replay.loading import load_checkpoint_tokenizer

    for i, (rev, vocab) in enumerate((("step0", 512), ("step1000", 384))):  # two tokenizers: two blobs
        save_revision(build_tiny_model(seed=i), tmp_path / rev, "bin", tiny_tokenizer(vocab))
        hub_stub.add_folder(REPO, rev, tmp_path / rev)
    first, second = hub_checkpoints(REPO, "step0,step1000")
    hub_stub.fail("/tokenizer.json", 500, 502, method="GET")
    assert load_checkpoint_tokenizer(first, retries=2) is not None
    hub_stub.fail("/tokenizer.json", 500, method="GET")
    assert load_checkpoint_tokenizer(second, retries=0) is None  # the caller decides (next revision)
    assert hub_stub.pending() == 0


def test_no_tokenizer_in_any_revision_asks_for_one(hub_stub, tmp_path):
    _serve(hub_stub, tmp_path, revisions=("step0", "step1000"), tokenizer=False)
    with pytest.raises(ValueError, match="step0, step1000 hold none.*--tokenizer"):
        _replay(hub_checkpoints(REPO, "step0,step1000"), tmp_path / "out")
