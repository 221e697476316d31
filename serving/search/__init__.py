"""A text index of a feature table's photos (tantivy BM25), stored beside the table."""
