"""Orders in: the orders sources (CSV, Parquet, a SQL table, the demo and CDNOW generators) and their validation.
May import: settings, runtime."""
