"""Write a file completely or not at all: a temporary file beside it, renamed at the end."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from parsers.errors import KvmMmuError

__all__ = ["atomic_file"]


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only when the block ends without an
    exception (permissions 0666 less the umask); otherwise nothing is left behind.

    Raises:
        KvmMmuError: the parent directory does not exist.

    Examples:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> with atomic_file(target) as fh:
        ...     _ = fh.write(b"done")
        >>> open(target, "rb").read()
        b'done'
    """
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise KvmMmuError(f"{target}: parent directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
