"""Secrets from Secrets Manager (moto): cached, refreshed, rotated, never logged."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from clients.aws import AwsClients, AwsSettings
from clients.secrets import SecretCache, SecretUnavailable
from durable.page_tokens import PageTokens
from interceptors.errors import InvalidArgument
from tests.support.moto import Moto
from tests.support.net import PYTHON, ROOT, free_port, service_env

FIRST_KEY = "first-key-9f8e7d6c5b4a"
SECOND_KEY = "second-key-1a2b3c4d5e6f"


@pytest.fixture
async def secretsmanager(shared_moto: Moto) -> AsyncIterator[Any]:
    clients = AwsClients(AwsSettings(endpoint_url=shared_moto.url))
    yield await clients.client("secretsmanager")
    await clients.close()


async def test_rotation_keeps_tokens_valid_and_values_out_of_logs(
    secretsmanager: Any, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"ledger/{uuid.uuid4().hex[:8]}"
    await secretsmanager.create_secret(Name=name, SecretString=FIRST_KEY)
    cache = SecretCache(secretsmanager, name, refresh_seconds=3600)
    await cache.start()
    tokens = PageTokens(cache.values, "test/List")
    before = tokens.encode({"account_id": {"S": "a"}})
    await secretsmanager.put_secret_value(SecretId=name, SecretString=SECOND_KEY)
    await cache.refresh()
    assert cache.values() == [SECOND_KEY.encode(), FIRST_KEY.encode()]
    assert tokens.decode(before) == {"account_id": {"S": "a"}}  # signed before the rotation
    old_key = PageTokens(lambda: [FIRST_KEY.encode()], "test/List")
    assert tokens.encode({"k": 1}) != old_key.encode({"k": 1})
    with pytest.raises(InvalidArgument):
        PageTokens(lambda: [b"someone else's key"], "test/List").decode(before)
    with pytest.raises(InvalidArgument):  # same key, another listing
        PageTokens(cache.values, "test/OtherList").decode(before)

    caplog.set_level(logging.DEBUG)
    await secretsmanager.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    cache.refresh_seconds = 0.01  # the background refresh now fails, again and again
    await cache.close()
    await cache.start_refreshing()
    for _ in range(200):
        if "secret refresh failed" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "secret refresh failed" in caplog.text
    assert name in caplog.text
    assert cache.values()[0] == SECOND_KEY.encode()  # a failed refresh keeps what it had
    await cache.close()
    assert FIRST_KEY not in caplog.text
    assert SECOND_KEY not in caplog.text
    assert SECOND_KEY not in repr(cache)


async def test_a_missing_secret_is_a_start_up_error_naming_it(secretsmanager: Any) -> None:
    cache = SecretCache(secretsmanager, "ledger/absent")
    with pytest.raises(SecretUnavailable, match="'ledger/absent'"):
        await cache.start()


def test_a_service_without_its_key_does_not_start(shared_moto: Moto) -> None:
    env = service_env(
        "accounts",
        free_port(),
        free_port(),
        **{**shared_moto.ledger_env(), "AWS_BOOTSTRAP": "false"},
    )
    result = subprocess.run(
        [PYTHON, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("startup error: cannot open the ledger's AWS resources")
    assert "page-token-hmac-key" in last
