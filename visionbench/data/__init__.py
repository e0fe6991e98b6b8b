"""Data layer: RecordIO writing/reading shared with data_prep, loaders, demo data."""
