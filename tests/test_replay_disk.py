"""Replay deletes the hub revisions it downloaded once they are measured, and estimates the disk
it needs before the first load (issue 17, part 2).

The downloads are simulated: the first time replay asks for a revision (to fetch it ahead, build
its model or read its tokenizer), the fake hub writes it into the hub cache, as a download would.
What is "cached before the run", what is deleted and when is decided by the real code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

import geomtrace.replay.disk as disk
import geomtrace.replay.plan as plan
import geomtrace.replay.prefetch as prefetch
import geomtrace.replay.runner as runner
from fakehub import hub_repo_dir, make_fake_hub_model
from geomtrace.cli import main
from geomtrace.measure import MeasureConfig
from geomtrace.options import LoadOptions
from geomtrace.replay import ProbeOptions, ResultsStore, hub_checkpoints, local_checkpoints, run_replay
from geomtrace.replay.disk import (
    DELETED_FILE,
    LEDGER_FILE,
    DiskBudgetError,
    HubDownloads,
    check_disk,
    estimate_disk,
    format_bytes,
)

# Twelve probes of a 64-wide model give no alpha fit: deletion is about the records, not their values.
pytestmark = pytest.mark.filterwarnings("ignore:alpha-ReQ needs")

REVS = ("step0", "step1", "step2", "step3", "step4")
PROBES = ProbeOptions(num_sequences=12, max_tokens=24)
MEASURE = MeasureConfig(layers="last")


def _snapshots(repo: str) -> set[str]:
    folder = hub_repo_dir(os.environ["HF_HOME"], repo) / "snapshots"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _commit(repo: str, revision: str) -> str | None:
    ref = hub_repo_dir(os.environ["HF_HOME"], repo) / "refs" / revision
    return ref.read_text() if ref.is_file() else None


def _present(repo: str, revision: str) -> bool:
    commit = _commit(repo, revision)
    return commit is not None and commit in _snapshots(repo)


class FakeDownloads:
    """Patches every way replay reaches the hub (fetch ahead, model load, tokenizer) so that the
    first request for a revision writes it into the cache. ``broken``: revisions whose download
    holds a corrupt config.json (the load fails). Notes, at each download, which revisions of
    ``repo`` were on disk (besides the ones cached before)."""

    def __init__(self, monkeypatch, repo: str, cached_before: set[str], broken: set[str] = frozenset()):
        self.repo, self.cached_before, self.broken = repo, set(cached_before), set(broken)
        self.downloads: list[str] = []
        self.on_disk: list[set[str]] = []
        self.active = 0  # fetches and loads running now (any thread)
        self.busy_deletions = 0  # deletions while one ran: must stay 0
        collect = HubDownloads.collect

        def watched_collect(downloads, *args, **kwargs):
            self.busy_deletions += self.active > 0
            return collect(downloads, *args, **kwargs)

        monkeypatch.setattr(HubDownloads, "collect", watched_collect)
        for module, name in (
            (prefetch, "fetch_checkpoint"),
            (prefetch, "load_checkpoint_model"),
            (plan, "load_checkpoint_model"),
            (plan, "load_checkpoint_tokenizer"),
        ):
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name)))

    def _wrap(self, real):
        def call(ckpt, **kwargs):
            self.active += 1
            try:
                if ckpt.model == self.repo and not _present(self.repo, ckpt.revision):
                    self.download(ckpt.revision)
                return real(ckpt, **kwargs)
            finally:
                self.active -= 1

        return call

    def download(self, revision: str) -> None:
        shas = make_fake_hub_model(os.environ["HF_HOME"], self.repo, (revision,))
        if revision in self.broken:
            snap = hub_repo_dir(os.environ["HF_HOME"], self.repo) / "snapshots" / shas[revision]
            (snap / "config.json").write_text("{ broken")
        self.downloads.append(revision)
        self.on_disk.append({r for r in REVS if r not in self.cached_before and _present(self.repo, r)})


def _replay(repo: str, out: Path, **kwargs):
    return run_replay(
        hub_checkpoints(repo, list(REVS)),
        out,
        measure=MEASURE,
        probes=PROBES,
        progress=False,
        verbose=kwargs.pop("verbose", False),
        **kwargs,
    )


def _values(out: Path) -> dict[str, tuple[float, float]]:
    return {r["key"]: (r["rankme"], r["alpha"]) for r in ResultsStore(out).records()}


@pytest.mark.parametrize("mode", ["sequential", "prefetch-fetch", "prefetch-build"])
def test_this_runs_downloads_are_deleted_once_measured(tmp_path, monkeypatch, mode):
    repo = f"EleutherAI/pythia-disk-{mode}"
    make_fake_hub_model(os.environ["HF_HOME"], repo, ("step0",))  # cached before the run: never touched
    before = _commit(repo, "step0")
    fake = FakeDownloads(monkeypatch, repo, {"step0"}, broken={"step3"})
    if mode == "prefetch-build":  # whole loads in the background (the GPU route), not only fetches
        monkeypatch.setattr(prefetch, "background_build_is_safe", lambda load: True)
    out = tmp_path / "out"
    summary = _replay(repo, out, prefetch=mode != "sequential")

    assert summary.measured == ["step0", "step1", "step2", "step4"]
    assert list(summary.failed) == ["step3"]  # its download is ours too: deleted as well
    assert summary.deleted == ["step1", "step2", "step3", "step4"]
    assert "4 download(s) deleted from the hub cache" in str(summary)
    assert _snapshots(repo) == {before} and _present(repo, "step0")
    assert fake.downloads == ["step1", "step2", "step3", "step4"]  # each downloaded once
    # Deleted after its records: every measured checkpoint has them (it was loaded whole first).
    assert set(_values(out)) == {"step0", "step1", "step2", "step4"}
    # At most the checkpoint measured and the one fetched ahead are on disk at once.
    assert max(len(s) for s in fake.on_disk) == (1 if mode == "sequential" else 2)
    assert fake.busy_deletions == 0  # never while a fetch or a load ran
    deleted = [json.loads(line) for line in (out / DELETED_FILE).read_text().splitlines()]
    assert [key for d in deleted for key in d["keys"]] == summary.deleted
    assert all(d["freed_bytes"] > 0 and d["models"] == [repo] and len(d["commits"]) == 1 for d in deleted)


def test_keep_downloads_keeps_them_and_measures_the_same(tmp_path, monkeypatch):
    repo = "EleutherAI/pythia-disk-keep"
    FakeDownloads(monkeypatch, repo, set())
    deleting = _replay(repo, tmp_path / "deleting")
    assert deleting.deleted == list(REVS) and not _snapshots(repo)
    kept = _replay(repo, tmp_path / "kept", load=LoadOptions(keep_downloads=True))
    assert kept.deleted == [] and all(_present(repo, r) for r in REVS)
    assert not (tmp_path / "kept" / DELETED_FILE).exists()
    assert _values(tmp_path / "kept") == _values(tmp_path / "deleting")  # deletion changes no value
    # Now all are cached before the next run: never touched, even without --keep-downloads.
    again = _replay(repo, tmp_path / "again")
    assert again.deleted == [] and all(_present(repo, r) for r in REVS)


def test_the_command_line_keeps_downloads_with_the_flag(tmp_path, monkeypatch):
    repo = "EleutherAI/pythia-disk-cli"
    FakeDownloads(monkeypatch, repo, set())
    argv = ["replay", "--model", repo, "--revisions", "step0,step1", "--num-sequences", "12", "--max-tokens", "24"]
    assert main([*argv, "--no-progress", "--quiet", "--keep-downloads", "--output", str(tmp_path / "a")]) == 0
    assert _present(repo, "step0") and _present(repo, "step1")
    assert json.loads((tmp_path / "a" / "run.json").read_text())["load"]["keep_downloads"] is True


def test_the_probe_sets_tokenizer_download_is_deleted_too(tmp_path, monkeypatch):
    # A resumed run whose first checkpoint is done fetches its tokenizer only to build the probe
    # set: that download is this run's, and goes at the end.
    repo = "EleutherAI/pythia-disk-resume"
    fake = FakeDownloads(monkeypatch, repo, set())
    out = tmp_path / "out"
    first = run_replay(hub_checkpoints(repo, ["step0"]), out, probes=PROBES, progress=False, verbose=False)
    assert first.deleted == ["step0"] and not _snapshots(repo)
    second = run_replay(hub_checkpoints(repo, ["step0", "step1"]), out, probes=PROBES, progress=False, verbose=False)
    assert second.skipped == ["step0"] and second.measured == ["step1"]
    assert fake.downloads == ["step0", "step0", "step1"] and sorted(second.deleted) == ["step0", "step1"]
    assert not _snapshots(repo)


def test_a_commit_still_to_measure_is_kept_until_it_is_measured(monkeypatch):
    # Pythia's main is step143000: deleting one name's commit must wait for the other.
    repo = "EleutherAI/pythia-disk-alias"
    ckpts = hub_checkpoints(repo, ["step1", "main"])
    downloads = HubDownloads.before(ckpts, keep=False)
    make_fake_hub_model(os.environ["HF_HOME"], repo, ("step1",))  # refs/main -> step1's commit: one commit
    assert downloads.ours(ckpts[0]) == downloads.ours(ckpts[1]) is not None
    downloads.release(ckpts[0])
    assert downloads.collect(pending=[ckpts[1]]) == [] and _present(repo, "step1")
    downloads.release(ckpts[1])
    assert downloads.collect(pending=[]) == ["step1", "main"] and not _snapshots(repo)


def test_local_checkpoints_are_never_deleted(tmp_path):
    from fakehub import build_tiny_model

    build_tiny_model().save_pretrained(tmp_path / "run" / "checkpoint-1")
    downloads = HubDownloads.before(local_checkpoints(tmp_path / "run"), keep=False)
    assert not downloads.deleting and downloads.collect(sweep=True) == []
    assert (tmp_path / "run" / "checkpoint-1" / "config.json").is_file()


# ----------------------------------------------------------------------------- the estimate


GB = 10**9


@pytest.fixture
def free_disk(monkeypatch):
    """``free_disk(bytes)``: the hub cache's disk has this much free space."""

    def set_free(free: int) -> None:
        monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: _Usage(free))

    return set_free


