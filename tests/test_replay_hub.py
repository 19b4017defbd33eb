"""Replay's hub path through huggingface_hub itself, against the local stub (tests/hubstub.py).

Listing revisions, downloading ``.bin``-only and safetensors revisions, prefetch, retries of
scripted 429/500 answers and a 404 recorded as that checkpoint's failure; no network.
"""

from __future__ import annotations

import pytest

from fakehub import build_tiny_model, revision_seed, save_revision, tiny_tokenizer

REPO = "stub-org/pythia-tiny"


def _serve(stub, tmp_path, repo=REPO, revisions=("step0", "step1000"), weights="bin", tokenizer=True):
    """Serve tiny models for ``revisions`` of ``repo`` (fakehub's seeds: twins across repos)."""
    tok = tiny_tokenizer() if tokenizer else None
    for i, rev in enumerate(revisions):
        folder = tmp_path / "src" / repo.replace("/", "--") / rev
        save_revision(build_tiny_model(seed=revision_seed(rev, i)), folder, weights, tok)
        stub.add_folder(repo, rev, folder)


def test_list_hub_revisions_reads_the_branches(hub_stub, tmp_path):
    from geomtrace.replay.hub import list_hub_revisions

    for rev in ("step1000", "step0", "step2"):
        hub_stub.add_revision(REPO, rev, {"config.json": b"{}"})
    assert list_hub_revisions(REPO) == ["step0", "step2", "step1000", "main"]  # sorted by step
    assert ("GET", f"/api/models/{REPO}/refs") in hub_stub.requests


def test_a_missing_repo_is_a_clear_listing_error(hub_stub):
    from geomtrace.replay.hub import list_hub_revisions

    with pytest.raises(RuntimeError, match="Could not list the revisions"):
        list_hub_revisions("stub-org/nothing-here")


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_a_revision_downloads_and_loads_through_huggingface_hub(hub_stub, tmp_path, weights):
    import torch

    from geomtrace.replay.hub import hub_checkpoints
    from geomtrace.replay.loading import load_checkpoint_model

    _serve(hub_stub, tmp_path, revisions=("step0",), weights=weights)
    (ckpt,) = hub_checkpoints(REPO, "step0")
    model, tok = load_checkpoint_model(ckpt, device="cpu")
    want = build_tiny_model(seed=revision_seed("step0", 0)).state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
    assert tok is not None
    weights_file = "pytorch_model.bin" if weights == "bin" else "model.safetensors"
    assert hub_stub.downloads(weights_file), hub_stub.requests
