"""The secretd Python package against a real daemon."""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import List

import pytest

import secretd
from conftest import VALUES, Daemon, FakeDaemon


def test_get_expose_version_source(daemon: Daemon) -> None:
    with secretd.Client(daemon.socket) as client:
        key = client.get("trading_api_key")
        assert isinstance(key, secretd.Secret)
        assert key.expose() == VALUES["trading_api_key"]
        assert key.name == "trading_api_key"
        assert key.version == "1"
        assert key.source == "file"
        assert key.expires_at > key.fetched_at > 0
        assert client.get_str("trading_api_passphrase") == "Pässphrase-Zyx-987#"
        assert client.get("binary_blob").expose() == bytes(range(256))
    assert client.closed


def test_default_socket_from_environment(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRETD_SOCKET", daemon.socket)
    assert secretd.Client().get("trading_api_key").expose() == VALUES["trading_api_key"]
    assert secretd.Client(Path(daemon.socket)).socket_path == daemon.socket


def test_repr_and_str_mask_the_value_and_pickling_is_refused(daemon: Daemon) -> None:
    key = secretd.Client(daemon.socket).get("trading_api_key")
    text = repr(key) + str(key) + f"{key}" + repr([key])
    assert "Omni-Key" not in text
    assert "redacted 27 bytes" in repr(key)
    assert "version='1'" in repr(key) or 'version="1"' in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    import copy

    with pytest.raises(TypeError):
        copy.copy(key)


def test_exception_classes_map_codes(daemon: Daemon) -> None:
    client = secretd.Client(daemon.socket)
    with pytest.raises(secretd.NotFound) as e1:
        client.get("trading_nope")
    assert e1.value.code == 1
    with pytest.raises(secretd.PermissionDenied) as e2:
        client.get("binary_x_denied")  # matches the deny pattern
    assert e2.value.code == 2
    with pytest.raises(secretd.Unavailable) as e3:
        client.get("trading_missing")  # its env variable is unset: never loaded
    assert e3.value.code == 3
    with pytest.raises(secretd.Error) as e4:
        client.get("not a valid name")
    assert type(e4.value) is secretd.Error
    with pytest.raises(secretd.ConnectError) as e5:
        secretd.Client("/nonexistent/secretd.sock")
    assert e5.value.code is None and "/nonexistent/secretd.sock" in str(e5.value)
    assert "secretd is not running at /nonexistent/secretd.sock (no socket)" in str(e5.value)
    assert issubclass(secretd.ProtocolError, secretd.Error)
    for cls in (secretd.NotFound, secretd.PermissionDenied, secretd.Unavailable,
                secretd.Revoked, secretd.Timeout, secretd.ProtocolError, secretd.ConnectError):
        assert issubclass(cls, secretd.Error)
    assert issubclass(secretd.Revoked, secretd.Unavailable)
    client.close()
    with pytest.raises(secretd.Error, match="closed"):
        client.get("trading_api_key")


def test_a_daemon_that_does_not_answer_in_time_raises_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "stuck.sock")
    with FakeDaemon(path, delay=7.0):
        client = secretd.Client(path)
        with pytest.raises(secretd.Timeout) as e:
            client.get("trading_api_key")
        assert isinstance(e.value, secretd.Unavailable) and e.value.code is None
        assert f"timed out after 5s waiting for secretd at {path}" in str(e.value)


def test_a_socket_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    path = str(shared / "secretd.sock")
    with FakeDaemon(path):
        with pytest.raises(secretd.UntrustedServer) as e:
            secretd.Client(path)
    assert isinstance(e.value, secretd.ConnectError) and e.value.code is None
    assert "writable by others" in str(e.value)


IMPOSTOR = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        got = c.recv(64)
    except OSError:
        got = b""
    print("got %d" % len(got), flush=True)
    c.close()
