"""A secret GSM withdrew raises secretd.Revoked (an Unavailable), through the real daemon
reading the repository's GSM fake over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import secretd

from conftest import daemon_binary

SECRET = "projects/apex-test/secrets/omni-trading-api-key"
VALUE = "Omni-Key-v1-PYRV-1111!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_gsm() -> Iterator[str]:
    binary = daemon_binary().parent / "secretd-fake-gsm"
    if not binary.exists():
        pytest.fail(f"{binary} not found; run `cargo build -p secretd-gsm-fake`")
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--listen", f"127.0.0.1:{port}", "--secret", f"{SECRET}={VALUE}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the GSM fake did not start")
            time.sleep(0.02)
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_secret_gsm_withdrew_raises_revoked(tmp_path: Path, fake_gsm: str) -> None:
    sock = str(tmp_path / "run" / "secretd.sock")
    uid = os.geteuid()
    config = tmp_path / "secretd.toml"
    config.write_text(
        f'[daemon]\nsocket = "{sock}"\ndb = "{tmp_path / "secretd.redb"}"\n'
        f'admin_uids = [{uid}]\nrefresh_interval = "1s"\nallow_short_ttl = true\n\n'
        f'[gsm]\nendpoint = "{fake_gsm}"\nanonymous = true\n\n'
        f'[[secret]]\nname = "trading_api_key"\nsource = "gsm"\ngcp_secret = "{SECRET}"\n'
        f'version = "1"\n\n'
        f'[[policy]]\nuids = [{uid}]\nallow = ["*"]\n'
    )
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen(
        [str(daemon_binary()), "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            assert daemon.poll() is None and time.monotonic() < deadline, (
                tmp_path / "daemon.log"
            ).read_text()
            time.sleep(0.02)
        client = secretd.Client(sock)
        assert client.get("trading_api_key").expose() == VALUE.encode()

        # An operator disables the version in GSM: the next refresh withdraws it.
        body = json.dumps({"secret": SECRET, "version": 1, "state": "disabled"}).encode()
        urllib.request.urlopen(
            urllib.request.Request(f"{fake_gsm}/fake/state", data=body, method="PUT")
        ).close()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get("trading_api_key")
            except secretd.Revoked as e:
                assert isinstance(e, secretd.Unavailable)
                assert e.code == 9
                assert "revoked" in str(e) and VALUE not in str(e)
                break
            assert time.monotonic() < deadline, "not revoked within 30 s"
            time.sleep(0.1)
        client.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
        log.close()
