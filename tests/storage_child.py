"""What the spawned children of tests/test_storage.py run. A module of its own that imports only the
storage package: a spawned child imports the module of its target, and the test module would load
torch in each child (seconds of CPU apiece) before it opened the store."""

from __future__ import annotations

from storage import open_storage


def open_in_child(url: str, barrier) -> None:
    barrier.wait()
    open_storage(url, heartbeat_interval=5)
