"""A small local HTTP stub of the Hugging Face hub endpoints that replay uses, for offline tests.

It answers, on ``127.0.0.1``, what ``huggingface_hub`` asks the real hub:

* ``GET /api/models/{repo}/refs`` - the branch listing (``list_repo_refs``, ``list_hub_revisions``);
* ``GET /api/models/{repo}[/revision/{rev}]`` - model info with the commit sha and the file list
  (``repo_info`` / ``model_info``, ``snapshot_download``); with ``?blobs=true``
  (``model_info(files_metadata=True)``) each sibling also has, as on the hub, its ``size`` and
  ``blobId`` (the git blob id), and the LFS files (weights) ``lfs: {size, sha256, pointerSize}``;
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` - the file tree (``list_repo_tree``,
  ``snapshot_download``);
* ``HEAD`` / ``GET /{repo}/resolve/{rev}/{file}`` - a file, with the headers ``hf_hub_download``
  needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``; ``Range`` honoured); weight files
  (``.bin``, ``.safetensors``: LFS on the hub) answer, as the hub does, ``302`` to a "CDN" URL
  ``http://localhost:PORT/cdn/{commit}/{file}`` (another origin, so huggingface_hub stops there and
  reads ``X-Linked-Etag`` / ``X-Linked-Size``; the download then GETs it);
* 404s shaped like the hub's (``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``),
  and scripted answers: :meth:`HubStub.fail` makes the next requests whose path contains a text
  answer the given status codes (429, 500, 503...) before the real answer.

A revision is addressed by its branch name or its commit sha (``snapshot_download`` resolves the
branch first). Every request is logged in :attr:`HubStub.requests` as ``(method, path)``.

Usage: the ``hub_stub`` fixture of ``tests/conftest.py`` starts one on a free port, points this
process's huggingface_hub at it (:func:`point_hub_at`) with a fresh cache (``stub.cache``); by hand::

    from hubstub import HubStub, point_hub_at

    with HubStub() as stub:
        stub.add_folder("org/tiny", "step0", some_saved_model_folder)
        point_hub_at(stub.url, monkeypatch)
        huggingface_hub.snapshot_download("org/tiny", revision="step0")
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubStub", "point_hub_at"]

_REFS = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/refs$")
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{40})/(?P<file>.+)$")
_LFS_SUFFIXES = (".bin", ".safetensors")


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _git_blob_id(data: bytes) -> str:
    """The git object id of a file's bytes (the hub's ``blobId``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sibling(path: str, body: bytes) -> dict[str, Any]:
    """A sibling as the hub's model info gives it with ``blobs=true``: an LFS file's ``size``
    is the file's (not its pointer's), its ``blobId`` the pointer's."""
    if not path.endswith(_LFS_SUFFIXES):
        return {"rfilename": path, "size": len(body), "blobId": _git_blob_id(body)}
    sha256 = hashlib.sha256(body).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(body)}\n".encode()
    lfs = {"size": len(body), "sha256": sha256, "pointerSize": len(pointer)}
    return {"rfilename": path, "size": len(body), "blobId": _git_blob_id(pointer), "lfs": lfs}


