"""Listing the photos of a batch job: what to read, and the image_id each one gets.

An input spec is one of
    a folder (recursive)           photos/            s3://bucket/photos/
    a glob                         photos/**/*.jpg    s3://bucket/photos/2024-*/*.png
    a text manifest (.txt/.lst)    one path or URI per line, optionally `path<TAB>image_id`
    a Parquet manifest (.parquet)  a `path` (or `uri`) column, optionally an `image_id` column
    a single image file
Local paths and object-storage URIs both go through pyarrow.fs; S3 settings ride on the URI
(`s3://bucket/x?endpoint_override=127.0.0.1:9000&scheme=http`) or come from AWS_* variables.

image_id (DESIGN.md): the POSIX path relative to the input root (the folder, the glob's fixed
prefix, or the manifest's own directory), in Unicode NFC, unless the caller supplies ids. Manifest
entries that are absolute paths outside that directory, or URIs, keep the entry as written.
Folder and glob listings skip hidden files and directories and, unless `all_files`, files whose
extension is not an image's. An id listed twice is read once (the first entry wins).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serving.feature_table import id_keys
from serving.feature_table.files import join, read_bytes, resolve

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm", ".jfif"})
TEXT_MANIFEST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
SOURCE_SCHEMA = pa.schema([pa.field("image_id", pa.string(), nullable=False),
                           pa.field("path", pa.string(), nullable=False)])
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class Sources:
    """The photos to read: `table` (image_id, path), and the filesystem plain paths live on.

    A `path` holding "://" is a URI resolved through its own filesystem (manifests may mix).
    """

    table: pa.Table
    filesystem: pafs.FileSystem
    root: str
    kind: str
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)  # listed files that are not images

    def __len__(self) -> int:
        return self.table.num_rows


def list_sources(spec: str, filesystem: pafs.FileSystem | None = None, all_files: bool = False) -> Sources:
    """List the photos an input spec names (see the module docstring)."""
    spec = os.fspath(spec)
    if _GLOB_CHARS.search(_path_part(spec)):
        return _from_glob(spec, filesystem, all_files)
    fs, path = resolve(spec, filesystem)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        return _from_folder(fs, path, all_files)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {spec!r} does not exist")
    extension = posixpath.splitext(path)[1].lower()
    if extension == ".parquet":
        return _from_parquet_manifest(fs, path)
    if extension in TEXT_MANIFEST_EXTENSIONS:
        return _from_text_manifest(fs, path)
    parent, name = posixpath.split(path)
    return _finish(pa.table({"image_id": [name], "path": [path]}), fs, parent, "file")


def _path_part(spec: str) -> str:
    """The part of a spec that names files (a URI's query string may hold '?')."""
    if "://" in spec:
        spec = spec.split("://", 1)[1].split("?", 1)[0]
    return spec


# ---------------------------------------------------------------- folder and glob

def _walk(fs: pafs.FileSystem, root: str, recursive: bool = True) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive))
    prefix = root.rstrip("/") + "/"
    return sorted(i.path[len(prefix):] for i in infos if i.type == pafs.FileType.File)


def _visible(relative: str) -> bool:
    return not any(part.startswith(".") for part in relative.split("/"))


def _is_image(relative: str) -> bool:
    return posixpath.splitext(relative)[1].lower() in IMAGE_EXTENSIONS


def _from_folder(fs: pafs.FileSystem, root: str, all_files: bool) -> Sources:
    relative = [r for r in _walk(fs, root) if _visible(r)]
    return _from_relative(fs, root, relative, all_files, "folder")


def _from_relative(fs, root, relative, all_files, kind) -> Sources:
    skipped = [] if all_files else [r for r in relative if not _is_image(r)]
    if not all_files:
        relative = [r for r in relative if _is_image(r)]
    table = pa.table({"image_id": pa.array(relative, pa.string()),
                      "path": pa.array([join(root, r) for r in relative], pa.string())})
    sources = _finish(table, fs, root, kind)
    sources.skipped = skipped
    return sources


