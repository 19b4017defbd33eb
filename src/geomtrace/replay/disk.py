"""The hub cache during a replay: this run's downloads are deleted once measured, and the disk
they need is estimated before the first one.

Pythia-12B is about 24 GB per revision (3.6 TB for all 154): a replay that keeps every download
fills any disk, after which every later checkpoint fails. So by default (``LoadOptions.keep_downloads
= False``, ``--keep-downloads`` keeps them) :class:`HubDownloads`:

* looks at the hub cache *before* anything is fetched and remembers which commits of each
  repo are there already (:meth:`HubDownloads.before`): those are never touched;
* is told when a checkpoint's outcome (its records, or its failure) is written
  (:meth:`~HubDownloads.release`), and deletes its revision at the next safe point
  (:meth:`~HubDownloads.collect`): when no background fetch runs (the prefetch thread may be
  linking blobs that this revision shares), and never a commit that a checkpoint still to
  measure resolves to. Deletion goes through huggingface_hub's cache API
  (``scan_cache_dir().delete_revisions``), which keeps blobs that another cached revision
  still links;
* records each deletion in ``OUT/deleted_downloads.jsonl`` (``keys``, ``models``, ``commits``,
  ``freed_bytes``, ``time``), so that an empty cache has an answer;
* keeps a ledger, ``OUT/downloads.jsonl`` (:data:`LEDGER_FILE`), of the revisions it is about to
  fetch (:meth:`~HubDownloads.declare`, before the fetch starts) and of those it deleted, so that
  a run stopped in the middle (Ctrl-C, an error, a kill) does not leave its last downloads
  behind for good: the next run into the same output reads the ledger and treats a revision
  declared there and not deleted since as its own download (deleted once measured, or at once
  when it is measured already). Each run also notes there, per repo, the commits that were in
  the cache before it: those are never taken for a run's download, whatever the ledger says.
  A revision a run declared but could not fetch, that the user then fetched by hand, cannot be
  told apart from a leftover: it is deleted as one (``--keep-downloads`` deletes nothing).

Local folders and Lightning files are never deleted. Deleting never raises: a revision that
cannot be deleted is a warning naming it.

:func:`estimate_disk` compares what the run will need (one revision's file sizes from the hub's
metadata, times the revisions on disk at once: two with deletion and prefetch, else every
revision still to download) with the free space of the cache's disk; :func:`check_disk` logs
it, and refuses a run that certainly cannot fit (:class:`DiskBudgetError`, with the fixes).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from geomtrace._jsonio import append_jsonl, read_jsonl
from geomtrace._optional import require
from geomtrace._warnings import warn
from geomtrace.replay.checkpoint import Checkpoint, CheckpointKind

__all__ = [
    "DELETED_FILE",
    "DiskBudgetError",
    "DiskEstimate",
    "HubDownloads",
    "LEDGER_FILE",
    "check_disk",
    "estimate_disk",
    "format_bytes",
    "hub_cache_dir",
    "hub_revision_bytes",
]

logger = logging.getLogger("geomtrace.replay")

#: The output's record of the downloads a replay deleted from the hub cache.
DELETED_FILE = "deleted_downloads.jsonl"
#: The output's ledger of the hub revisions its runs fetched (and deleted), and of what was
#: cached before each run: how a later run finds what a stopped one left behind.
LEDGER_FILE = "downloads.jsonl"

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class DiskBudgetError(OSError):
    """The revisions a replay must download certainly do not fit on the hub cache's disk."""


