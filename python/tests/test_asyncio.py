"""The native asyncio client against the real daemon: many tasks cancelled at random points
that only ever see their own answers, no executor threads, a daemon restart under a live
client, os.fork(), and the deprecated executor= argument."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Tuple

import pytest

import secretd

from conftest import VALUES, Daemon, FakeDaemon

KEY = "trading_api_key"
PASS = "trading_api_passphrase"


def test_many_tasks_cancelled_at_random_only_ever_see_their_own_answers(daemon: Daemon) -> None:
    async def worker(client: secretd.AsyncClient, seed: int) -> Tuple[int, int]:
        rng = random.Random(seed)
        answered = cancelled = 0
        for i in range(150):
            name = KEY if (i + seed) % 2 == 0 else PASS
            if i % 3 == 0:  # awaited to the end
                assert (await client.get(name)).expose() == VALUES[name], f"task {seed} call {i}"
                answered += 1
                continue
            if i % 3 == 1:  # a real timeout, often shorter than the round trip
                try:
                    secret = await asyncio.wait_for(client.get(name), rng.uniform(0, 0.002))
                    assert secret.expose() == VALUES[name], f"task {seed} call {i}"
                    answered += 1
                except asyncio.TimeoutError:
                    cancelled += 1
                continue
            # Given up after a random number of event-loop turns: from "before the request
            # left" to "answered".
            task = asyncio.ensure_future(client.get(name))
            for _ in range(rng.randrange(0, 6)):
                await asyncio.sleep(0)
            if task.done():
                assert task.result().expose() == VALUES[name], f"task {seed} call {i}"
                answered += 1
            else:
                task.cancel()
                try:
                    secret = await task
                    assert secret.expose() == VALUES[name]
                    answered += 1
                except asyncio.CancelledError:
                    cancelled += 1
        return answered, cancelled

    async def main() -> None:
        loop = asyncio.get_running_loop()
        threads_before = threading.active_count()
        async with secretd.AsyncClient(daemon.socket) as client:
            results = await asyncio.gather(*(worker(client, seed) for seed in range(16)))
            answered = sum(a for a, _ in results)
            cancelled = sum(c for _, c in results)
            assert answered > 100 and cancelled > 100, (answered, cancelled)
            # Every pooled connection is still in step afterwards.
            for _ in range(50):
                assert (await client.get(KEY)).expose() == VALUES[KEY]
                assert (await client.get(PASS)).expose() == VALUES[PASS]
            # Hundreds of cancellations, and no reconnect paid for any of them: the pool
            # never grew past its 8 connections.
            reads = client._reads
            assert reads is not None
            assert reads.opened <= 8, reads.opened
        # No executor: the loop never made its default one, and no pool threads appeared
        # (the client's runtime is two tokio workers plus its blocking-pool helpers, none of
        # them Python threads).
        assert getattr(loop, "_default_executor", None) is None
        names = [t.name for t in threading.enumerate()]
        assert not any("ThreadPoolExecutor" in n or n.startswith("asyncio_") for n in names), names
        assert threading.active_count() == threads_before

    asyncio.run(main())


def test_a_live_async_client_survives_a_daemon_restart(daemon: Daemon) -> None:
    async def main() -> None:
        client = secretd.AsyncClient(daemon.socket)
        assert (await client.get(KEY)).version == "1"
        daemon.restart()
        assert (await client.get(KEY)).expose() == VALUES[KEY]
        await client.close()
        assert client.closed
        with pytest.raises(secretd.Error):
            await client.get(KEY)

    asyncio.run(main())


def test_errors_are_the_same_exceptions_as_the_blocking_client(daemon: Daemon) -> None:
    async def main() -> None:
        async with secretd.AsyncClient(daemon.socket) as client:
            with pytest.raises(secretd.NotFound) as nf:
                await client.get("trading_nope")
            assert nf.value.code is not None
            with pytest.raises(secretd.Unavailable):
                await client.get("trading_missing")
            with pytest.raises(secretd.Error):
                await client.get("bad name!")
            rows = await client.refresh(KEY)
            assert rows[0]["name"] == KEY and rows[0]["error"] is None

    asyncio.run(main())
    with pytest.raises(secretd.ConnectError):
        secretd.AsyncClient(daemon.socket + ".absent")


def test_an_async_client_works_in_a_forked_child(daemon: Daemon) -> None:
    inherited = secretd.AsyncClient(daemon.socket)

    async def reads(client: secretd.AsyncClient) -> bool:
        secrets = await asyncio.gather(*(client.get(KEY) for _ in range(20)))
        return all(s.expose() == VALUES[KEY] for s in secrets)

    assert asyncio.run(reads(inherited))
    pid = os.fork()
    if pid == 0:  # child: the parent's tokio runtime has no threads here
        code = 1
        try:
            fresh = secretd.AsyncClient(daemon.socket)
            ok = asyncio.run(reads(fresh)) and asyncio.run(reads(inherited))
            code = 0 if ok else 1
        finally:
            os._exit(code)
    assert asyncio.run(reads(inherited))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_executor_is_accepted_with_a_deprecation_warning(daemon: Daemon) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.warns(DeprecationWarning, match="executor"):
            client = secretd.AsyncClient(daemon.socket, executor=pool)

        async def main() -> None:
            assert (await client.get(KEY)).expose() == VALUES[KEY]
            await client.close()

        asyncio.run(main())


def test_async_watch_close_ends_a_pending_iteration(daemon: Daemon) -> None:
    async def main() -> None:
        async with secretd.AsyncClient(daemon.socket) as client:
            watch = await client.watch([KEY])
            assert watch.names == [KEY]

            async def drain() -> int:
                return len([e async for e in watch])

            pending = asyncio.ensure_future(drain())
            await asyncio.sleep(0.1)
            await watch.aclose()
            assert await asyncio.wait_for(pending, timeout=20) == 0

    asyncio.run(main())


def test_reads_are_driven_by_the_event_loop_and_a_silent_daemon_times_out(tmp_path: Path) -> None:
    """The loop keeps running while a read waits (nothing blocks it), and a daemon that never
    answers gets secretd.Timeout after the client's 5 s, as the blocking client does."""
    path = str(tmp_path / "stuck.sock")

    async def main() -> None:
        client = secretd.AsyncClient(path)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        started = time.monotonic()
        with pytest.raises(secretd.Timeout) as e:
            await client.get(KEY)
        waited = time.monotonic() - started
        ticker.cancel()
        assert 5.0 <= waited < 10.0, waited
        assert f"timed out after 5s waiting for secretd at {path}" in str(e.value)
        # The loop ran all along: about 100 ticks a second.
        assert ticks > 100, ticks
        await client.close()

    with FakeDaemon(path, delay=30.0):
        asyncio.run(main())


