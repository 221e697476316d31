"""A feature table is read as-is by the engines its users have: pyarrow.dataset, pandas, DuckDB,
polars; and only serving/feature_table/ touches its files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from serving import feature_table as ft
from tests.batch.test_feature_table import make_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def table_root(tmp_path, rng):
    """Two complete versions, a third run interrupted (staged parts only), rows scored online."""
    table = ft.FeatureTable(tmp_path / "features")
    expected = {}
    for version, n in (("v1", 50), ("v2", 70)):
        ids, features, errors = make_rows(n, rng, prefix=version, failed={3})
        rows = ft.feature_table(ids, features, version, errors)
        table.write_version(rows, crop_policy="test", rows_per_file=16)
        expected[version] = rows
    ids, features, errors = make_rows(20, rng, prefix="v3")
    table.version("v3").write_part(ft.feature_table(ids, features, "v3", errors))  # never finalized
    more, features, _ = make_rows(4, rng, prefix="online")
    table.store("v1").add_online(more, features)
    return table, expected


def by_id(rows: pa.Table) -> dict:
    if "model_version" not in rows.column_names:  # one version's folder: the path names it
        rows = rows.append_column("model_version", pa.array(["?"] * rows.num_rows, pa.string()))
    rows = rows.select(list(ft.FEATURE_COLUMNS))
    columns = ft.to_numpy(rows.set_column(5, "model_version", rows.column(5).cast(pa.string())).cast(ft.FEATURE_SCHEMA))
    order = np.argsort(columns["image_id"])
    return {name: (np.asarray(value, dtype=object)[order] if isinstance(value, list) else value[order])
            for name, value in columns.items()}


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    got, want = by_id(got), by_id(want)
    assert got["image_id"].tolist() == want["image_id"].tolist()
    assert got["error"].tolist() == want["error"].tolist()
    for name in ("aes_score", "aes_feat", "attributes", "content"):
        np.testing.assert_array_equal(got[name], want[name])


def test_pyarrow_dataset_and_pandas_read_the_root_as_one_dataset(table_root):
    table, expected = table_root
    dataset = pads.dataset(table.root, format="parquet", partitioning="hive")
    assert "model_version" in dataset.schema.names
    rows = dataset.to_table()
    assert sorted(set(rows.column("model_version").to_pylist())) == ["v1", "v2"]  # nothing staged, no online rows
    for version, want in expected.items():
        mine = table.read(version)
        assert_same_rows(mine, want)
        got = dataset.to_table(filter=pads.field("model_version") == version)
        assert_same_rows(got, mine)
        one = pads.dataset(table.version(version).path, format="parquet").to_table()  # one version's folder
        assert "model_version" not in one.column_names  # stored once, in the path (hive style)
        assert_same_rows(one, mine)

    import pandas as pd

    frame = pd.read_parquet(table.root)
    assert len(frame) == 120 and sorted(frame["model_version"].astype(str).unique()) == ["v1", "v2"]


def test_duckdb_reads_the_root_and_one_version(table_root):
    duckdb = pytest.importorskip("duckdb")
    table, expected = table_root
    connection = duckdb.connect()
    everything = connection.sql(
        f"SELECT * FROM read_parquet('{table.root}/*/*.parquet', hive_partitioning = true)").to_arrow_table()
    assert sorted(set(everything.column("model_version").to_pylist())) == ["v1", "v2"]
    for version in expected:
        got = connection.sql(
            f"SELECT * FROM read_parquet('{table.root}/*/*.parquet', hive_partitioning = true) "
            f"WHERE model_version = '{version}'").to_arrow_table()
        assert_same_rows(pa.table(got), table.read(version))
        one = connection.sql(f"SELECT * FROM '{table.version(version).path}/*.parquet'").to_arrow_table()
        assert_same_rows(pa.table(one), table.read(version))


def test_polars_reads_the_root_and_one_version(table_root):
    pl = pytest.importorskip("polars")
    table, expected = table_root
    everything = pl.scan_parquet(f"{table.root}/*/*.parquet", hive_partitioning=True).collect()
    assert sorted(everything["model_version"].unique().to_list()) == ["v1", "v2"]
    for version in expected:
        got = everything.filter(pl.col("model_version") == version).to_arrow()
        assert_same_rows(got, table.read(version))
        one = pl.read_parquet(f"{table.version(version).path}/*.parquet").to_arrow()
        assert_same_rows(one, table.read(version))


# ---------------------------------------------------------------- only the package touches the files

PARQUET_WRITES = re.compile(r"pq\.write_table\(|\.write_parquet\(|ParquetWriter\(|write_to_dataset\(|write_dataset\("
                            r"|\.to_parquet\(")
INTERNALS = re.compile(r"from serving\.feature_table\.(table|index|lease|schema) import|feature_table\._\w")
# the benchmark's "obvious single process", which the project is measured against, writes its own file
ALLOWED = {("pam/bench/features.py", "pq.write_table(pa.concat_tables(tables), out)")}


def _sources():
    for package in ("serving", "pam"):
        for path in (ROOT / package).rglob("*.py"):
            if (ROOT / "serving" / "feature_table") not in path.parents:
                yield path


def test_only_the_feature_table_package_writes_parquet_or_reaches_inside_it():
    offenders = []
    for path in _sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if (PARQUET_WRITES.search(line) or INTERNALS.search(line)) and \
                    (str(path.relative_to(ROOT)), line.strip()) not in ALLOWED:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_no_function_outside_the_package_takes_a_version_and_a_filesystem():
    """The (root, model_version, filesystem) triple lives in FeatureTable and Version only."""
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = {a.arg for a in [*node.args.args, *node.args.kwonlyargs]}
                if names & {"model_version", "version"} and names & {"fs", "filesystem", "out_fs"}:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}{sorted(names)}")
    assert not offenders, "\n".join(offenders)
