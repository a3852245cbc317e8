"""Crash-safe file writes: a kill at any moment leaves the old complete file or the new one.

Every medrobust writer of a result file (checkpoints, ``robustness.json``,
``robustness_history.jsonl``, ``report.md``, benchmark reports) goes through this module. The
recipe is the POSIX one: write the whole content to a temporary file *in the same directory*,
``flush`` + ``fsync`` it, ``os.replace`` it over the destination (an atomic rename on one file
system) and ``fsync`` the directory so the rename itself survives a power cut. A SIGKILL before
the rename leaves the previous file untouched (plus a ``.<name>.tmp-*`` file, removed by the
next successful write of that file); after it, the new file is complete.

Why not Lightning's own checkpoint writer: ``TorchCheckpointIO`` (Lightning 2.6) serialises to
memory and writes through an fsspec transaction, whose local implementation puts the temporary
file in the *system* temp directory (``tempfile.mkstemp()``) and commits with ``shutil.move``.
When the run folder is on another file system than ``/tmp`` (the usual cluster layout: node-local
``/tmp``, shared scratch for runs) ``shutil.move`` falls back to copy + delete, so a kill during
the copy leaves a torn ``last.ckpt``; nothing is fsynced either. :class:`AtomicCheckpointIO`
(in :mod:`callbacks.checkpoint`) keeps Lightning's format and loading and only replaces the
write. This module itself needs only the standard library.

Appending to a JSON-lines history is made atomic the same way: the file is rewritten whole
(old lines + the new one) through a temporary file. Histories hold one line per evaluated epoch,
so the copy is cheap, and a reader never sees half a line. The readers of these files open
them through :func:`read_result_text` (one error naming the file and what it should hold).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["append_line_atomic", "atomic_write_bytes", "atomic_write_text", "read_result_text"]


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of ``path`` whose writer process is gone (it was killed mid-write).
    Files of live processes are kept: another process may be writing the same path."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid_text = stale.name[len(f".{path.name}.tmp-"):].split("-", 1)[0]
        try:
            pid = int(pid_text)
            os.kill(pid, 0)  # raises when no such process
            continue
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:  # a live process of another user
            continue
        with contextlib.suppress(OSError):
            stale.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part.

    Creates the parent directory. Returns ``path`` as a :class:`Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the usual umask-based permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    _remove_stale_temps(path)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def append_line_atomic(path: str | os.PathLike[str], line: str, encoding: str = "utf-8") -> Path:
    """Append ``line`` (a newline is added) to a JSON-lines file, atomically.

    The file is rewritten whole through :func:`atomic_write_bytes`, so a kill leaves either the
    old lines or the old lines plus the complete new one. A file that does not end in a newline
    (torn by a writer older than this one) keeps its complete lines only.
    """
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old = old[: old.rfind(b"\n") + 1]  # drop a torn last line left by a non-atomic writer
    if "\n" in line:
        raise ValueError("append_line_atomic: the line must not contain a newline")
    return atomic_write_bytes(path, old + (line + "\n").encode(encoding))


def read_result_text(path: str | os.PathLike[str], what: str, error: type[Exception] = ValueError) -> str:
    """The UTF-8 text of the result file ``path``; ``error("<path>: cannot read the <what>
    (<reason>)")`` when it cannot be read (missing, a folder, no permission)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror})") from None
