"""Output paths: checks before any work, atomic writes with the user's umask, the OUTDIR lock.

Every command that writes checks its output path first, so a bad ``-o`` costs no search
time and leaves nothing behind: a file output needs an existing, writable directory (only
``compress`` creates its OUTDIR, parents included, and says so); a directory output must
not be a file. Writes go through a temporary file beside the target and ``os.replace``,
created with the mode a plain ``open`` would give (the umask applies), and failures of the
disk (full, file-size limit, read-only) become one-line :class:`OutputError` messages.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import tempfile
from collections.abc import Iterator

from emomc_onnx.errors import DiskFullError, OutputError

__all__ = [
    "DISK_ERRNOS",
    "OutdirLock",
    "atomic_write_bytes",
    "check_output_dir",
    "check_output_file",
    "describe_os_error",
    "discard_new_outdir",
    "file_mode",
    "output_error",
    "prepare_outdir",
]

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO})
"""errno values meaning the disk (not the path) is at fault: full, over a size limit, read-only."""

LOCK_NAME = ".emomc.lock"
GITIGNORE = "# created by emomc-onnx: keeps this output out of git; delete this file to commit it\n*\n"


def file_mode() -> int:
    """The mode a new file gets from ``open()``: 0o666 minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError (``No space left on device``, ``File too large``, ...)."""
    return exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__


def output_error(path: str | os.PathLike[str], exc: OSError) -> OutputError:
    """The one-line error for a failed write of ``path``: DiskFullError when the disk is at fault."""
    cls = DiskFullError if exc.errno in DISK_ERRNOS else OutputError
    if isinstance(exc, IsADirectoryError) or (exc.errno == errno.EISDIR):
        return OutputError(f"{os.fspath(path)}: is a directory; give a file path")
    return cls(f"{os.fspath(path)}: cannot write ({describe_os_error(exc)})")


def check_output_file(path: str | os.PathLike[str], option: str = "-o") -> pathlib.Path:
    """Refuse an output file path that cannot be written, before any work is done.

    Raises:
        OutputError: empty path, an existing directory, a parent that is missing, not a
            directory or not writable.
    """
    text = os.fspath(path)
    if not text.strip():
        raise OutputError(f"{option} '': give an output file path")
    p = pathlib.Path(text)
    if p.is_dir():
        raise OutputError(f"{option} {text}: is a directory; give a file path such as {p / 'model.onnx'}")
    parent = p.parent
    if not parent.exists():
        # walk up to say which part is wrong: a missing folder or a file used as one
        for anc in parent.parents:
            if anc.exists() and not anc.is_dir():
                raise OutputError(f"{option} {text}: {anc} is a file, not a directory")
        if parent.is_file():
            raise OutputError(f"{option} {text}: {parent} is a file, not a directory")
        raise OutputError(f"{option} {text}: directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise OutputError(f"{option} {text}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {text}: directory {parent} is not writable")
    return p


def check_output_dir(path: str | os.PathLike[str], option: str = "-o") -> pathlib.Path:
    """Refuse an output directory path that is empty or an existing file (nothing is created)."""
    text = os.fspath(path)
    if not text.strip():
        raise OutputError(f"{option} '': give an output directory")
    p = pathlib.Path(text)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{option} {text}: is a file; give a directory (it is created if missing)")
    for anc in p.parents:
        if anc.exists() and not anc.is_dir():
            raise OutputError(f"{option} {text}: {anc} is a file, not a directory")
    return p


def prepare_outdir(path: str | os.PathLike[str], option: str = "-o") -> tuple[pathlib.Path, bool]:
    """Create an output directory (parents too) if missing; (path, True if it was created).

    A directory created here gets a ``.gitignore`` holding ``*`` so results stay out of
    ``git status`` (delete it to commit them).
    """
    p = check_output_dir(path, option)
    if p.is_dir():
        return p, False
    try:
        p.mkdir(parents=True, exist_ok=True)
        (p / ".gitignore").write_text(GITIGNORE)
    except OSError as exc:
        raise OutputError(f"{option} {os.fspath(path)}: cannot create the directory "
                          f"({describe_os_error(exc)})") from None
    return p, True


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, what: str | None = None) -> None:
    """Write ``data`` to ``path`` via a temporary file beside it and ``os.replace``.

    The file gets the umask's mode (not mkstemp's 0600); the temporary file never stays
    behind. Raises OutputError naming the file when the disk or the path refuses.
    """
    p = pathlib.Path(path)
    tmp: str | None = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as exc:
        raise output_error(what or p, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class OutdirLock:
    """An exclusive lock on an output directory (``OUTDIR/.emomc.lock`` holding the owner's pid).

    ``flock`` is released by the kernel when the owner dies, so a killed run never leaves
    a stale lock (only, at worst, a stale file that the next run locks again); the pid in the
    file only serves the message. A clean release removes the file.
    """

    def __init__(self, outdir: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(outdir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise OutputError naming the pid that holds it."""
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
            except OSError as exc:
                raise output_error(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise output_error(self.path, exc) from None
                raise OutputError(
                    f"{self.path.parent} is in use by another emomc-onnx run (pid {owner}); wait for it "
                    "to finish or give another -o") from None
            try:  # the holder before us may have removed the file after we opened it: lock anew
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - ten holders in a row released under us
            raise OutputError(f"{self.path}: cannot take the lock (it keeps changing)")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the lock holds without the pid (disk full): only the message loses it
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file, then release the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def discard_new_outdir(path: pathlib.Path) -> None:
    """Undo :func:`prepare_outdir` after a run that failed before producing anything: remove
    the files a starting run writes, then the directory if that left it empty."""
    for name in (".gitignore", LOCK_NAME, "results.sqlite", "results.sqlite-wal", "results.sqlite-shm",
                 "results.sqlite-journal"):
        with contextlib.suppress(OSError):
            (path / name).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


@contextlib.contextmanager
def locked(outdir: str | os.PathLike[str]) -> Iterator[OutdirLock]:
    """``with locked(outdir):`` hold the OUTDIR lock for the block."""
    lock = OutdirLock(outdir)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