"""


def test_a_socket_served_by_its_own_owner_is_refused() -> None:
    # Any local user can serve a socket from a directory of their own; owning the socket
    # file does not make them the daemon.
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root, to run the impostor as uid 65534")
        pytest.skip("needs root to run the impostor as uid 65534")
    # pytest's own temporary directories are private to root; uid 65534 must reach this one.
    tmp_path = Path(tempfile.mkdtemp(prefix="secretd-impostor-"))
    tmp_path.chmod(0o755)
    own = tmp_path / "nobody"
    own.mkdir(mode=0o755)
    os.chown(own, 65534, 65534)
    path = str(own / "secretd.sock")
    script = tmp_path / "impostor.py"
    script.write_text(IMPOSTOR)
    impostor = subprocess.Popen(
        # The system interpreter: a venv's or pyenv's under root's home is out of its reach.
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
         str(script), path],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "ready"
        with pytest.raises(secretd.UntrustedServer) as e:
            secretd.Client(path)
        assert path in str(e.value) and "served by uid 65534" in str(e.value)
        assert impostor.stdout.readline().strip() == "got 0"
    finally:
        impostor.kill()
        impostor.wait()
        if impostor.stdout is not None:
            impostor.stdout.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_protocol_error_from_a_daemon_speaking_another_version(tmp_path: Path) -> None:
    path = str(tmp_path / "future.sock")
    with FakeDaemon(path, hello_version=99):
        with pytest.raises(secretd.ProtocolError):
            secretd.Client(path)


def test_status_and_refresh(daemon: Daemon) -> None:
    client = secretd.Client(daemon.socket)
    rows = {row["name"]: row for row in client.status()}
    assert set(rows) == set(VALUES) | {"trading_missing"}
    key = rows["trading_api_key"]
    assert key["source"] == "file" and key["cache_source"] == "file"
    assert key["state"] == "fresh" and key["version"] == "1"
    assert key["age_seconds"] is not None and key["expires_at"] > key["fetched_at"]
    assert rows["trading_missing"]["state"] == "missing"
    # Protocol 4 fields: why the last refresh failed, as a stable name.
    assert key["last_error_reason"] is None
    assert rows["trading_missing"]["last_error_reason"] == "not_found"
    assert key["version_alias"] is None and key["gcp_secret"] is None
    assert "not set" in rows["trading_missing"]["last_error"]
    assert "Omni-Key" not in repr(rows)

    (daemon.root / "values" / "trading_api_key").write_bytes(b"Omni-Key-rotated-00000!")
    outcome = client.refresh("trading_api_key")
    assert outcome == [{"name": "trading_api_key", "version": "2", "error": None}]
    assert client.get("trading_api_key").expose() == b"Omni-Key-rotated-00000!"
    assert len(client.refresh()) == len(VALUES) + 1


def test_reconnects_after_daemon_restart(daemon: Daemon) -> None:
    client = secretd.Client(daemon.socket)
    assert client.get("trading_api_key").version == "1"
    daemon.restart()
    assert client.get("trading_api_key").expose() == VALUES["trading_api_key"]


def test_gil_is_released_while_waiting_on_a_slow_daemon(tmp_path: Path) -> None:
    path = str(tmp_path / "slow.sock")
    with FakeDaemon(path, delay=1.0):
        client = secretd.Client(path)
        ticks = 0
        stop = threading.Event()

        def spin() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1

        spinner = threading.Thread(target=spin)
        spinner.start()
        try:
            started = time.monotonic()
            with pytest.raises(secretd.Unavailable):
                client.get("trading_api_key")
            assert time.monotonic() - started >= 0.9
        finally:
            stop.set()
            spinner.join()
        # With the GIL held for the whole second, the spinner would have made ~no progress.
        assert ticks > 100_000, ticks


def test_eight_threads_read_at_once(daemon: Daemon) -> None:
    client = secretd.Client(daemon.socket)
    errors: List[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(200):
                assert client.get("trading_api_key").expose() == VALUES["trading_api_key"]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_fork_child_reconnects_instead_of_sharing_the_socket(daemon: Daemon) -> None:
    client = secretd.Client(daemon.socket)
    assert client.get("trading_api_key").version == "1"
    pid = os.fork()
    if pid == 0:  # child: must not interleave frames with the parent on one socket
        code = 1
        try:
            ok = all(
                client.get("trading_api_key").expose() == VALUES["trading_api_key"]
                for _ in range(50)
            )
            code = 0 if ok else 1
        finally:
            os._exit(code)
    for _ in range(50):
        assert client.get("trading_api_key").expose() == VALUES["trading_api_key"]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_async_client_under_gather(daemon: Daemon) -> None:
    async def main() -> None:
        async with secretd.AsyncClient(daemon.socket) as client:
            secrets = await asyncio.gather(*(client.get("trading_api_key") for _ in range(32)))
            assert {s.expose() for s in secrets} == {VALUES["trading_api_key"]}
            assert await client.get_str("trading_api_passphrase") == "Pässphrase-Zyx-987#"
            assert len(await client.status()) == len(VALUES) + 1
            with pytest.raises(secretd.NotFound):
                await client.get("trading_nope")

    asyncio.run(main())
