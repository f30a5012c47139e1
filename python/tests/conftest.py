"""Fixtures: the real secretd daemon binary on a temporary socket."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]

VALUES: Dict[str, bytes] = {
    "trading_api_key": b"Omni-Key-1234567890-abcdef!",
    "trading_api_passphrase": "Pässphrase-Zyx-987#".encode(),
    "binary_blob": bytes(range(256)),
}


def daemon_binary() -> Path:
    """The daemon under test: $SECRETD_BIN (scripts/test sets it), else the debug build."""
    path = Path(os.environ.get("SECRETD_BIN", REPO / "target" / "debug" / "secretd"))
    if not path.exists():
        pytest.fail(f"daemon binary {path} not found; run `cargo build -p secretd` or set SECRETD_BIN")
    return path


class Daemon:
    """A running daemon; restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = str(root / "run" / "secretd.sock")
        values = root / "values"
        values.mkdir()
        secrets: List[str] = []
        for name, value in VALUES.items():
            (values / name).write_bytes(value)
            (values / name).chmod(0o600)
            secrets.append(
                f'[[secret]]\nname = "{name}"\nsource = "file"\npath = "{values / name}"\n'
            )
        secrets.append(
            '[[secret]]\nname = "trading_missing"\nsource = "env"\n'
            'env = "SECRETD_PYTEST_SURELY_UNSET"\n'
        )
        uid = os.geteuid()
        self.config = root / "secretd.toml"
        self.config.write_text(
            f'[daemon]\nsocket = "{self.socket}"\ndb = "{root / "secretd.redb"}"\n'
            f"admin_uids = [{uid}]\n\n"
            + "\n".join(secrets)
            + f'\n[[policy]]\nuids = [{uid}]\nallow = ["*"]\ndeny = ["binary_*_denied"]\n'
            + '[[policy]]\nuids = [65534]\nallow = ["nothing"]\n'
        )
        self.log = root / "daemon.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(daemon_binary()), "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("daemon did not start:\n" + self.log.read_text())
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


# A minimal daemon written from docs/protocol.md alone: answers the hello, then every request
# with an Unavailable error after `delay` seconds.
class FakeDaemon:
    def __init__(self, path: str, delay: float = 0.0, hello_version: int = 1) -> None:
        self.path, self.delay, self.hello_version = path, delay, hello_version
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        self.server.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def __enter__(self) -> "FakeDaemon":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    @staticmethod
    def read_frame(conn: socket.socket) -> bytes:
        header = conn.recv(4, socket.MSG_WAITALL)
        if len(header) < 4:
            raise ConnectionError
        (length,) = struct.unpack("<I", header)
        return conn.recv(length, socket.MSG_WAITALL)

    @staticmethod
    def send(conn: socket.socket, body: bytes) -> None:
        conn.sendall(struct.pack("<I", len(body)) + body)

    @staticmethod
    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    self.read_frame(conn)  # the client's hello
                    # Response::Hello (tag 0): protocol_version u16, daemon_version String.
                    self.send(conn, struct.pack("<IH", 0, self.hello_version) + self.string("fake"))
                    while True:
                        self.read_frame(conn)
                        time.sleep(self.delay)
                        # Response::Error (tag 3): code u16 = 3 (Unavailable), message String.
                        self.send(conn, struct.pack("<IH", 3, 3) + self.string("slow fake"))
                except (ConnectionError, OSError):
                    continue


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: "subprocess.Popen[bytes]", what: str, limit: float) -> None:
    """Waits until `proc` accepts connections on `port`."""
    deadline = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.02)


@contextmanager
def fake_gsm(secret: str, value: str) -> Iterator[str]:
    """The repository's GSM fake (`secretd-fake-gsm`, beside the daemon binary) serving
    version 1 of `secret`; yields its endpoint (control API under /fake/)."""
    binary = daemon_binary().parent / "secretd-fake-gsm"
    if not binary.exists():
        pytest.fail(f"{binary} not found; run `cargo build -p secretd-gsm-fake`")
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--listen", f"127.0.0.1:{port}", "--secret", f"{secret}={value}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc, "the GSM fake", 20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def daemon_serving(root: Path, daemon_extra: str, body: str) -> Iterator[str]:
    """A daemon with `daemon_extra` lines in `[daemon]` and `body` (tables) after it, every
    secret readable by this uid; yields its socket path."""
    sock = str(root / "run" / "secretd.sock")
    uid = os.geteuid()
    config = root / "secretd.toml"
    config.write_text(
        f'[daemon]\nsocket = "{sock}"\ndb = "{root / "secretd.redb"}"\n'
        f"admin_uids = [{uid}]\n{daemon_extra}\n{body}\n"
        f'[[policy]]\nuids = [{uid}]\nallow = ["*"]\n'
    )
    log_path = root / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(daemon_binary()), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start:\n" + log_path.read_text())
            time.sleep(0.02)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=15)
