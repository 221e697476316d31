"""The batch job: photos (folder, glob, manifest, object storage) -> the feature table, on Ray Data."""
