"""Dagster-free core: storage backends, the streaming pipeline, manifests, pg_dump/pg_restore wrappers."""