def test_a_client_used_from_a_second_event_loop_starts_afresh(daemon: Daemon) -> None:
    client = secretd.AsyncClient(daemon.socket)

    async def read() -> bytes:
        return (await client.get(KEY)).expose()

    assert asyncio.run(read()) == VALUES[KEY]
    # The first loop is closed; its connections are dropped and new ones registered here.
    assert asyncio.run(read()) == VALUES[KEY]
    reads = client._reads
    assert reads is not None
    assert reads.opened == 2, reads.opened



def test_a_cached_async_client_answers_a_hit_without_the_daemon(daemon: Daemon) -> None:
    """A hit is served from the cache with no round trip: it answers even while the daemon is
    frozen (SIGSTOP), where an uncached read would wait out its timeout."""

    async def main() -> None:
        async with secretd.AsyncClient(daemon.socket, cache=True) as client:
            assert (await client.get(KEY)).expose() == VALUES[KEY]
            assert daemon.proc is not None
            os.kill(daemon.proc.pid, signal.SIGSTOP)
            try:
                hit = await asyncio.wait_for(client.get(KEY), 1.0)
                assert hit.expose() == VALUES[KEY]
            finally:
                os.kill(daemon.proc.pid, signal.SIGCONT)

    asyncio.run(main())


def test_one_client_serves_two_event_loops_in_two_threads_at_once(daemon: Daemon) -> None:
    """Each loop gets connections of its own: neither drops the other's calls."""
    client = secretd.AsyncClient(daemon.socket)
    errors: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            for _ in range(300):
                assert (await client.get(KEY)).expose() == VALUES[KEY]

        try:
            asyncio.run(main())
        except BaseException as e:  # reported below, with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a loop's reads never finished"
    assert not errors, errors
