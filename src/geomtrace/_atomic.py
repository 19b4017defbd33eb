"""Atomic file writes, the one implementation every results file goes through.

A tmp file in the target's folder, fsync, then ``os.replace``: a reader (or a rerun after a
kill) sees the old file or the new one, never a partial one. Standard library only, so any
layer may import it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "current_umask", "file_mode", "write_error"]


def write_error(err: OSError, target: str | os.PathLike) -> OSError:
    """``err`` (raised while writing ``target`` through a tmp file) retold in the user's terms:
    the target, why, what to do; never the tmp file's name. Same exception class."""
    target = Path(target)
    if isinstance(err, IsADirectoryError) or target.is_dir():
        message = f"cannot write {target}: it is a folder; give a file path (e.g. {target / 'out'}{target.suffix})"
    elif isinstance(err, PermissionError):
        folder = next((p for p in (target.parent, *target.parent.parents) if p.exists()), target.parent)
        message = f"cannot write {target}: {folder} is not writable (change its permissions or write elsewhere)"
    elif isinstance(err, FileExistsError) or isinstance(err, NotADirectoryError):
        message = f"cannot write {target}: a file is in the way of its folder {target.parent}"
    else:
        message = f"cannot write {target}: {err.strerror or err}"
    try:
        return type(err)(message)
    except TypeError:  # pragma: no cover - an OSError subclass with another signature
        return OSError(message)


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` where it exists (no change to process state,
    safe beside other threads), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(target: Path) -> int:
    """The permission bits a new ``target`` gets: those of the file it replaces, else
    ``0o666 & ~umask`` (what ``open(target, "w")`` gives)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; parent folders are created. Returns the path."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise write_error(err, target) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # mkstemp creates 0600 files whatever the umask: give the file the mode a plain
            # open() would (collaborators on a shared cluster read the results), or keep the
            # mode of the file it replaces.
            os.fchmod(handle.fileno(), file_mode(target))
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise write_error(err, target) from err
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))