class _Usage:
    def __init__(self, free: int) -> None:
        self.total, self.used, self.free = 10 * free, 9 * free, free


def _downloads(keep: bool, n: int = 154) -> tuple[list, HubDownloads]:
    ckpts = hub_checkpoints("EleutherAI/pythia-disk-estimate", [f"step{i}" for i in range(n)])
    return ckpts, HubDownloads.before(ckpts, keep=keep)


def test_the_estimate_counts_two_revisions_when_deleting_and_all_when_kept(free_disk):
    free_disk(100 * GB)
    calls: list[tuple[str, str]] = []

    def sizes(repo, revision):
        calls.append((repo, revision))
        return 24 * GB

    ckpts, downloads = _downloads(keep=False)
    estimate = estimate_disk(ckpts, downloads, prefetch=True, sizes=sizes)
    assert (estimate.to_download, estimate.at_once, estimate.needed) == (154, 2, 48 * GB)
    assert estimate.fits and calls == [("EleutherAI/pythia-disk-estimate", "step0")]  # one metadata call
    assert estimate_disk(ckpts, downloads, prefetch=False, sizes=sizes).needed == 24 * GB
    ckpts, kept = _downloads(keep=True)
    estimate = estimate_disk(ckpts, kept, prefetch=True, sizes=sizes)
    assert (estimate.at_once, estimate.needed, estimate.fits) == (154, 154 * 24 * GB, False)


