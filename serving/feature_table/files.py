"""Filesystems, paths and whole-file writes for the feature table (local or object storage)."""

from __future__ import annotations

import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

TMP_MARK = ".tmp-"


def resolve(root: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path without scheme) for a local path or a URI such as s3://bucket/prefix.

    S3 options can ride on the URI (`?endpoint_override=127.0.0.1:9000&scheme=http`), or come
    from the usual AWS_* environment variables.
    """
    root = os.fspath(root)
    if filesystem is not None:
        return filesystem, root.rstrip("/") or "/"
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(root)


def is_local(fs: pafs.FileSystem) -> bool:
    while isinstance(fs, pafs.SubTreeFileSystem):
        fs = fs.base_fs
    return isinstance(fs, pafs.LocalFileSystem)


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def local_path(fs: pafs.FileSystem, path: str) -> str:
    """The operating system's path of `path` on a local (possibly sub-tree) filesystem."""
    prefix = ""
    while isinstance(fs, pafs.SubTreeFileSystem):
        prefix = join(fs.base_path, prefix) if prefix else fs.base_path
        fs = fs.base_fs
    return join(prefix, path.lstrip("/")) if prefix else path


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Make `path` hold `data` whole, or leave it as it was (never a half file under that name)."""
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    if not is_local(fs):  # one PUT: the object appears whole when the upload completes
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    final = local_path(fs, path)
    tmp = temporary_name(final)
    try:
        with open(tmp, "wb") as out:
            out.write(memoryview(data))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)  # rename(2): atomic on POSIX
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def temporary_name(final: str) -> str:
    return os.path.join(os.path.dirname(final), f"{TMP_MARK}{uuid.uuid4().hex}-{os.path.basename(final)}")


def move(fs: pafs.FileSystem, source: str, destination: str) -> None:
    """Rename a file (atomic on a local disk; copy then delete on object storage)."""
    parent = destination.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    fs.move(source, destination)


def list_files(fs: pafs.FileSystem, directory: str, prefix: str = "", suffix: str = "") -> list[str]:
    """Names of the plain files directly in `directory` (none when it does not exist)."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                  and i.base_name.startswith(prefix) and i.base_name.endswith(suffix))


def list_dirs(fs: pafs.FileSystem, directory: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
