"""The text index of a photo collection: tantivy (Rust BM25, in-process, no server).

One document per photo of a feature-table version: its text is the words of its id's folder and
file names (`holiday/Beach_Sunset-2.jpg` -> holiday beach sunset 2); an ImageNet-style name
`n02084071_dog.JPEG` gives its class (dog) and keeps the WordNet id as a keyword; and, when the
content model's classes have names, the name of the photo's most likely content class. Words are
stemmed (English), so "dogs" finds "dog".

Stored with the feature-table version it indexes: `<root>/model_version=<v>/_search/` (engines
reading the table skip `_` names), with `ids.json` (row -> image id) and `pam-search.json` (what was indexed).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SEARCH_DIR = "_search"
IDS_NAME = "ids.json"
META_NAME = "pam-search.json"  # tantivy keeps its own meta.json
WRITER_HEAP = 64 * 1024 * 1024
_WNID = re.compile(r"^(n\d{8})_(.+)$")
_SPLIT = re.compile(r"[^0-9A-Za-z]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic"}


def index_dir(feature_root: str | Path, model_version: str) -> Path:
    """The index of a feature-table version: a side folder of that version (deleted with it)."""
    from serving.feature_table import FeatureTable

    try:
        return Path(FeatureTable(str(feature_root)).version(model_version).sidecar_path(SEARCH_DIR))
    except ValueError:
        raise ValueError(f"the search index is a local folder; {feature_root} is not local: pass --out DIR") from None


def words(text: str) -> list[str]:
    return [w for part in _SPLIT.split(text) for w in _CAMEL.split(part) if w]


def describe(image_id: str) -> tuple[str, list[str]]:
    """(text, keywords) of a photo from its id: folder and file names; an ImageNet class name."""
    parts = image_id.replace("\\", "/").split("/")
    stem = parts[-1]
    suffix = Path(stem).suffix
    if suffix.lower() in IMAGE_SUFFIXES:
        stem = stem[: -len(suffix)]
    keywords = []
    match = _WNID.match(stem)
    if match:
        keywords.append(match.group(1))
        stem = match.group(2)
    return " ".join(words(" ".join([*parts[:-1], stem]))), keywords


@dataclass(frozen=True, slots=True)
class Hit:
    image_id: str
    score: float  # BM25


class PhotoIndex:
    """A tantivy index of photos: `build` writes one, `open` reads one, `search` queries it."""

    def __init__(self, path: Path, index, ids: list[str], meta: dict):
        self.path = path
        self._index = index
        self.ids = ids
        self.meta = meta
        self._searcher = index.searcher()

    # ------------------------------------------------------------ writing
    @staticmethod
    def build(path: str | Path, rows: Iterable[tuple[str, str, Sequence[str]]], meta: dict | None = None,
              progress=None) -> PhotoIndex:
        """Write a fresh index at `path` from (image_id, text, keywords) rows (replaces one there)."""
        import tantivy

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp-build")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("text", tokenizer_name="en_stem")  # positions: "phrase" queries
        builder.add_text_field("keyword", tokenizer_name="raw", index_option="basic")
        builder.add_unsigned_field("row", stored=False, fast=True, indexed=False)
        index = tantivy.Index(builder.build(), path=str(tmp), reuse=False)
        writer = index.writer(heap_size=WRITER_HEAP, num_threads=1)
        ids: list[str] = []
        started = time.perf_counter()
        for image_id, text, keywords in rows:
            doc = tantivy.Document()
            doc.add_text("text", text)
            doc.add_unsigned("row", len(ids))
            for k in keywords:
                doc.add_text("keyword", k)
            writer.add_document(doc)
            ids.append(image_id)
            if progress is not None and len(ids) % 10_000 == 0:
                progress(len(ids))
        writer.commit()
        writer.wait_merging_threads()
        meta = {**(meta or {}), "documents": len(ids), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.perf_counter() - started, 3), "engine": tantivy.__version__}
        (tmp / IDS_NAME).write_text(json.dumps(ids))
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
        old = path.with_name(path.name + ".tmp-old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return PhotoIndex.open(path)

    @staticmethod
    def open(path: str | Path) -> PhotoIndex:
        import tantivy

        path = Path(path)
        if not (path / META_NAME).is_file():
            raise FileNotFoundError(f"no search index at {path} (build one with `pam index`)")
        index = tantivy.Index.open(str(path))
        return PhotoIndex(path, index, json.loads((path / IDS_NAME).read_text()),
                          json.loads((path / META_NAME).read_text()))

    # ------------------------------------------------------------ reading
    def search(self, query: str, limit: int = 200) -> list[Hit]:
        """The `limit` best photos for `query` by BM25, best first. Plain words match any of
        them (OR); the engine's syntax works too (`+dog -cat`, `"golden retriever"`,
        `keyword:n02084071`); what it cannot parse is dropped, never an error."""
        if not query.strip():
            return []
        try:
            hits = self._run(query, limit)
        except ValueError:  # syntax the engine parses but cannot run (`text:*`): the words alone
            try:
                hits = self._run(" ".join(words(query)), limit)
            except ValueError:
                return []
        if not hits:
            return []
        rows = self._searcher.fast_field_values("row", [address for _, address in hits])
        ids = self.ids
        return [Hit(ids[row], score) for (score, _), row in zip(hits, rows, strict=True)]

    def _run(self, query: str, limit: int) -> list:
        parsed, _errors = self._index.parse_query_lenient(query, ["text", "keyword"])
        return self._searcher.search(parsed, limit, count=False).hits

    def __len__(self) -> int:
        return len(self.ids)


def rows_from_feature_table(feature_root: str, model_version: str | None = None,
                            content_names: Sequence[str] | None = None) -> tuple[str, list[tuple[str, str, list[str]]]]:
    """(model_version, index rows) of a feature-table version: every photo that has features."""
    import numpy as np
    import pyarrow.compute as pc

    from serving.feature_table import FeatureTable

    features = FeatureTable(feature_root)
    model_version = model_version or features.current_name
    columns = ["image_id", "error"] + (["content"] if content_names else [])
    table = features.read(model_version, columns=columns)
    table = table.filter(pc.is_null(table.column("error")))
    ids = table.column("image_id").to_pylist()
    labels: list[str | None] = [None] * len(ids)
    if content_names:
        column = table.column("content").combine_chunks()
        content = np.asarray(column.flatten().to_numpy(zero_copy_only=False)).reshape(len(ids), -1)
        if content.shape[1] != len(content_names):
            raise ValueError(f"{len(content_names)} content names for {content.shape[1]} content classes")
        labels = [content_names[k] for k in content.argmax(1)]
    rows = []
    for image_id, label in zip(ids, labels, strict=True):
        text, keywords = describe(image_id)
        rows.append((image_id, f"{text} {label}" if label else text, keywords))
    return model_version, rows


def build_for_feature_table(feature_root: str, model_version: str | None = None, out: str | Path | None = None,
                            content_names: Sequence[str] | None = None, progress=None) -> PhotoIndex:
    model_version, rows = rows_from_feature_table(feature_root, model_version, content_names)
    path = Path(out) if out else index_dir(feature_root, model_version)
    meta = {"model_version": model_version, "feature_root": str(feature_root),
            "content_names": list(content_names) if content_names else None,
            "text": "folder and file names; ImageNet class names" + ("; content class names" if content_names else "")}
    return PhotoIndex.build(path, rows, meta, progress)


def open_for_feature_table(feature_root: str, model_version: str | None = None) -> PhotoIndex:
    if model_version is None:
        from serving.feature_table import FeatureTable

        model_version = FeatureTable(feature_root).current_name
    return PhotoIndex.open(index_dir(feature_root, model_version))
