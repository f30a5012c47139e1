"""A secret GSM withdrew raises secretd.Revoked (an Unavailable), through the real daemon
reading the repository's GSM fake over HTTP."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import secretd

from conftest import daemon_serving, fake_gsm

SECRET = "projects/apex-test/secrets/omni-trading-api-key"
VALUE = "Omni-Key-v1-PYRV-1111!"


def test_a_secret_gsm_withdrew_raises_revoked(tmp_path: Path) -> None:
    with fake_gsm(SECRET, VALUE) as gsm, daemon_serving(
        tmp_path,
        'refresh_interval = "1s"\nallow_short_ttl = true\n',
        f'[gsm]\nendpoint = "{gsm}"\nanonymous = true\n\n'
        f'[[secret]]\nname = "trading_api_key"\nsource = "gsm"\ngcp_secret = "{SECRET}"\n'
        f'version = "1"\n',
    ) as sock:
        client = secretd.Client(sock)
        assert client.get("trading_api_key").expose() == VALUE.encode()

        # An operator disables the version in GSM: the next refresh withdraws it.
        body = json.dumps({"secret": SECRET, "version": 1, "state": "disabled"}).encode()
        urllib.request.urlopen(
            urllib.request.Request(f"{gsm}/fake/state", data=body, method="PUT")
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
