"""Listing inputs: folders, globs, text and Parquet manifests, ids (relative POSIX, NFC, caller)."""

from __future__ import annotations

import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.batch.sources import glob_regex, list_sources


@pytest.fixture
def tree(tmp_path):
    for rel in ["a/1.jpg", "a/b/2.PNG", "a/b/c/3.jpeg", "top.webp", "notes.txt", ".hidden/x.jpg",
                "a/.secret.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def ids(sources):
    return sorted(sources.table.column("image_id").to_pylist())


def test_folder_is_recursive_relative_and_skips_hidden_and_non_images(tree):
    sources = list_sources(str(tree))
    assert sources.kind == "folder"
    assert ids(sources) == ["a/1.jpg", "a/b/2.PNG", "a/b/c/3.jpeg", "top.webp"]
    assert sources.skipped == ["notes.txt"]
    paths = dict(zip(*[sources.table.column(c).to_pylist() for c in ("image_id", "path")], strict=True))
    assert paths["a/b/2.PNG"] == f"{tree}/a/b/2.PNG"
    assert "notes.txt" in ids(list_sources(str(tree), all_files=True))


def test_ids_are_nfc(tmp_path):
    decomposed = unicodedata.normalize("NFD", "café.jpg")
    (tmp_path / decomposed).write_bytes(b"x")
    (image_id,) = list_sources(str(tmp_path)).table.column("image_id").to_pylist()
    assert image_id == unicodedata.normalize("NFC", "café.jpg") and image_id != decomposed


@pytest.mark.parametrize(("pattern", "expected"), [
    ("a/**/*.jpg", ["1.jpg"]),
    ("a/**/*.*", ["1.jpg", "b/2.PNG", "b/c/3.jpeg"]),
    ("a/b/*", ["2.PNG"]),
    ("a/*/[0-9].PNG", ["b/2.PNG"]),
    ("*.webp", ["top.webp"]),
])
def test_glob(tree, pattern, expected):
    sources = list_sources(f"{tree}/{pattern}")
    assert sources.kind == "glob" and ids(sources) == expected


def test_glob_regex_semantics():
    assert glob_regex("*.jpg").fullmatch("x.jpg") and not glob_regex("*.jpg").fullmatch("d/x.jpg")
    assert glob_regex("**/*.jpg").fullmatch("x.jpg") and glob_regex("**/*.jpg").fullmatch("d/e/x.jpg")
    assert glob_regex("[!a]?.png").fullmatch("bc.png") and not glob_regex("[!a]?.png").fullmatch("ac.png")


def test_text_manifest_with_and_without_ids(tree):
    manifest = tree / "list.txt"
    manifest.write_text(f"# photos\na/1.jpg\n./a/b/2.PNG\tcaller-id-2\n\n{tree}/top.webp\n"
                        "/elsewhere/x.jpg\ns3://bucket/k/y.jpg\ta-uri-photo\na/1.jpg\n")
    sources = list_sources(str(manifest))
    assert sources.kind == "text-manifest" and sources.duplicates == 1
    rows = dict(zip(*[sources.table.column(c).to_pylist() for c in ("image_id", "path")], strict=True))
    assert rows == {"a/1.jpg": f"{tree}/a/1.jpg", "caller-id-2": f"{tree}/a/b/2.PNG",
                    "top.webp": f"{tree}/top.webp", "/elsewhere/x.jpg": "/elsewhere/x.jpg",
                    "a-uri-photo": "s3://bucket/k/y.jpg"}


def test_parquet_manifest(tree):
    path = tree / "list.parquet"
    pq.write_table(pa.table({"uri": ["a/1.jpg", "top.webp"], "image_id": ["one", None]}), path)
    sources = list_sources(str(path))
    assert ids(sources) == ["one", "top.webp"]
    pq.write_table(pa.table({"file": ["a/1.jpg"]}), path)
    with pytest.raises(ValueError, match="'path' or 'uri' column"):
        list_sources(str(path))


def test_bad_specs_say_what_is_wrong(tree):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_sources(str(tree / "nope"))
    (tree / "bad.txt").write_text("a/1.jpg\t\n")
    with pytest.raises(ValueError, match="empty image id"):
        list_sources(str(tree / "bad.txt"))
    (tree / "nul.txt").write_text("a/1.jpg\tx\0y\n")
    with pytest.raises(ValueError, match="NUL"):
        list_sources(str(tree / "nul.txt"))
