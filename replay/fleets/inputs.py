"""A fleet's inputs: files, directories and globs, local or fsspec URLs; each one's id.

:func:`expand_inputs` turns what the user named into a sorted list of trace sources;
:func:`content_id` is the stable trace id (a hash of the bytes, so the same trace under two
names or in two runs is the same trace); :func:`local_copy` gives the readers a local path
for a URL (``s3://...`` needs the ``s3fs`` package; only local paths and ``file://`` are
tested).
"""

from __future__ import annotations

import glob as globbing
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

from parsers.errors import KvmMmuError, MissingExtraError

__all__ = ["expand_inputs", "content_id", "local_copy", "is_url", "path_id"]

#: Files a directory input skips: the sidecars and notes that sit beside recorded traces.
SIDECAR_SUFFIXES: Final = (".md", ".json", ".log", ".sh", ".py", ".html")
_CHUNK: Final = 1 << 20
_GLOB_CHARS: Final = ("*", "?", "[")


def is_url(source: str) -> bool:
    """Whether ``source`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return "://" in source


def _fs(source: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as exc:
        raise MissingExtraError("fsspec", "fleet", f"{source}: a URL input") from exc
    fs, path = fsspec.core.url_to_fs(source)
    return fs, path


def _wanted(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and not base.endswith(SIDECAR_SUFFIXES)


def _expand_url(source: str) -> list[str]:
    fs, path = _fs(source)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found = fs.glob(path) if any(c in path for c in _GLOB_CHARS) else [path]
    out: list[str] = []
    for item in found:
        names = [f for f in fs.find(item) if _wanted(f)] if fs.isdir(item) else [item]
        out += [f"{protocol}://{n}" if protocol != "file" else f"file://{n}" for n in names]
    return out


def _expand_local(source: str) -> list[str]:
    found = sorted(globbing.glob(source, recursive=True)) if any(
        c in source for c in _GLOB_CHARS) else [source]
    out: list[str] = []
    for item in found:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*")
                          if f.is_file() and _wanted(str(f.relative_to(p))))
        else:
            out.append(item)  # missing files become error rows, not a stopped fleet
    return out


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Every trace source ``inputs`` name, in order, each once: a file as given, a directory
    as every file under it (hidden files and :data:`SIDECAR_SUFFIXES` skipped), a glob as
    its matches; ``scheme://`` URLs likewise through fsspec.

    Raises:
        KvmMmuError: a glob or directory that matches nothing (naming it).
    """
    out: list[str] = []
    for given in inputs:
        source = os.fspath(given)
        found = _expand_url(source) if is_url(source) else _expand_local(source)
        if not found:
            raise KvmMmuError(f"{source}: matches no file")
        out += [f for f in found if f not in out]
    return out


def _open(source: str) -> IO[bytes]:
    if is_url(source):
        fs, path = _fs(source)
        stream: IO[bytes] = fs.open(path, "rb")
        return stream
    return open(source, "rb")  # noqa: SIM115 - the caller closes it


def content_id(source: str) -> tuple[str, int]:
    """The trace id of ``source`` (32 hex digits of BLAKE2b over its bytes) and its size.

    Raises:
        OSError: it cannot be read.
    """
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    with _open(source) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def path_id(source: str) -> str:
    """The id of an input that could not be read: ``x`` + a hash of its name, so it cannot
    be mistaken for (nor collide with) a content id."""
    return "x" + hashlib.blake2b(source.encode(), digest_size=15).hexdigest()


@contextmanager
def local_copy(source: str) -> Iterator[Path]:
    """A local path holding ``source``: itself when local, else a temporary copy removed
    afterwards."""
    if not is_url(source):
        yield Path(source)
        return
    suffix = "".join(Path(source.rsplit("/", 1)[-1]).suffixes)
    with tempfile.TemporaryDirectory(prefix="kvm-mmu-fleet.") as tmp:
        path = Path(tmp) / f"trace{suffix}"
        with _open(source) as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        yield path