class HubStub:
    """The stub server: add repos with :meth:`add_revision` / :meth:`add_folder`, script errors
    with :meth:`fail`, use it as a context manager (or :meth:`start` / :meth:`stop`)."""

    def __init__(self) -> None:
        #: ``{repo: {revision: (sha, {path: bytes})}}``
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        #: ``(method, path)`` of every request answered.
        self.requests: list[tuple[str, str]] = []
        self._script: list[tuple[str, str | None, list[int]]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        #: The hub cache the ``hub_stub`` fixture gave huggingface_hub (None outside it).
        self.cache: Path | None = None

    # ------------------------------------------------------------------ content

    def add_revision(self, repo: str, revision: str, files: dict[str, bytes]) -> str:
        """Serve ``files`` (``{path in repo: content}``) as branch ``revision`` of ``repo``;
        returns its fake commit sha. ``main`` is added as a copy of the first revision added."""
        sha = _sha(f"{repo}@{revision}")
        revisions = self.repos.setdefault(repo, {})
        revisions[revision] = (sha, dict(files))
        revisions.setdefault("main", (sha, dict(files)))
        return sha

    def add_folder(self, repo: str, revision: str, folder: str | Path, skip: tuple[str, ...] = ()) -> str:
        """:meth:`add_revision` with the files of a local folder (``save_pretrained``'s), but ``skip``."""
        root = Path(folder)
        files = {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip
        }
        return self.add_revision(repo, revision, files)

    def fail(self, path_contains: str, *statuses: int, method: str | None = None) -> None:
        """The next ``len(statuses)`` requests (of ``method``, default any) whose path contains
        ``path_contains`` answer these status codes (in order), then the real answer comes again.
        huggingface_hub itself retries a HEAD's 429/5xx (5 times, sleeping 1-8 s) and a
        download's 429: script a ``GET`` of a file with 5xx to reach the caller's retries."""
        with self._lock:
            self._script.append((path_contains, method, list(statuses)))

    def pending(self) -> int:
        """How many scripted answers are still to be served."""
        with self._lock:
            return sum(len(statuses) for _, _, statuses in self._script)

    def downloads(self, suffix: str = "") -> list[str]:
        """Paths of the file downloads (``GET`` of a resolve or "CDN" URL) ending with ``suffix``."""
        files = [p for m, p in self.requests if m == "GET" and ("/resolve/" in p or p.startswith("/cdn/"))]
        return [p for p in files if p.endswith(suffix)]

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (the value for ``HF_ENDPOINT``)."""
        assert self._server is not None, "start the stub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self, port: int = 0) -> HubStub:
        """Listen on ``127.0.0.1:port`` (0: any free port) in a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="hubstub", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubStub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ answers

    def _scripted(self, method: str, path: str) -> int | None:
        with self._lock:
            for i, (text, only, statuses) in enumerate(self._script):
                if text in path and only in (None, method) and statuses:
                    status = statuses.pop(0)
                    if not statuses:
                        del self._script[i]
                    return status
        return None

    def _revision(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | str:
        """``(sha, files)`` or the hub's error code."""
        revisions = self.repos.get(repo)
        if revisions is None:
            return "RepoNotFound"
        rev = unquote(rev)
        if rev in revisions:
            return revisions[rev]
        for sha, files in revisions.values():
            if sha == rev:
                return sha, files
        return "RevisionNotFound"

    def answer(self, method: str, path: str, headers: Any, query: str = "") -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)`` for one request (the handler's work, testable alone);
        ``query``: the URL's query string."""
        self.requests.append((method, path))
        status = self._scripted(method, path)
        if status is not None:
            return status, {"Retry-After": "0"}, b'{"error": "scripted"}'
        if m := _REFS.match(path):
            revisions = self.repos.get(m["repo"])
            if revisions is None:
                return _not_found("RepoNotFound")
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, (s, _) in revisions.items()]
            return _json({"branches": branches, "tags": [], "converts": []})
        if m := _TREE.match(path):
            found = self._revision(m["repo"], m["rev"])
            if isinstance(found, str):
                return _not_found(found)
            prefix = (m["path"] or "").strip("/")
            entries = [
                {"type": "file", "path": p, "size": len(b), "oid": _sha(p + hashlib.sha256(b).hexdigest())}
                for p, b in sorted(found[1].items())
                if not prefix or p.startswith(prefix + "/")
            ]
            return _json(entries)
        if m := _INFO.match(path):
            found = self._revision(m["repo"], m["rev"] or "main")
            if isinstance(found, str):
                return _not_found(found)
            sha, files = found
            blobs = parse_qs(query).get("blobs", [""])[-1].lower() == "true"  # files_metadata=True
            siblings = [_sibling(p, files[p]) if blobs else {"rfilename": p} for p in sorted(files)]
            return _json({"id": m["repo"], "modelId": m["repo"], "sha": sha, "private": False, "siblings": siblings})
        if m := _CDN.match(path):
            for revisions in self.repos.values():
                for sha, files in revisions.values():
                    if sha == m["sha"] and unquote(m["file"]) in files:
                        return _file(files[unquote(m["file"])], {}, headers)
            return 404, {}, b"no such blob"
        if m := _RESOLVE.match(path):
            found = self._revision(m["repo"], m["rev"])
            if isinstance(found, str):
                return _not_found(found)
            sha, files = found
            name = unquote(m["file"])
            body = files.get(name)
            if body is None:
                return _not_found("EntryNotFound")
            out = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
            if name.endswith(_LFS_SUFFIXES):  # LFS: metadata here, the bytes from the "CDN"
                out["X-Linked-Etag"], out["X-Linked-Size"] = out.pop("ETag"), str(len(body))
                port = str(headers.get("Host", "")).rsplit(":", 1)[-1]  # another origin, as a CDN is
                out["Location"] = f"http://localhost:{port}/cdn/{sha}/{m['file']}"
                return 302, out, b""
            return _file(body, out, headers)
        return _not_found("EntryNotFound")


def _file(body: bytes, out: dict[str, str], headers: Any) -> tuple[int, dict[str, str], bytes]:
    """The bytes of a file (from ``Range``'s start, when asked)."""
    out = {**out, "Accept-Ranges": "bytes"}
    start = _range_start(headers.get("Range"))
    if start:
        out["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        return 206, out, body[start:]
    return 200, out, body


def _json(value: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(value).encode()


def _not_found(code: str) -> tuple[int, dict[str, str], bytes]:
    return 404, {"X-Error-Code": code, "Content-Type": "application/json"}, json.dumps({"error": code}).encode()


def _range_start(value: str | None) -> int:
    m = re.fullmatch(r"bytes=(\d+)-", value or "")
    return int(m[1]) if m else 0


def _handler(stub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, with_body: bool) -> None:
            url = urlsplit(self.path)
            status, headers, body = stub.answer(self.command, url.path, self.headers, url.query)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's names
            self._reply(with_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(with_body=False)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return Handler


def point_hub_at(url: str, monkeypatch: Any) -> None:
    """Point this process's ``huggingface_hub`` (and transformers through it) at ``url``, online.

    ``huggingface_hub.constants`` reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import
    (and the module-level ``HfApi`` behind ``list_repo_refs``, like transformers' shared one,
    keeps the endpoint it was built with), so setting the environment is not enough in a running
    process: the constants and those ``HfApi`` objects are patched too.
    """
    import transformers.utils.hub
    from huggingface_hub import constants, hf_api

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # rebuilt on first use, with the stub's url