def format_bytes(n: float) -> str:
    """``1.5 GB`` style (powers of 1000, as the hub shows sizes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def hub_cache_dir() -> Path:
    """The hub cache folder (``HF_HUB_CACHE``, by default ``$HF_HOME/hub``), as huggingface_hub uses it."""
    hub = require("huggingface_hub", "reading the hub cache")
    return Path(hub.constants.HF_HUB_CACHE).expanduser()


def _is_hub(ckpt: Checkpoint) -> bool:
    # A "hub" checkpoint whose model is a local folder is a folder: never deleted.
    return ckpt.kind == CheckpointKind.HUB and not Path(ckpt.model).expanduser().is_dir()


def _repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _snapshots(repo_dir: Path) -> frozenset[str]:
    try:
        return frozenset(p.name for p in (repo_dir / "snapshots").iterdir() if p.is_dir())
    except OSError:
        return frozenset()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _commit(repo_dir: Path, revision: str | None) -> str | None:
    """The commit ``revision`` resolves to in the local cache (None: not there)."""
    revision = revision or "main"
    if _COMMIT.match(revision):
        return revision if (repo_dir / "snapshots" / revision).is_dir() else None
    try:
        commit = (repo_dir / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    return commit if (repo_dir / "snapshots" / commit).is_dir() else None


class HubDownloads:
    """Which hub revisions this run downloaded, and their deletion once measured.

    Build it with :meth:`before`, before anything is fetched. ``keep``: delete nothing
    (``--keep-downloads``). ``deleter``: only this process deletes (under torchrun, local rank 0;
    the other ranks keep the same schedule). ``output``: where deletions are recorded
    (:data:`DELETED_FILE`; None: not recorded).
    """

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        cached: dict[str, frozenset[str]],
        *,
        cache_dir: Path,
        keep: bool,
        deleter: bool = True,
        output: str | os.PathLike | None = None,
    ) -> None:
        self.checkpoints = [c for c in checkpoints if _is_hub(c)]
        self.cached = cached  # repo id -> commits in the cache before the run
        self.cache_dir = cache_dir
        self.keep = keep
        self.deleter = deleter
        self.output = None if output is None else Path(output)
        self.verbose = False
        self.deleted: list[str] = []  # keys, in order
        #: This run's checkpoints whose revision a stopped run into the same output left in the cache.
        self.leftovers: list[Checkpoint] = []
        self._released: list[Checkpoint] = []
        self._declared: set[tuple[str, str | None]] = set()
        self._noted: set[str] = set()  # repos whose cached-before commits are in the ledger
        self._ledger_failed = False

    @classmethod
    def before(
        cls,
        checkpoints: Sequence[Checkpoint],
        *,
        keep: bool,
        deleter: bool = True,
        output: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        ledger: str | os.PathLike | None = None,
    ) -> HubDownloads:
        """Look at the cache now (before any fetch): the commits of each repo cached already,
        less what an earlier run into the output fetched and did not delete, from the ledger
        ``ledger`` (default ``output``'s :data:`LEDGER_FILE`; a process that records nothing,
        under torchrun, still reads it). Only ``output``'s ledger is written."""
        hub = [c for c in checkpoints if _is_hub(c)]
        cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir() if hub else Path()
        cached = {c.model: _snapshots(_repo_dir(cache, c.model)) for c in hub}
        left: dict[str, set[str]] = {}
        if ledger is None and output is not None:
            ledger = Path(output) / LEDGER_FILE
        if ledger is not None and hub and not keep:
            left = _leftover_commits(Path(ledger), cache)
            cached = {model: commits - left.get(model, set()) for model, commits in cached.items()}
        downloads = cls(hub, cached, cache_dir=cache, keep=keep, deleter=deleter, output=output)
        downloads.leftovers = [c for c in downloads.checkpoints if downloads.ours(c) in left.get(c.model, ())]
        return downloads

    # ------------------------------------------------------------------ questions

    @property
    def deleting(self) -> bool:
        """Whether this run deletes its downloads (hub checkpoints, not kept)."""
        return not self.keep and bool(self.checkpoints)

    def cached_before(self, ckpt: Checkpoint) -> bool:
        """Whether ``ckpt``'s revision was in the cache before the run (never deleted)."""
        commit = _commit(_repo_dir(self.cache_dir, ckpt.model), ckpt.revision)
        return commit is not None and commit in self.cached.get(ckpt.model, frozenset())

    def ours(self, ckpt: Checkpoint) -> str | None:
        """The commit of ``ckpt`` when this run downloaded it (it is in the cache now and was not before)."""
        if not _is_hub(ckpt):
            return None
        commit = _commit(_repo_dir(self.cache_dir, ckpt.model), ckpt.revision)
        return None if commit is None or commit in self.cached.get(ckpt.model, frozenset()) else commit

    # ------------------------------------------------------------------ the loop's side

    def declare(self, ckpt: Checkpoint) -> None:
        """``ckpt``'s revision is about to be fetched: note it in the ledger first (once per
        revision and run), so that a later run deletes it if this one stops before it does.
        A revision cached before the run is not noted (it is never deleted)."""
        if not self.deleting or self.output is None or not _is_hub(ckpt):
            return
        name = (ckpt.model, ckpt.revision)
        if name in self._declared or self.cached_before(ckpt):
            return
        lines: list[dict[str, object]] = []
        if ckpt.model not in self._noted:  # what no run of this output may ever take for its download
            commits = sorted(self.cached.get(ckpt.model, frozenset()))
            lines.append({"event": "cached", "model": ckpt.model, "commits": commits, "time": _now()})
        lines.append({"event": "fetching", "model": ckpt.model, "revision": ckpt.revision, "time": _now()})
        if self._ledger(lines):
            self._declared.add(name)
            self._noted.add(ckpt.model)

    def _ledger(self, lines: list[dict[str, object]]) -> bool:
        """Append to the output's ledger; a failure is one warning (the run goes on)."""
        assert self.output is not None
        try:
            self.output.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.output / LEDGER_FILE, lines)
        except OSError as err:
            if not self._ledger_failed:  # one warning
                warn(
                    f"could not write the downloads ledger {self.output / LEDGER_FILE} ({err}): a run stopped before "
                    "deleting its downloads leaves them in the hub cache (delete them with `hf cache delete`)"
                )
            self._ledger_failed = True
            return False
        return True

    def release(self, ckpt: Checkpoint) -> None:
        """``ckpt``'s outcome is written: its download may go at the next :meth:`collect`."""
        if self.deleting and _is_hub(ckpt):
            self._released.append(ckpt)

    def collect(self, pending: Iterable[Checkpoint] = (), *, sweep: bool = False) -> list[str]:
        """Delete the released revisions that this run downloaded; the keys deleted.

        Call it only while nothing is being fetched. ``pending``: checkpoints still to load
        (their commits are kept, also when another revision name resolves to the same one).
        ``sweep``: also every other checkpoint of the run that this run downloaded (the end of
        the run: tokenizer files fetched to build the probe set, say).
        """
        if not self.deleting:
            return []
        candidates = list(self._released)
        if sweep:
            candidates += [c for c in self.checkpoints if c not in candidates]
        keep = {(c.model, commit) for c in pending if (commit := self.ours(c)) is not None}
        chosen: dict[tuple[str, str], list[Checkpoint]] = {}
        later: list[Checkpoint] = []
        for ckpt in candidates:
            commit = self.ours(ckpt)
            if commit is None:  # cached before the run, or not downloaded (failed early): nothing to do
                continue
            if (ckpt.model, commit) in keep:  # a checkpoint still to load resolves to it: once that is done
                later.append(ckpt)
                continue
            chosen.setdefault((ckpt.model, commit), []).append(ckpt)
        self._released = later
        if not chosen:
            return []
        if self.deleter and self._delete(chosen) is None:
            return []  # warned: a revision that cannot be deleted is left as it is
        keys = [c.key for ckpts in chosen.values() for c in ckpts]
        self.deleted += keys
        return keys

    def _delete(self, chosen: dict[tuple[str, str], list[Checkpoint]]) -> int | None:
        """Delete the chosen commits through huggingface_hub's cache API; the bytes freed."""
        hub = require("huggingface_hub", "deleting downloads from the hub cache")
        keys = ", ".join(c.key for ckpts in chosen.values() for c in ckpts)
        try:
            info = hub.scan_cache_dir(self.cache_dir)
            strategy = info.delete_revisions(*{commit for _, commit in chosen})
            # A repo that fails to scan (a download killed half-way) is skipped by the scan:
            # nothing of it would be deleted. Say so rather than pretend.
            scanned = {repo.repo_id for repo in info.repos}
            missing = sorted({model for model, _ in chosen} - scanned)
            if missing:
                why = "; ".join(str(w) for w in info.warnings)[:500]
                raise OSError(f"the cache scan skipped {', '.join(missing)} ({why})")
            strategy.execute()
        except Exception as err:  # noqa: BLE001 - deleting is housekeeping: never take the run down
            warn(
                f"could not delete this run's download of {keys} from the hub cache {self.cache_dir} "
                f"({type(err).__name__}: {err}); delete it with `hf cache delete` (or keep them with --keep-downloads)"
            )
            return None
        freed = int(strategy.expected_freed_size)
        if self.output is not None:  # one line per deletion: what went, and what it freed
            record = {
                "keys": [c.key for ckpts in chosen.values() for c in ckpts],
                "models": sorted({model for model, _ in chosen}),
                "commits": sorted({commit for _, commit in chosen}),
                "freed_bytes": freed,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            try:
                append_jsonl(self.output / DELETED_FILE, [record])
            except OSError as err:  # the deletion is done; its note must not take the run down
                warn(f"deleted {keys} from the hub cache but could not note it in {self.output / DELETED_FILE}: {err}")
            # Noted even after a failed declaration: a later run must not take it for a leftover.
            self._ledger(
                [
                    {
                        "event": "deleted",
                        "model": model,
                        "revisions": sorted({str(c.revision) for c in ckpts}),
                        "commit": commit,
                        "time": record["time"],
                    }
                    for (model, commit), ckpts in chosen.items()
                ]
            )
        if self.verbose:
            logger.info(
                f"[geomtrace] {keys}: deleted this run's download from the hub cache ({format_bytes(freed)} freed; "
                "--keep-downloads keeps them)"
            )
        return freed


def _leftover_commits(ledger: Path, cache: Path) -> dict[str, set[str]]:
    """``{repo: commits}`` that runs into this output declared (``fetching``), did not delete
    since, and that are in the cache now; never a commit noted as cached before a run."""
    try:
        lines = read_jsonl(ledger)
    except (OSError, ValueError) as err:
        warn(f"could not read the downloads ledger {ledger} ({err}): what a stopped run left in the hub cache stays")
        return {}
    protected: dict[str, set[str]] = {}
    pending: dict[tuple[str, str | None], None] = {}  # (repo, revision), in order
    resolved: dict[tuple[str, str | None], str | None] = {}  # the cache does not change meanwhile

    def commit_now(name: tuple[str, str | None]) -> str | None:
        if name not in resolved:
            resolved[name] = _commit(_repo_dir(cache, name[0]), name[1])
        return resolved[name]

    for line in lines:
        event, model = line.get("event"), line.get("model")
        if not isinstance(model, str):
            continue
        if event == "cached":
            protected.setdefault(model, set()).update(str(c) for c in line.get("commits") or ())
        elif event == "fetching":
            pending[(model, line.get("revision"))] = None
        elif event == "deleted":  # that commit went: every name of it is settled
            commit = line.get("commit")
            for name in [n for n in pending if n[0] == model]:
                if str(name[1]) in (line.get("revisions") or ()) or commit_now(name) == commit:
                    del pending[name]
    left: dict[str, set[str]] = {}
    for model, revision in pending:
        commit = commit_now((model, revision))
        if commit is not None and commit not in protected.get(model, set()):
            left.setdefault(model, set()).add(commit)
    return left


# ----------------------------------------------------------------------------- the estimate

#: Weight formats in the order transformers prefers them: a load downloads one of them.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: The other files a load reads (config, tokenizer, generation config, remote code).
_SMALL_SUFFIXES = (".json", ".txt", ".model", ".py", ".tiktoken")


def _load_bytes(files: dict[str, int]) -> int:
    """The bytes a load downloads of a revision holding ``files`` ({name: size}): the small
    files and the weights of one format (safetensors when present, else ``.bin``)."""
    total = sum(size for name, size in files.items() if name.endswith(_SMALL_SUFFIXES))
    for suffix in _WEIGHT_SUFFIXES:
        weights = [size for name, size in files.items() if name.endswith(suffix) and "/" not in name]
        if weights:
            return total + sum(weights)
    return total


def hub_revision_bytes(repo_id: str, revision: str | None) -> int:
    """The bytes a load of ``repo_id`` at ``revision`` downloads, from the hub's file metadata
    (one ``model_info(files_metadata=True)`` call). Raises when it cannot be known (offline,
    no network, no sizes)."""
    hub = require("huggingface_hub", "estimating the disk a replay needs")
    if hub.constants.HF_HUB_OFFLINE:
        raise OSError("offline (HF_HUB_OFFLINE)")
    info = hub.HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    files = {s.rfilename: int(s.size) for s in info.siblings or () if s.size is not None}
    if not files:
        raise OSError("the hub gave no file sizes")
    return _load_bytes(files)


def _free_bytes(path: Path) -> int:
    for p in (path, *path.parents):  # the cache folder may not exist yet
        if p.exists():
            return int(shutil.disk_usage(p).free)
    return int(shutil.disk_usage(Path.cwd()).free)  # pragma: no cover - "/" exists


@dataclass(frozen=True)
class DiskEstimate:
    """What a replay needs on the hub cache's disk.

    Attributes:
        to_download: revisions still to download (not in the cache before the run).
        at_once: how many of them are on disk at the same time.
        per_revision: bytes of one revision (None: unknown).
        needed: ``at_once * per_revision`` (None: unknown).
        free: free bytes on the cache's disk.
        cache_dir: the hub cache.
        deleting: downloads are deleted once measured.
        note: the assumption made, or why the estimate is unavailable.
    """

    to_download: int
    at_once: int
    per_revision: int | None
    needed: int | None
    free: int
    cache_dir: Path
    deleting: bool
    note: str

    @property
    def fits(self) -> bool | None:
        """False when it certainly does not fit, None when unknown."""
        return None if self.needed is None else self.needed <= self.free

    def message(self) -> str:
        """The log line (or the error's first sentence)."""
        where = f"the hub cache {self.cache_dir} ({format_bytes(self.free)} free)"
        if self.needed is None:
            return f"[geomtrace] disk estimate unavailable ({self.note}); {where}; going on"
        how = (
            "each deleted once measured (--keep-downloads keeps them)"
            if self.deleting
            else "all kept (without --keep-downloads each is deleted once measured)"
        )
        return (
            f"[geomtrace] disk: {self.to_download} revision(s) to download, {format_bytes(self.per_revision or 0)} "
            f"each ({self.note}), {how}: about {format_bytes(self.needed)} on disk at once in {where}"
        )


def estimate_disk(
    todo: Sequence[Checkpoint],
    downloads: HubDownloads,
    *,
    prefetch: bool,
    sizes: Callable[[str, str | None], int] | None = None,
) -> DiskEstimate | None:
    """The :class:`DiskEstimate` of loading ``todo`` (None: no hub revision to download).

    One metadata call per repo: every revision of a repo is assumed to hold the same files
    (true of Pythia's and OLMo's branches: the model's size does not change in training), so
    the first revision still to download stands for all. ``sizes``: ``(repo, revision) ->
    bytes`` (default :func:`hub_revision_bytes`)."""
    sizes = sizes or hub_revision_bytes
    missing = [c for c in todo if _is_hub(c) and not downloads.cached_before(c)]
    if not missing:
        return None
    deleting = downloads.deleting
    # With deletion: the checkpoint measured and (prefetching) the next one.
    at_once = min(len(missing), 2 if prefetch else 1) if deleting else len(missing)
    first: dict[str, Checkpoint] = {}
    for c in missing:
        first.setdefault(c.model, c)
    per_repo: dict[str, int] = {}
    note = "every revision of a repo assumed to hold the files of its first one"
    free = _free_bytes(downloads.cache_dir)
    try:
        for model, ckpt in first.items():
            per_repo[model] = int(sizes(model, ckpt.revision))
    except Exception as err:  # noqa: BLE001 - an estimate is advice: offline, say so and go on
        return DiskEstimate(len(missing), at_once, None, None, free, downloads.cache_dir, deleting, str(err)[:300])
    biggest = max(per_repo.values())
    if deleting:
        needed = at_once * biggest
    else:
        needed = sum(per_repo[c.model] for c in missing)
    return DiskEstimate(len(missing), at_once, biggest, needed, free, downloads.cache_dir, deleting, note)


#: Below this share of the free space left over, the estimate warns (other files grow too).
_MARGIN = 0.1


def check_disk(estimate: DiskEstimate | None) -> None:
    """Log ``estimate``; warn when it is tight; raise :class:`DiskBudgetError` when it
    certainly does not fit, saying what to change."""
    if estimate is None:
        return
    logger.info(estimate.message())
    if estimate.fits is None:
        return
    needed, free = estimate.needed or 0, estimate.free
    if not estimate.fits:
        fixes = [
            "give fewer revisions (--revisions, --step-range, --log-spaced, --shard)",
            "point HF_HOME (or HF_HUB_CACHE) at a bigger disk",
        ]
        if not estimate.deleting:
            fixes.insert(0, "drop --keep-downloads (each download is then deleted once measured)")
        each = format_bytes(estimate.per_revision or 0)
        raise DiskBudgetError(
            f"replay needs about {format_bytes(needed)} in the hub cache {estimate.cache_dir} but its disk has "
            f"{format_bytes(free)} free ({estimate.to_download} revision(s) of {each}, "
            f"{estimate.at_once} on disk at once): it would fail once the disk is full, so nothing was measured. "
            f"To fix: {'; or '.join(fixes)}."
        )
    if needed > (1 - _MARGIN) * free:
        warn(
            f"replay needs about {format_bytes(needed)} of the {format_bytes(free)} free in the hub cache "
            f"{estimate.cache_dir}: little room is left for anything else"
        )