def test_the_estimate_is_logged_and_a_run_that_cannot_fit_is_refused(free_disk, caplog):
    free_disk(100 * GB)
    ckpts, downloads = _downloads(keep=False)
    with caplog.at_level(logging.INFO, logger="geomtrace.replay"):
        check_disk(estimate_disk(ckpts, downloads, prefetch=True, sizes=lambda r, v: 24 * GB))
    (line,) = [r.getMessage() for r in caplog.records if "disk" in r.getMessage()]
    assert "154 revision(s) to download, 24.0 GB each" in line and "48.0 GB" in line and "100.0 GB free" in line
    ckpts, kept = _downloads(keep=True)
    with pytest.raises(DiskBudgetError) as err:
        check_disk(estimate_disk(ckpts, kept, prefetch=True, sizes=lambda r, v: 24 * GB))
    message = str(err.value)
    assert "3.7 TB" in message and "100.0 GB free" in message and "nothing was measured" in message
    assert "drop --keep-downloads" in message and "fewer revisions" in message and "HF_HOME" in message
    free_disk(50 * GB)  # fits, with under 10 % to spare: a warning
    with pytest.warns(UserWarning, match="little room"):
        check_disk(estimate_disk(*_downloads(keep=False), prefetch=True, sizes=lambda r, v: 24 * GB))


