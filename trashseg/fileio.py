"""Atomic writes: the one way trashseg writes a file.

Every writer writes a temporary name beside the destination (same filesystem, so the
rename is atomic) and renames it into place only when the write completed. A reader
therefore sees the old file or the whole new one, never a truncated one; a failed write
removes its partial and raises `OutputError` naming the path, the cause and the free space
(a full disk is the usual reason), so the first error is the one reported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from trashseg.errors import OutputError, UserError

PARTIAL_SUFFIX = ".partial"


def partial_name(dest: Path) -> str:
    """The glob of `dest`'s temporary names (what a killed write leaves behind)."""
    return f".{dest.name}.*{PARTIAL_SUFFIX}"


def free_space(folder: Path) -> str:
    """Free bytes of the filesystem holding `folder`, human-readable ("unknown" if unreadable)."""
    for candidate in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(candidate).free
            for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
                if free < 1024 or unit == "TiB":
                    return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
                free /= 1024
    return "unknown"


# What to do about each OS refusal a user can cause (a path, a permission, a full disk).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_OS_ERROR_FIXES = {
    errno.ENOSPC: "no space left on device: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EFBIG: "the file would exceed the file size limit (`ulimit -f`) or the filesystem's: raise the limit "
    "or write elsewhere",
    errno.EACCES: "permission denied: fix its permissions or choose a location this user may use",
    errno.EPERM: "operation not permitted: fix its permissions or choose another location",
    errno.EROFS: "the filesystem is read-only: choose a writable location",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose a path whose parents are folders",
    errno.EISDIR: "it is a folder where a file is expected: give a file's path",
    errno.ENAMETOOLONG: "a name in it is too long (most filesystems allow 255 bytes per name, 4096 per path): "
    "use a shorter name",
    errno.ENOENT: "it or a folder above it does not exist: check the path",
    errno.EEXIST: "it already exists: remove it or choose another path",
    errno.ENOTEMPTY: "the folder is not empty: empty it or choose another path",
    errno.ELOOP: "it is a symbolic link loop: fix or remove the link",
    errno.EIO: "input/output error: it cannot be read as a regular file (a special file, or a failing disk); "
    "give a regular file",
    errno.EINVAL: "the operating system refused the path or the operation as invalid: give a regular path",
}


def os_error_fix(error: OSError) -> str:
    """What went wrong and what to do, in words, for an OS error (its errno)."""
    return _OS_ERROR_FIXES.get(error.errno, f"{error.strerror or error}: check the path and try again")


def os_error_in_chain(error: BaseException) -> OSError | None:
    """The first OSError with an errno among `error`'s causes and contexts, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def output_error(dest: Path, error: OSError) -> OutputError:
    """The user-facing error for a failed write of `dest`."""
    if isinstance(error, OutputError):
        return error
    reason = error.strerror or str(error)
    return OutputError(
        error.errno,
        f"cannot write {dest}: {reason} ({free_space(dest.parent)} free in {dest.parent}); {os_error_fix(error)}",
    )


@contextlib.contextmanager
def temp_path(dest: str | Path) -> Iterator[Path]:
    """A fresh temporary name beside `dest` (not created), removed when the block ends;
    OS errors inside become OutputError for `dest`. The caller moves it into place."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
    except Exception as error:
        # Writers such as torch.save turn a failed write into their own error ("unexpected
        # pos"); the OSError they swallowed, with its errno (disk full), is in the chain.
        cause = None if isinstance(error, UserError) else os_error_in_chain(error)  # UserErrors say it already
        if cause is None:
            raise
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # first, so the free space reported counts it freed
        raise output_error(dest, cause) from error
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """A temporary path beside `dest`; renamed onto `dest` when the block completes,
    removed when it fails. For writers that take a path rather than a file object."""
    with temp_path(dest) as tmp:
        yield tmp
        os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_write(dest: str | Path, mode: str = "wb", *, durable: bool = False) -> Iterator[IO]:
    """An open file for `dest` (mode "wb" or "w"), written under a temporary name and
    renamed into place on success. Writers that infer a format from the file name (PIL,
    matplotlib) must be told the format. `durable` fsyncs before the rename (checkpoints)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode {mode!r}: expected 'wb' or 'w'")
    with atomic_path(dest) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())


def write_text(dest: str | Path, text: str) -> None:
    with atomic_write(dest, "w") as handle:
        handle.write(text)


def write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_write(dest) as handle:
        handle.write(data)


def save_figure(figure, dest: str | Path, **savefig_options) -> None:
    """A matplotlib figure as a PNG at `dest`, atomically."""
    with atomic_write(dest) as handle:
        figure.savefig(handle, format="png", **savefig_options)


def remove_partials(dest: Path) -> list[Path]:
    """Delete what killed writes of `dest` left behind; returns what was removed."""
    removed = sorted(dest.parent.glob(partial_name(dest))) if dest.parent.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
