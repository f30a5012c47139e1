"""An asyncio program that reads a key from many tasks, then follows its rotations: the
README's asyncio example, run end to end by python/tests/test_examples.py.

    python asyncio_reader.py trading_api_key      # the socket: $SECRETD_SOCKET or the default

Prints one line per value it holds (never the value) and stops after $CHANGES changes
(default 1).
"""

from __future__ import annotations

import asyncio
import os
import sys

import secretd


async def reader(client: secretd.AsyncClient, name: str, reads: int) -> int:
    """Reads `name` `reads` times, giving up on every third read after a millisecond (a
    cancelled read never disturbs the next one)."""
    done = 0
    for i in range(reads):
        if i % 3 == 0:
            try:
                await asyncio.wait_for(client.get(name), 0.001)
            except asyncio.TimeoutError:
                continue
        else:
            await client.get(name)
        done += 1
    return done


async def main(name: str, changes: int) -> None:
    async with secretd.AsyncClient() as client:
        # Subscribe first, then read: a rotation between the two is an event, not a gap.
        watch = await client.watch([name])
        counts = await asyncio.gather(*(reader(client, name, 100) for _ in range(20)))
        key = await client.get(name)
        print(f"{name}: version {key.version} from {key.source} ({sum(counts)} reads by 20 tasks)")
        sys.stdout.flush()
        seen = 0
        async for event in watch:
            if event.kind == "changed":
                key = await client.get(name)  # events never carry values
                print(f"{name}: version {key.version} from {key.source}")
                seen += 1
            elif event.kind == "lagged":  # changes may have been missed: re-read
                key = await client.get(name)
                print(f"{name}: version {key.version} (after a gap)")
            elif event.kind == "rotation_requested":
                print(f"{name}: a rotation is due")
            sys.stdout.flush()
            if seen >= changes:
                break
        await watch.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "trading_api_key",
                     int(os.environ.get("CHANGES", "1"))))
