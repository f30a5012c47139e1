"""A rotation GSM's schedule asks for reaches a Python watcher as a "rotation_requested" event:
the real daemon, the repository's GSM fake (its schedule advanced as GSM's is) and Google's
Pub/Sub emulator carrying the SECRET_ROTATE message. In CI the emulator is required."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest

import secretd
from conftest import daemon_binary, daemon_serving, fake_gsm, free_port
from test_watch import Collector

# Named by project number, as GSM's messages name it (no project id to translate).
SECRET = "projects/123456789012/secrets/omni-trading-api-key"
PROJECT = "apex-test"
HOUR = 3600


def call(url: str, method: str, body: Optional[Dict[str, Any]] = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def emulator_script() -> Optional[str]:
    script = os.environ.get("SECRETD_PUBSUB_EMULATOR")
    if script and os.path.exists(script):
        return script
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    root = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()
    path = os.path.join(root, "platform/pubsub-emulator/bin/cloud-pubsub-emulator")
    return path if root and os.path.exists(path) and shutil.which("java") else None


@pytest.fixture
def emulator() -> Iterator[str]:
    script = emulator_script()
    if script is None:
        if os.environ.get("CI"):
            pytest.fail("Google's Pub/Sub emulator (google-cloud-cli-pubsub-emulator) and java "
                        "are required in CI ($SECRETD_PUBSUB_EMULATOR)")
        pytest.skip("no Pub/Sub emulator on this machine")
    port = free_port()
    proc = subprocess.Popen(
        [script, "--host=127.0.0.1", f"--port={port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                call(f"{endpoint}/v1/projects/{PROJECT}/topics", "GET")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Pub/Sub emulator did not start")
                time.sleep(0.1)
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_a_rotation_gsm_asks_for_reaches_a_python_watcher(tmp_path: Path, emulator: str) -> None:
    call(f"{emulator}/v1/projects/{PROJECT}/topics/gsm-rotate", "PUT", {})
    subscription = f"projects/{PROJECT}/subscriptions/host-rotate-py"
    call(f"{emulator}/v1/{subscription}", "PUT",
         {"topic": f"projects/{PROJECT}/topics/gsm-rotate", "ackDeadlineSeconds": 10})
    with fake_gsm(SECRET, "Omni-Key-v1-PYRR!") as gsm:
        call(f"{gsm}/fake/rotation", "PUT",
             {"secret": SECRET, "next_unix_s": int(time.time()) + HOUR, "period_s": HOUR})
        with daemon_serving(
            tmp_path,
            "",
            f'[gsm]\nendpoint = "{gsm}"\nanonymous = true\n\n'
            f'[gsm.notifications]\nsubscription = "{subscription}"\nendpoint = "{emulator}"\n'
            f'notification_jitter = "200ms"\nrotation_check_spread = "200ms"\n'
            f'health_check_interval = "1s"\n\n'
            f'[[secret]]\nname = "trading_api_key"\nsource = "gsm"\ngcp_secret = "{SECRET}"\n',
        ) as sock:
            watch_for_the_request(sock, gsm, emulator)


def watch_for_the_request(sock: str, gsm: str, emulator: str) -> None:
    client = secretd.Client(sock)
    assert client.get("trading_api_key").version == "1"

    # The daemon's first look at the schedule (GetSecret), and its stream up.
    def looked() -> bool:
        requests = call(f"{gsm}/fake/requests", "GET")
        return any(r["method"] == "GET" and r["path"].endswith(SECRET) for r in requests)

    def stream_up() -> bool:
        status = subprocess.run(
            [str(daemon_binary()), "status", "--socket", sock],
            capture_output=True, text=True, check=False,
        ).stdout
        return "notifications: up" in status

    wait(looked, "the first look at the rotation schedule")
    wait(stream_up, "the notification stream")
    collector = Collector(client.watch(["trading_api_key"]))
    try:
        # GSM fires the schedule: it advances, and publishes SECRET_ROTATE.
        call(f"{gsm}/fake/rotation/fire", "POST", {"secret": SECRET})
        attributes = {"eventType": "SECRET_ROTATE", "secretId": SECRET,
                      "dataFormat": "JSON_API_V1"}
        data = base64.b64encode(json.dumps({"name": SECRET}).encode()).decode()
        call(f"{emulator}/v1/projects/{PROJECT}/topics/gsm-rotate:publish", "POST",
             {"messages": [{"attributes": attributes, "data": data}]})
        event = collector.wait_for("rotation_requested", timeout=60.0)
        assert event.name == "trading_api_key"
        # Nothing served changed.
        assert client.get("trading_api_key").version == "1"
    finally:
        collector.close()
    client.close()


def wait(ready: Any, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within {limit} s"
        time.sleep(0.1)
