"""The README's asyncio example (python/examples/asyncio_reader.py) as a whole program against
the real daemon: 20 tasks reading with cancellations, then one line per rotation."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, Daemon, daemon_binary

EXAMPLE = REPO / "python" / "examples" / "asyncio_reader.py"


def test_the_asyncio_example_reads_then_follows_a_rotation(daemon: Daemon) -> None:
    env = dict(os.environ, SECRETD_SOCKET=daemon.socket, CHANGES="1")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "trading_api_key"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("trading_api_key: version 1 from file ("), first
        assert "by 20 tasks" in first
        # Rotate the file and have the daemon pick it up: the example prints version 2.
        (daemon.root / "values" / "trading_api_key").write_bytes(b"Omni-Key-rotated-example!")
        subprocess.run(
            [str(daemon_binary()), "refresh", "trading_api_key", "--socket", daemon.socket],
            check=True,
            capture_output=True,
        )
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert out == "trading_api_key: version 2 from file\n", out
        assert "Omni-Key" not in first + out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
