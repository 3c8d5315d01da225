"""The results layer: run files -> tidy CSVs (store, schema, tabulate)."""
