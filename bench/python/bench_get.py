"""python-get and python-async-get: time a get through the real extension module.

Usage: bench_get.py SOCKET NAME N WARMUP [MODE]; prints one latency in nanoseconds per line.
MODE is "sync" (Client.get, the default), "async" (AsyncClient.get, native) or "executor"
(Client.get through loop.run_in_executor: how AsyncClient worked before, for comparison).
"""

import asyncio
import sys
from time import perf_counter_ns
from typing import List

import secretd


def sync(socket: str, name: str, n: int, warmup: int) -> List[int]:
    client = secretd.Client(socket)
    get = client.get
    for _ in range(warmup):
        get(name)
    samples = [0] * n
    for i in range(n):
        t = perf_counter_ns()
        get(name)
        samples[i] = perf_counter_ns() - t
    return samples


async def native(socket: str, name: str, n: int, warmup: int) -> List[int]:
    client = secretd.AsyncClient(socket)
    get = client.get
    for _ in range(warmup):
        await get(name)
    samples = [0] * n
    for i in range(n):
        t = perf_counter_ns()
        await get(name)
        samples[i] = perf_counter_ns() - t
    return samples


async def executor(socket: str, name: str, n: int, warmup: int) -> List[int]:
    client = secretd.Client(socket)
    loop = asyncio.get_running_loop()
    get = client.get
    for _ in range(warmup):
        await loop.run_in_executor(None, get, name)
    samples = [0] * n
    for i in range(n):
        t = perf_counter_ns()
        await loop.run_in_executor(None, get, name)
        samples[i] = perf_counter_ns() - t
    return samples


def main() -> None:
    socket, name, n, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "sync"
    if mode == "sync":
        samples = sync(socket, name, n, warmup)
    elif mode == "async":
        samples = asyncio.run(native(socket, name, n, warmup))
    elif mode == "executor":
        samples = asyncio.run(executor(socket, name, n, warmup))
    else:
        sys.exit(f"unknown mode {mode!r}: sync, async or executor")
    sys.stdout.write("\n".join(map(str, samples)) + "\n")


if __name__ == "__main__":
    main()
