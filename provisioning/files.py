"""Crash-safe file writes and permission-checked reads for secrets.

`write_atomic` writes to a temporary file in the target's directory (so the final rename never
crosses a file system), fsyncs it, renames it over the target and fsyncs the directory: after a
power cut the target holds either the old bytes or the new bytes, never a torn mix. The temporary
file is created by `mkstemp` with mode 0600, so a secret is never readable by others, not even
for the instant before a `chmod`. These helpers raise `OSError`; the callers translate it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

PRIVATE_MODE: Final = 0o600
PUBLIC_MODE: Final = 0o644
_GROUP_OTHER_BITS: Final = 0o077


def write_atomic(path: Path, data: bytes, *, mode: int, exclusive: bool = False) -> None:
    """Replace `path` with `data` atomically; the file has `mode` from its first byte on.

    Args:
        path: the target file; its directory must exist.
        data: the complete new content.
        mode: permission bits of the new file (0600 for secrets).
        exclusive: refuse (`FileExistsError`) if `path` already exists, atomically: two processes
            racing to create the same file both succeed in writing but only one file wins, and
            the loser learns it (used for the master key created on first start).
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode != PRIVATE_MODE:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            # link() fails if the target exists, unlike rename(), which would overwrite it.
            os.link(tmp, path)
            tmp.unlink()
        else:
            tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InsecureFileMode(PermissionError):
    """A secret file is readable or writable by group or other.

    Args:
        path: the file.
        mode: its permission bits.
    """

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__(
            f"{path} has mode {mode:04o}; a private key must not be accessible by group or other "
            f"(expected 0600: chmod 600 {path})"
        )
        self.path = path
        self.mode = mode


def read_private(path: Path) -> bytes:
    """Read a secret file, refusing it if group or other have any permission on it.

    The mode is checked on the opened descriptor, so the file cannot be swapped between the
    check and the read; symlinks are not followed.

    Raises:
        InsecureFileMode: the file is accessible by group or other.
        OSError: the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & _GROUP_OTHER_BITS:
            raise InsecureFileMode(path, mode)
        return handle.read()
