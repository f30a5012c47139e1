"""Watch and the client-side cache from Python, against a real daemon."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import List

import pytest

import secretd
from conftest import VALUES, Daemon

ROTATED = b"Omni-Key-rotated-by-python!"


def change(daemon: Daemon, admin: secretd.Client, value: bytes) -> None:
    (daemon.root / "values" / "trading_api_key").write_bytes(value)
    assert admin.refresh("trading_api_key")[0]["error"] is None


class Collector:
    """Iterates a watch on a thread, keeping every event."""

    def __init__(self, watch: secretd.Watch) -> None:
        self.watch = watch
        self.events: List[secretd.ChangeEvent] = []
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        for event in self.watch:
            self.events.append(event)

    def wait_for(self, kind: str, version: str = "", timeout: float = 10.0) -> secretd.ChangeEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.kind == kind and (not version or e.version == version):
                    return e
            time.sleep(0.005)
        raise AssertionError(f"no {kind} {version} event; got {self.events}")

    def close(self) -> None:
        self.watch.close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "close() did not end the iteration"


def test_watch_reports_changes_and_resumes_after_a_restart(daemon: Daemon) -> None:
    admin = secretd.Client(daemon.socket)
    watch = admin.watch(["trading_api_key"])
    assert watch.names == ["trading_api_key"]
    collector = Collector(watch)
    try:
        change(daemon, admin, ROTATED)
        event = collector.wait_for("changed", "2")
        assert event.name == "trading_api_key"
        assert event.source == "file"
        assert event.fingerprint and len(event.fingerprint) == 64
        assert event.at is not None and abs(event.at - time.time()) < 60
        assert "Omni" not in repr(event)

        daemon.restart()
        collector.wait_for("lagged")
        change(daemon, admin, b"Omni-Key-after-restart-3!")
        # The restarted daemon counts file versions from 1 again: 1 on load, 2 on change.
        assert collector.wait_for("changed", "2").name == "trading_api_key"
    finally:
        collector.close()


def test_watch_refusals_raise_at_once(daemon: Daemon) -> None:
    client = secretd.Client(daemon.socket)
    with pytest.raises(secretd.NotFound):
        client.watch(["trading_nope"])
    with pytest.raises(secretd.Error):
        client.watch(["bad name"])
    everything = client.watch()
    assert sorted(everything.names) == sorted([*VALUES, "trading_missing"])
    everything.close()
    assert list(everything) == []


def test_cached_client_serves_locally_and_follows_changes(daemon: Daemon) -> None:
    admin = secretd.Client(daemon.socket)
    cached = secretd.Client(daemon.socket, cache=True)
    assert cached.cached
    assert cached.get("trading_api_key").expose() == VALUES["trading_api_key"]
    started = time.perf_counter()
    for _ in range(10_000):
        cached.get("trading_api_key")
    per_get = (time.perf_counter() - started) / 10_000
    print(f"cached get from Python: {per_get * 1e6:.2f} us")

    change(daemon, admin, ROTATED)
    deadline = time.monotonic() + 5
    while cached.get("trading_api_key").expose() != ROTATED:
        assert time.monotonic() < deadline, "the cache kept the old value"
        time.sleep(0.001)

    # A forked child gets its own connection and cache, never the parent's.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if cached.get("trading_api_key").expose() == ROTATED else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cached.get("trading_api_key").expose() == ROTATED


def test_async_watch(daemon: Daemon) -> None:
    admin = secretd.Client(daemon.socket)

    async def main() -> None:
        async with secretd.AsyncClient(daemon.socket, cache=True) as client:
            async with await client.watch(["trading_api_key"]) as watch:
                assert watch.names == ["trading_api_key"]
                loop = asyncio.get_running_loop()
                loop.call_later(0.1, change, daemon, admin, ROTATED)
                async for event in watch:
                    assert event.kind == "changed"
                    assert event.version == "2"
                    break
            secret = await client.get("trading_api_key")
            assert secret.expose() == ROTATED

    asyncio.run(main())
