"""Dagster-free domain code: settings, database, schema, import formats, chunking, embedders, store."""