def test_without_metadata_the_estimate_is_unavailable_and_the_run_goes_on(free_disk, caplog):
    free_disk(GB)
    ckpts, downloads = _downloads(keep=False)
    with caplog.at_level(logging.INFO, logger="geomtrace.replay"):
        check_disk(estimate_disk(ckpts, downloads, prefetch=True))  # the tests run offline
    assert any("disk estimate unavailable (offline (HF_HUB_OFFLINE))" in r.getMessage() for r in caplog.records)


def test_the_revision_size_is_what_a_load_downloads(monkeypatch):
    import huggingface_hub
    from huggingface_hub.hf_api import RepoSibling

    files = {"config.json": 600, "tokenizer.json": 2_000, "pytorch_model.bin": 5 * GB, "README.md": 9}

    class Api:
        def model_info(self, repo, revision=None, files_metadata=False):
            assert files_metadata and revision == "step1000"
            return type("Info", (), {"siblings": [RepoSibling(rfilename=n, size=s) for n, s in files.items()]})

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    assert disk.hub_revision_bytes("EleutherAI/pythia-x", "step1000") == 5 * GB + 2_600  # .bin-only branch
    files["model.safetensors"] = 4 * GB  # both formats: a load downloads safetensors only
    assert disk.hub_revision_bytes("EleutherAI/pythia-x", "step1000") == 4 * GB + 2_600


def test_replay_refuses_a_run_that_cannot_fit_before_measuring(tmp_path, monkeypatch):
    repo = "EleutherAI/pythia-disk-refused"
    FakeDownloads(monkeypatch, repo, set())
    monkeypatch.setattr(disk, "hub_revision_bytes", lambda repo, revision: 10**18)
    out = tmp_path / "out"
    argv = ["replay", "--model", repo, "--revisions", "step0,step1", "--num-sequences", "12", "--max-tokens", "24"]
    assert main([*argv, "--no-progress", "--quiet", "--output", str(out)]) == 2
    assert ResultsStore(out).records() == []
    # What building the probe set fetched before the estimate is this run's: not left behind.
    assert not _snapshots(repo)


# ----------------------------------------------------------------------------- through huggingface_hub


@pytest.mark.parametrize("prefetch_on", [False, True], ids=["sequential", "prefetch"])
def test_replay_downloads_through_the_hub_and_deletes_what_it_downloaded(hub_stub, tmp_path, prefetch_on):
    # Real downloads (huggingface_hub against the local stub, .bin-only branches as Pythia's):
    # the cache holds blobs + symlinks, and the tokenizer blobs are shared by every revision.
    import huggingface_hub

    from fakehub import build_tiny_model, revision_seed, save_revision, tiny_tokenizer

    repo, revs = "stub-org/pythia-disk", ("step0", "step1", "step2")
    tok = tiny_tokenizer()
    for i, rev in enumerate(revs):
        save_revision(build_tiny_model(seed=revision_seed(rev, i)), tmp_path / "src" / rev, "bin", tok)
        hub_stub.add_folder(repo, rev, tmp_path / "src" / rev)
    kept = Path(huggingface_hub.snapshot_download(repo, revision="step0"))  # cached before the run
    summary = run_replay(
        hub_checkpoints(repo, list(revs)),
        tmp_path / "out",
        measure=MEASURE,
        probes=PROBES,
        prefetch=prefetch_on,
        progress=False,
        verbose=False,
    )
    assert summary.measured == list(revs) and not summary.failed
    assert summary.deleted == ["step1", "step2"]
    snapshots = hub_stub.cache / "models--stub-org--pythia-disk" / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == [kept.name]
    # The revision cached before is whole: its blobs, shared ones included, are still there.
    files = sorted(p.name for p in kept.iterdir())
    assert "pytorch_model.bin" in files and "tokenizer.json" in files
    assert all((kept / name).resolve().is_file() for name in files)
    assert len(hub_stub.downloads("pytorch_model.bin")) == 3  # each revision's weights once
    report = huggingface_hub.scan_cache_dir(hub_stub.cache)
    assert not report.warnings  # the cache is consistent after the deletions
    (repo_info,) = report.repos
    assert [r.commit_hash for r in repo_info.revisions] == [kept.name]


