"""Crash-safe file input/output of training runs and results: atomic writes, locks, validated tables.

Everything a run or a results store writes goes through :func:`atomic_write`: the bytes are written
to a temporary file with a unique name in the destination's folder, flushed to disk (``fsync``), and
renamed over the destination (``os.replace``, atomic on POSIX and Windows), after which the folder
itself is flushed. A process killed at any instant therefore leaves either the old file or the new
one, never a mixture, plus at worst a stray temporary file (``<name>.tmp-*``) that
:func:`remove_stale_temporaries` deletes the next time the folder is locked.

:func:`lock` takes an exclusive advisory lock (``fcntl.flock``; released by the operating system
when its process dies, so a killed run never leaves a folder locked) on a lock file; a second writer
either waits for it or fails at once with a message that names the folder and the holder's pid.

:func:`validate_table` checks a table of per-step metrics before it is trusted: the columns, one row
per step ``0 ... n-1`` in order, and finite values; the error names the file and says what to do.

:data:`_hook` is a test hook: when set, it is called with a short name after every file operation
(``tests/test_crash_safety.py`` sets it to kill the process at each one in turn).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "atomic_write",
    "lock",
    "LockedError",
    "remove_stale_temporaries",
    "read_csv",
    "validate_table",
    "disk_use",
    "format_bytes",
    "env_folder",
    "writable_folder",
]

#: Called as ``_hook(name)`` after each file operation when not ``None`` (fault-injection tests).
_hook: Callable[[str], None] | None = None
_HELD: dict[
    str, tuple[int, int]
] = {}  # lock path -> (file descriptor, depth): re-entrant within a process
_TMP = ".tmp-"


def _op(name: str) -> None:
    if _hook is not None:
        _hook(name)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # folders cannot be opened for fsync on Windows; rename is durable there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's file-creation mask, read without changing it where the system allows
    (``/proc/self/status``, Linux 4.7+), else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(
    path: str | os.PathLike, write: Callable[[object], None], *, binary: bool = True
) -> Path:
    """Write ``path`` atomically: ``write(file)`` fills a uniquely named temporary file beside it, which is
    flushed to disk and renamed over ``path``; then the folder is flushed. Returns ``path``.

    The file gets the permissions of a file created with ``open()``: ``0o666`` less the umask (the
    temporary file is created ``0o600``, private while it is written, and opened up before the rename).

    A temporary file that ``write`` leaves behind by raising is removed; one left by a killed process
    is removed by :func:`remove_stale_temporaries`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + _TMP, dir=path.parent)
    _op("create")
    try:
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})
        ) as f:
            write(f)
            _op("write")
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~umask()) if hasattr(os, "fchmod") else None
            os.fsync(f.fileno())
            _op("fsync")
        os.replace(tmp, path)
        _op("replace")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    _op("fsync-dir")
    return path


