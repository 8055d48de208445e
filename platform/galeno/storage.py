"""Paths that are local files or object-store URIs (``s3://bucket/key``, ``gs://...``), through pyarrow's
filesystems.

The corpus job reads its inputs and writes its output through these functions, so both may live on an
object store that every node of a cluster sees. A local path behaves as before (a write goes to a
temporary name, then is renamed into place); on an object store a write is one ``PUT``, which a reader
sees whole or not at all, and a "folder" is a key prefix.

Credentials and endpoint come from the environment, as for any AWS client: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` and, for an S3-compatible server (MinIO, Ceph),
``AWS_ENDPOINT_URL``; or in the URI's query (``s3://bucket/key?endpoint_override=host:9000&scheme=http``).
"""

from __future__ import annotations

import functools
import os
import posixpath
from typing import Any, Iterator
from urllib.parse import urlsplit


def is_uri(path: str | os.PathLike) -> bool:
    """An object-store (or any non-local) URI; ``file://`` and plain paths are local."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def _split(uri: str) -> tuple[str, str, str]:
    """(filesystem key, path inside it, query) of ``uri``."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}", f"{parts.netloc}{parts.path}".rstrip("/"), parts.query


@functools.lru_cache(maxsize=16)
def _filesystem(key: str, query: str):
    from pyarrow import fs

    return fs.FileSystem.from_uri(key + ("?" + query if query else ""))[0]


def resolve(path: str | os.PathLike) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it); one filesystem object per bucket and process."""
    from pyarrow import fs

    text = str(path)
    if not is_uri(text):
        return fs.LocalFileSystem(), os.path.abspath(text.removeprefix("file://"))
    key, inner, query = _split(text)
    return _filesystem(key, query), inner


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...``: a URI stays a URI (its query, if any, kept at the end)."""
    text = str(base)
    if not is_uri(text):
        return os.path.join(text, *parts)
    head, _, query = text.partition("?")
    joined = posixpath.join(head.rstrip("/"), *parts)
    return joined + ("?" + query if query else "")


def name(path: str | os.PathLike) -> str:
    return posixpath.basename(str(path).partition("?")[0].rstrip("/"))


def _uri(path: str, inner: str) -> str:
    """The URI of ``inner``, a path inside ``path``'s filesystem."""
    if not is_uri(path):
        return inner
    scheme = urlsplit(path).scheme
    query = str(path).partition("?")[2]
    return f"{scheme}://{inner}" + ("?" + query if query else "")


def exists(path: str | os.PathLike) -> bool:
    from pyarrow import fs

    filesystem, inner = resolve(path)
    return filesystem.get_file_info(inner).type != fs.FileType.NotFound


def is_file(path: str | os.PathLike) -> bool:
    from pyarrow import fs

    filesystem, inner = resolve(path)
    return filesystem.get_file_info(inner).type == fs.FileType.File


def list_files(path: str | os.PathLike) -> list[tuple[str, int, float]]:
    """(path or URI, size, mtime in seconds) of every file under the folder (prefix) ``path``, or of
    ``path`` itself when it is a file; sorted; empty when nothing is there."""
    from pyarrow import fs

    filesystem, inner = resolve(path)
    info = filesystem.get_file_info(inner)
    if info.type == fs.FileType.File:
        infos = [info]
    elif info.type == fs.FileType.Directory or is_uri(path):  # an object store may have no folder marker
        infos = [i for i in filesystem.get_file_info(fs.FileSelector(inner, recursive=True, allow_not_found=True))
                 if i.type == fs.FileType.File]
    else:
        infos = []
    out = [(_uri(str(path), i.path), int(i.size), i.mtime.timestamp() if i.mtime else 0.0) for i in infos]
    return sorted(out)


def read_bytes(path: str | os.PathLike) -> bytes:
    filesystem, inner = resolve(path)
    with filesystem.open_input_stream(inner) as f:
        return f.read()


def download(path: str | os.PathLike, local: str) -> None:
    """Copy one file (or object) to the local path ``local``."""
    from pyarrow import fs

    filesystem, inner = resolve(path)
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    fs.copy_files(inner, os.path.abspath(local), source_filesystem=filesystem,
                  destination_filesystem=fs.LocalFileSystem())


def upload(local: str, path: str | os.PathLike) -> None:
    """Copy the local file ``local`` to ``path`` (on an object store, one whole-object write)."""
    from pyarrow import fs

    filesystem, inner = resolve(path)
    fs.copy_files(os.path.abspath(local), inner, source_filesystem=fs.LocalFileSystem(),
                  destination_filesystem=filesystem)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete the folder (prefix) ``path`` and everything under it; nothing if it is not there."""
    import shutil

    if not is_uri(path):
        shutil.rmtree(str(path), ignore_errors=True)
        return
    filesystem, _ = resolve(path)
    for uri, _, _ in list_files(path):
        filesystem.delete_file(resolve(uri)[1])


def replace_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the folder ``source`` to ``target``, replacing what ``target`` held. Locally a rename; on an
    object store each object is copied then deleted (an object store has no rename), after ``target``'s
    old objects are gone: a reader during the move may see part of the new folder, never a mix."""
    if not is_uri(source) and not is_uri(target):
        import shutil

        shutil.rmtree(str(target), ignore_errors=True)
        os.replace(str(source), str(target))
        return
    if not (is_uri(source) and is_uri(target)):
        raise ValueError(f"cannot move {source} to {target}: one is local, the other an object store")
    filesystem, src = resolve(source)
    _, dst = resolve(target)
    remove_tree(target)
    for uri, _, _ in list_files(source):
        inner = resolve(uri)[1]
        filesystem.move(inner, dst + inner[len(src):])


def iter_chunks(path: str | os.PathLike, size: int = 1 << 20) -> Iterator[bytes]:
    filesystem, inner = resolve(path)
    with filesystem.open_input_stream(inner) as f:
        while chunk := f.read(size):
            yield chunk
