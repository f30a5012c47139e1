"""python-get: times Client.get through the real extension module.

Usage: bench_get.py SOCKET NAME N WARMUP; prints one latency in nanoseconds per line.
"""

import sys
from time import perf_counter_ns

import secretd


def main() -> None:
    socket, name, n, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    client = secretd.Client(socket)
    get = client.get
    for _ in range(warmup):
        get(name)
    samples = [0] * n
    for i in range(n):
        t = perf_counter_ns()
        get(name)
        samples[i] = perf_counter_ns() - t
    sys.stdout.write("\n".join(map(str, samples)) + "\n")


if __name__ == "__main__":
    main()
