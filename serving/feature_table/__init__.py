"""The Parquet feature table: one package owns its files (see serving/feature_table/table.py).

    from serving.feature_table import FeatureTable
    table = FeatureTable("features/")            # or "s3://bucket/features"
    table.read()                                 # rows of the current version
    table.store().lookup(["a.jpg"])              # the service's memory-mapped lookups
"""

from serving.feature_table.index import DEFAULT_MEMORY_BYTES
from serving.feature_table.lease import VersionLockedError
from serving.feature_table.schema import (
    FEATURE_COLUMNS,
    FEATURE_SCHEMA,
    PartInfo,
    check_table,
    feature_table,
    id_keys,
    index_table,
    key_hashes,
    to_numpy,
    write_file,
)
from serving.feature_table.store import FeatureRows, FeatureStore
from serving.feature_table.table import (
    CURRENT_NAME,
    DEFAULT_ROWS_PER_FILE,
    INDEX_NAME,
    MANIFEST_NAME,
    FeatureTable,
    IncompleteVersionError,
    NoCurrentVersionError,
    PartWriter,
    Version,
    check_version_name,
    remaining,
)

__all__ = [
    "CURRENT_NAME", "DEFAULT_MEMORY_BYTES", "DEFAULT_ROWS_PER_FILE", "FEATURE_COLUMNS", "FEATURE_SCHEMA",
    "INDEX_NAME", "MANIFEST_NAME", "FeatureRows", "FeatureStore", "FeatureTable", "IncompleteVersionError",
    "NoCurrentVersionError", "PartInfo", "PartWriter", "Version", "VersionLockedError", "check_table",
    "check_version_name", "feature_table", "id_keys", "index_table", "key_hashes", "remaining", "to_numpy", "write_file",
]