def _from_glob(spec: str, filesystem: pafs.FileSystem | None, all_files: bool) -> Sources:
    query = ""
    if "://" in spec:
        base, _, query = spec.partition("?")
        scheme, rest = base.split("://", 1)
        parts = rest.split("/")
        fixed = _take_fixed(parts)
        pattern = "/".join(parts[len(fixed):])
        root_spec = f"{scheme}://{'/'.join(fixed)}" + (f"?{query}" if query else "")
    else:
        parts = spec.split("/")
        fixed = _take_fixed(parts)
        pattern = "/".join(parts[len(fixed):])
        root_spec = "/".join(fixed) or ("/" if spec.startswith("/") else ".")
    fs, root = resolve(root_spec, filesystem)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"glob {spec!r}: {root_spec!r} is not a directory")
    regex = glob_regex(pattern)
    recursive = "/" in pattern or "**" in pattern
    relative = [r for r in _walk(fs, root, recursive) if regex.fullmatch(r)
                and (_visible(r) or pattern.startswith("."))]
    return _from_relative(fs, root, relative, all_files, "glob")


def _take_fixed(parts: list[str]) -> list[str]:
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return fixed


def glob_regex(pattern: str) -> re.Pattern:
    """Shell-style glob over POSIX relative paths: * and ? stay within a name, ** spans names."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))


# ---------------------------------------------------------------- manifests

def _from_text_manifest(fs: pafs.FileSystem, path: str) -> Sources:
    text = read_bytes(fs, path).decode("utf-8-sig")
    paths, ids = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry, tab, image_id = line.partition("\t")
        if tab and not image_id.strip():
            raise ValueError(f"{path}:{number}: empty image id after the tab")
        paths.append(entry.strip())
        ids.append(image_id.strip() if tab else None)
    return _from_entries(fs, path, paths, ids, "text-manifest")


def _from_parquet_manifest(fs: pafs.FileSystem, path: str) -> Sources:
    table = pq.read_table(path, filesystem=fs)
    column = next((c for c in ("path", "uri") if c in table.column_names), None)
    if column is None:
        raise ValueError(f"{path}: a Parquet manifest needs a 'path' or 'uri' column, has {table.column_names}")
    paths = table.column(column).cast(pa.string())
    if paths.null_count:
        raise ValueError(f"{path}: {paths.null_count} null entries in column {column!r}")
    ids = table.column("image_id").cast(pa.string()).to_pylist() if "image_id" in table.column_names else None
    return _from_entries(fs, path, paths.to_pylist(), ids, "parquet-manifest")


def _from_entries(fs, manifest_path, paths, ids, kind) -> Sources:
    base = posixpath.dirname(manifest_path)
    resolved, default_ids = [], []
    for entry in paths:
        if not entry:
            raise ValueError(f"{manifest_path}: empty path entry")
        if "://" in entry:
            resolved.append(entry)
            default_ids.append(entry)
            continue
        entry = entry.replace(os.sep, "/") if os.sep != "/" else entry
        full = posixpath.normpath(entry if entry.startswith("/") else posixpath.join(base, entry))
        resolved.append(full)
        inside = full.startswith(base.rstrip("/") + "/")
        default_ids.append(full[len(base.rstrip("/")) + 1:] if inside else entry)
    if ids is None:
        ids = default_ids
    else:
        ids = [given if given is not None else default for given, default in zip(ids, default_ids, strict=True)]
    table = pa.table({"image_id": pa.array(ids, pa.string()), "path": pa.array(resolved, pa.string())})
    return _finish(table, fs, base, kind)


# ---------------------------------------------------------------- ids

def _finish(table: pa.Table, fs: pafs.FileSystem, root: str, kind: str) -> Sources:
    ids = pc.utf8_normalize(table.column("image_id"), "NFC").combine_chunks()
    table = pa.table({"image_id": ids, "path": table.column("path").combine_chunks()}, schema=SOURCE_SCHEMA)
    duplicates = 0
    if table.num_rows:
        keys = id_keys(ids)  # raises on empty ids or NUL characters
        _, first = np.unique(keys, return_index=True)
        duplicates = table.num_rows - len(first)
        if duplicates:
            table = table.take(pa.array(np.sort(first)))
    return Sources(table, fs, root, kind, duplicates)


def open_for_path(path: str, default: pafs.FileSystem, cache: dict) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path to read one source row from (URIs get their own, cached)."""
    if "://" not in path:
        return default, path
    base, _, query = path.partition("?")
    scheme, rest = base.split("://", 1)
    key = (scheme, rest.split("/", 1)[0], query)
    if key not in cache:
        cache[key] = pafs.FileSystem.from_uri(path)[0]
    return cache[key], rest
