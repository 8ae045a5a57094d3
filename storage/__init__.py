"""Turn a storage URL into a configured Optuna storage (see `storage.sql`)."""

from storage.sql import StorageError, open_storage, redact, resolve_url

__all__ = ["StorageError", "open_storage", "redact", "resolve_url"]
