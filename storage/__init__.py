"""Turn a storage URL into a configured Optuna storage (see `storage.sql`)."""

from storage.sql import StorageError, StorageUsageError, install_process_hooks, open_storage, redact, resolve_url

__all__ = ["StorageError", "StorageUsageError", "install_process_hooks", "open_storage", "redact", "resolve_url"]