def remove_stale_temporaries(folder: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """Delete ``<name>.tmp-*`` files in ``folder`` for each of ``names`` (left by a killed writer); return them.

    Call it only while holding the folder's :func:`lock`, so that no live writer owns them.
    """
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for name in names:
            for tmp in folder.glob(name + _TMP + "*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


class LockedError(RuntimeError):
    """Another process holds the lock (raised by :func:`lock` with ``wait=False`` or after ``timeout``)."""


@contextlib.contextmanager
def lock(
    lock_file: str | os.PathLike,
    *,
    what: str,
    wait: bool = False,
    timeout: float | None = None,
    poll: float = 0.2,
) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_file`` (created; its folder too) for the ``with`` block.

    Re-entrant within one process. ``what`` names the thing protected in messages (e.g. ``"run folder
    'runs/x'"``). ``wait=False``: fail at once if another process holds it; ``wait=True``: wait for it
    (at most ``timeout`` seconds, ``None`` = as long as it takes).

    Raises:
        LockedError: held by another process (the message gives its pid and what to do).
    """
    path = Path(lock_file)
    key = str(path.resolve()) if path.parent.exists() else str(path.absolute())
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield path
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, what=what, wait=wait, timeout=timeout, poll=poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _op("lock")
        _HELD[key] = (fd, 1)
        try:
            yield path
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock


def _acquire(
    fd: int, path: Path, *, what: str, wait: bool, timeout: float | None, poll: float
) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; single writer assumed
        return
    began = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = time.monotonic() - began
            if not wait or (timeout is not None and waited >= timeout):
                holder = _holder(path)
                raise LockedError(
                    f"{what} is in use by another process{holder} (lock file {str(path)!r}); wait for it to finish, "
                    f"or stop it, or use another folder"
                    + (f" (waited {waited:.0f} s)" if wait else "")
                ) from None
            time.sleep(poll)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def read_csv(path: str | os.PathLike, *, fix: str):
    """``pandas.read_csv(path)`` (floats read back exactly) of a file written whole:
    a file that does not end with a line break was cut
    short (a crash, a full disk, a partial copy) and is rejected, as is one that pandas cannot parse.

    Raises:
        ValueError: the file, what is wrong, and ``fix``.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                raise ValueError(f"{str(path)!r} ends in the middle of a line (cut short); {fix}")
    try:
        # Floats written with 17 digits must read back bit for bit: pandas < 3 parses with a faster, not always
        # exact, converter unless asked for round_trip (the version matrix caught it); pandas 3 is exact by
        # default and deprecates the argument.
        exact = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
        return pd.read_csv(path, **exact)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"{str(path)!r} cannot be read as a table ({type(err).__name__}: {err}); {fix}"
        ) from None


def validate_table(
    frame,
    *,
    columns: Sequence[str],
    steps: int | None,
    path: str | os.PathLike,
    fix: str,
    finite: Sequence[str] | None = None,
) -> None:
    """Check a per-step table before trusting it.

    ``columns`` must all be present; the ``step`` column must be ``0, 1, ..., n-1`` with ``n == steps``
    (``steps=None``: any number of rows); every column of ``finite`` (default: the numeric ones of
    ``columns``) must hold finite numbers. ``path`` and ``fix`` go into the message.

    Raises:
        ValueError: what is wrong, the file, and ``fix``.
    """
    where = f"{str(path)!r}"
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where} lacks the columns {missing} (has {list(frame.columns)}); {fix}")
    n = len(frame)
    if steps is not None and n != steps:
        raise ValueError(f"{where} holds {n} rows, expected {steps} (one per step); {fix}")
    if "step" in frame.columns:
        step = np.asarray(frame["step"], dtype=float)
        expected = np.arange(n, dtype=float)
        if not np.array_equal(step, expected):
            bad = int(np.flatnonzero(~(step == expected))[0])
            value = frame["step"].iloc[bad]
            value = (
                value.item() if hasattr(value, "item") else value
            )  # a Python number in the message
            shown = f"{value:g}" if isinstance(value, float) else repr(value)
            raise ValueError(
                f"{where}: row {bad} has step {shown}, expected {bad} "
                f"(steps must run 0, 1, ..., {n - 1}); {fix}"
            )
    check = [c for c in (columns if finite is None else finite) if c in frame.columns]
    for c in check:
        try:
            values = np.asarray(frame[c], dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: column {c!r} is not numeric; {fix}") from None
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            row = int(bad[0])
            step = row  # the step sequence is checked above: row i is step i
            raise ValueError(
                f"{where}: {c} = {values[row]} at step {step} ({bad.size} non-finite values in "
                f"{c!r}); {fix}"
            )


def disk_use(folder: str | os.PathLike) -> int:
    """Bytes used by the files under ``folder`` (0 if it does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def format_bytes(n: int) -> str:
    """``n`` bytes in kB/MB/GB (powers of 1000), e.g. ``'1.5 MB'``."""
    if n < 1000:
        return f"{n} B"
    unit = min(int(math.log(n, 1000)), 4)
    return f"{n / 1000**unit:.1f} {' kMGT'[unit]}B"


def env_folder(variable: str, value: str) -> Path:
    """The folder named by the environment variable ``variable`` (its ``value``); a path that exists and is
    not a folder raises ``NotADirectoryError`` naming the variable."""
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"{variable}={value!r} is not a folder (it is a file); point "
            f"{variable} at a folder, or unset it",
        )
    return folder


def writable_folder(folder: Path, variable: str) -> Path:
    """Create ``folder`` (and its parents) if needed and check that files can be written there; an error
    names the folder and, when it is set, the environment variable that chose it."""
    env = os.environ.get(variable, "").strip()
    hint = (
        f" (set by {variable}={env!r}: point it at a writable folder)"
        if env
        else f" (set {variable} to a writable folder)"
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(
            err.errno, f"cannot create the folder {str(folder)!r} ({err.strerror or err}){hint}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"the folder {str(folder)!r} is not writable{hint}")
    return folder