def _stub_repo(hub_stub, tmp_path, repo: str, revs=("step0", "step1", "step2")) -> dict[str, Path]:
    """``revs`` of ``repo`` served by the stub (.bin-only, as Pythia's branches); their source folders."""
    from fakehub import build_tiny_model, revision_seed, save_revision, tiny_tokenizer

    tok, folders = tiny_tokenizer(), {}
    for i, rev in enumerate(revs):
        folders[rev] = tmp_path / "src" / rev
        save_revision(build_tiny_model(seed=revision_seed(rev, i)), folders[rev], "bin", tok)
        hub_stub.add_folder(repo, rev, folders[rev])
    return folders


def _load_size(folder: Path) -> int:
    """What a load of a .bin-only revision downloads: its weights, config and tokenizer files."""
    small = (".json", ".txt", ".model", ".py", ".tiktoken")
    return sum(p.stat().st_size for p in folder.iterdir() if p.name == "pytorch_model.bin" or p.name.endswith(small))


def test_the_stub_gives_file_sizes_as_the_hub_does(hub_stub, tmp_path):
    import hashlib

    import huggingface_hub

    folders = _stub_repo(hub_stub, tmp_path, "stub-org/pythia-sizes", ("step0",))
    info = huggingface_hub.HfApi().model_info("stub-org/pythia-sizes", revision="step0", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    weights = (folders["step0"] / "pytorch_model.bin").read_bytes()
    assert siblings["pytorch_model.bin"].size == len(weights)
    assert siblings["pytorch_model.bin"].lfs.size == len(weights)
    assert siblings["pytorch_model.bin"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["config.json"].size == (folders["step0"] / "config.json").stat().st_size
    assert siblings["config.json"].lfs is None and siblings["config.json"].blob_id
    assert disk.hub_revision_bytes("stub-org/pythia-sizes", "step0") == _load_size(folders["step0"])
    # Without files_metadata the hub (and the stub) gives names only.
    plain = huggingface_hub.HfApi().model_info("stub-org/pythia-sizes", revision="step0")
    assert all(s.size is None for s in plain.siblings)


def test_replay_through_the_hub_logs_the_disk_estimate(hub_stub, tmp_path, monkeypatch, caplog):
    import huggingface_hub

    repo = "stub-org/pythia-estimate"
    folders = _stub_repo(hub_stub, tmp_path, repo)
    huggingface_hub.snapshot_download(repo, revision="step0")  # cached before: not counted
    estimates = []
    real_check = runner.check_disk
    monkeypatch.setattr(runner, "check_disk", lambda estimate: estimates.append(estimate) or real_check(estimate))
    with caplog.at_level(logging.INFO, logger="geomtrace.replay"):
        summary = run_replay(
            hub_checkpoints(repo, ["step0", "step1", "step2"]),
            tmp_path / "out",
            measure=MEASURE,
            probes=PROBES,
            prefetch=True,
            progress=False,
            verbose=False,
        )
    assert summary.measured == ["step0", "step1", "step2"]
    (estimate,) = estimates
    each = _load_size(folders["step1"])  # the first revision still to download stands for all
    assert (estimate.to_download, estimate.at_once, estimate.per_revision) == (2, 2, each)
    assert estimate.needed == 2 * each and estimate.fits
    (line,) = [r.getMessage() for r in caplog.records if "[geomtrace] disk:" in r.getMessage()]
    assert f"2 revision(s) to download, {format_bytes(each)} each" in line
    assert f"about {format_bytes(2 * each)} on disk at once" in line


def test_replay_through_the_hub_refuses_a_run_the_disk_cannot_hold(hub_stub, tmp_path, monkeypatch, capsys):
    repo = "stub-org/pythia-no-room"
    folders = _stub_repo(hub_stub, tmp_path, repo)
    each = _load_size(folders["step0"])
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: _Usage(each // 2))  # not even one revision
    out = tmp_path / "out"
    argv = ["replay", "--model", repo, "--revisions", "step0,step1,step2", "--num-sequences", "12"]
    code = main([*argv, "--max-tokens", "24", "--no-progress", "--quiet", "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"replay needs about {format_bytes(2 * each)}" in err and f"{format_bytes(each // 2)} free" in err
    assert "nothing was measured" in err and "HF_HOME" in err
    assert ResultsStore(out).records() == []
    assert len(hub_stub.downloads("pytorch_model.bin")) == 0  # refused before any weights came
    # The tokenizer fetched to build the probe set was this run's: not left behind.
    snapshots = hub_stub.cache / "models--stub-org--pythia-no-room" / "snapshots"
    assert not snapshots.is_dir() or not list(snapshots.iterdir())


# ----------------------------------------------------------------------------- the downloads ledger


def _ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LEDGER_FILE).read_text().splitlines()]


class _Kill:
    """While ``on``, the ``at``-th measurement raises KeyboardInterrupt, the loop's way out
    deletes nothing, and with ``collect=False`` no deletion happens at all: what a kill
    (SIGKILL, a crashed node) leaves behind."""

    def __init__(self, monkeypatch, at: int | None, collect: bool = True) -> None:
        self.on, self.at, self.calls = True, at, 0
        measure, leave, collect_now = runner.measure_geometry, runner._leave_downloads, runner._collect_downloads

        def measure_or_die(*args, **kwargs):
            self.calls += 1
            if self.on and self.calls == self.at:
                raise KeyboardInterrupt
            return measure(*args, **kwargs)

        monkeypatch.setattr(runner, "measure_geometry", measure_or_die)
        monkeypatch.setattr(runner, "_leave_downloads", lambda *a: None if self.on else leave(*a))
        monkeypatch.setattr(
            runner, "_collect_downloads", lambda *a, **k: None if self.on and not collect else collect_now(*a, **k)
        )


@pytest.mark.parametrize("prefetch_on", [False, True], ids=["sequential", "prefetch"])
def test_a_killed_runs_last_download_is_deleted_by_the_next_run(tmp_path, monkeypatch, prefetch_on):
    repo = f"EleutherAI/pythia-disk-killed-{prefetch_on}"
    make_fake_hub_model(os.environ["HF_HOME"], repo, ("step3",))  # cached before: never touched
    before = _commit(repo, "step3")
    fake = FakeDownloads(monkeypatch, repo, {"step3"})
    kill = _Kill(monkeypatch, at=3)  # while measuring step2, its download done
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _replay(repo, out, prefetch=prefetch_on)
    assert fake.downloads == ["step0", "step1", "step2"] and _present(repo, "step2")
    assert not _present(repo, "step0") and not _present(repo, "step1")  # deleted on the way
    ledger = _ledger(out)
    assert [(e["event"], e.get("revision")) for e in ledger if e["event"] == "fetching"] == [
        ("fetching", "step0"),
        ("fetching", "step1"),
        ("fetching", "step2"),
    ]
    assert [e["commits"] for e in ledger if e["event"] == "cached"] == [[before]]
    # A process that writes no ledger (a torchrun rank but the first) reads the same leftovers.
    reader = HubDownloads.before(hub_checkpoints(repo, list(REVS)), keep=False, ledger=out / LEDGER_FILE)
    assert [c.key for c in reader.leftovers] == ["step2"]
    reader.declare(reader.leftovers[0])
    assert _ledger(out) == ledger  # it writes nothing

    kill.on = False
    summary = _replay(repo, out, prefetch=prefetch_on)
    assert summary.skipped == ["step0", "step1"] and summary.measured == ["step2", "step3", "step4"]
    assert "step2" in summary.deleted and "step4" in summary.deleted and "step3" not in summary.deleted
    assert fake.downloads.count("step2") == 1  # the leftover was measured from the cache, then deleted
    assert _snapshots(repo) == {before} and _present(repo, "step3")
    # Settled: a third run finds nothing left over (and the revision cached before stays).
    third = HubDownloads.before(hub_checkpoints(repo, list(REVS)), keep=False, output=out)
    assert third.leftovers == [] and third.collect(sweep=True) == [] and _present(repo, "step3")


def test_leftovers_are_kept_by_keep_downloads_and_deleted_by_the_next_run(tmp_path, monkeypatch):
    repo = "EleutherAI/pythia-disk-measured"
    fake = FakeDownloads(monkeypatch, repo, set())
    kill = _Kill(monkeypatch, at=None, collect=False)  # killed after the records, before any deletion
    out = tmp_path / "out"
    first = _replay(repo, out, prefetch=False)
    assert first.measured == list(REVS) and first.deleted == [] and all(_present(repo, r) for r in REVS)
    kill.on = False
    # With --keep-downloads a run deletes nothing, leftovers included.
    kept = _replay(repo, out, load=LoadOptions(keep_downloads=True), prefetch=False)
    assert kept.skipped == list(REVS) and kept.deleted == [] and all(_present(repo, r) for r in REVS)
    # The next run deletes them all (measured already: at the first safe point).
    again = _replay(repo, out, prefetch=False)
    assert again.skipped == list(REVS) and sorted(again.deleted) == list(REVS) and not _snapshots(repo)
    assert fake.downloads == list(REVS)  # nothing was downloaded twice


def test_a_measured_leftover_goes_before_the_next_revision_is_downloaded(tmp_path, monkeypatch):
    repo = "EleutherAI/pythia-disk-measured-first"
    fake = FakeDownloads(monkeypatch, repo, set())
    kill = _Kill(monkeypatch, at=None, collect=False)
    out = tmp_path / "out"
    run_replay(hub_checkpoints(repo, ["step0", "step1"]), out, probes=PROBES, progress=False, verbose=False)
    assert _present(repo, "step0") and _present(repo, "step1")  # measured, not deleted
    kill.on = False
    summary = _replay(repo, out, prefetch=False)
    assert summary.skipped == ["step0", "step1"] and sorted(summary.deleted) == list(REVS)
    assert fake.downloads == list(REVS)
    assert fake.on_disk[2] == {"step2"}  # step0 and step1 were gone before step2 came


def test_a_commit_cached_before_the_first_run_is_never_taken_for_a_leftover(tmp_path):
    # Pythia's main is step143000: a run that fetches `main` when the cache knows the commit by
    # another name downloads nothing; a later run must not delete that commit.
    repo = "EleutherAI/pythia-disk-first-run"
    make_fake_hub_model(os.environ["HF_HOME"], repo, ("step1",))
    (hub_repo_dir(os.environ["HF_HOME"], repo) / "refs" / "main").unlink()  # the cache knows it as step1 only
    ckpts = hub_checkpoints(repo, ["main"])
    out = tmp_path / "out"
    first = HubDownloads.before(ckpts, keep=False, output=out)
    first.declare(ckpts[0])  # not known as cached: noted, with the commits cached before
    (hub_repo_dir(os.environ["HF_HOME"], repo) / "refs" / "main").write_text(_commit(repo, "step1"))  # "fetched"
    assert first.ours(ckpts[0]) is None  # the same commit: not this run's
    later = HubDownloads.before(ckpts, keep=False, output=out)  # the first run was killed
    assert later.leftovers == [] and later.collect(sweep=True) == [] and _present(repo, "step1")


def test_a_ledger_that_cannot_be_written_is_one_warning(tmp_path):
    import warnings

    repo = "EleutherAI/pythia-disk-no-ledger"
    ckpts = hub_checkpoints(repo, ["step0", "step1"])
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.warns(UserWarning, match="could not read the downloads ledger"):
        downloads = HubDownloads.before(ckpts, keep=False, output=tmp_path / "out")
    with pytest.warns(UserWarning, match="could not write the downloads ledger"):
        downloads.declare(ckpts[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        downloads.declare(ckpts[1])  # the run goes on, without a second warning
