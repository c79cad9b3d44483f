"""Fixtures: real S3 endpoints over HTTP on loopback (moto's server; SeaweedFS), a fresh bucket per test."""

from __future__ import annotations as _annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aioboto3
import pydantic_core
import pytest
from types_aiobotocore_s3 import S3Client

from pydantic_graph_s3 import ClientSettings, RetryPolicy, S3StatePersistence

from .support.endpoints import S3Endpoint
from .support.fixtures import anyio_backend, moto_endpoint, new_session, seaweedfs_endpoint
from .support.network import package_index_unreachable


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip, with the reason shown, the tests that download from a package index nobody can reach."""
    downloading = [item for item in items if 'packaging' in item.keywords]
    if downloading and (reason := package_index_unreachable()) is not None:
        for item in downloading:
            item.add_marker(pytest.mark.skip(reason=f'{reason}: the packaging tests download wheels from it'))


@pytest.fixture(params=['moto', 'seaweedfs'])
def endpoint_name(request: pytest.FixtureRequest) -> str:
    """Which S3 implementation a test runs against: every `s3` test runs against each."""
    name: str = request.param
    return name


# Tests retry fast: the bounds are what is under test, not the waiting. The time bound is only a safety net: on a
# busy machine one attempt among 12 racers once took 30 s, and a test may not fail because the machine is slow.
FAST_RETRY = RetryPolicy(max_attempts=8, max_elapsed=600.0, initial_backoff=0.005, max_backoff=0.1)


FRESH = timedelta(hours=1)
"""A `reclaim_after` no test outlives: a claim under it is stale only once `S3Bucket.backdate_claims` ages it."""
AGED = timedelta(days=1)
"""How far `backdate_claims` moves a claim back: far past `FRESH`, and past any disagreement between clocks."""
# A claim's time as stored (`"claimed_at": "..."` in the claim of a snapshot; pydantic writes no escapes in it).
_CLAIMED_AT = re.compile(rb'("claimed_at":\s*)"([^"\\]+)"')


@dataclass
class S3Bucket:
    """A fresh bucket on one endpoint, with a raw client to look behind the persistence's back."""

    name: str
    endpoint: S3Endpoint
    bucket: str
    raw: S3Client
    session: aioboto3.Session = field(repr=False)

    @property
    def settings(self) -> ClientSettings:
        return ClientSettings(endpoint_url=self.endpoint.url, read_timeout=30.0)

    def options(self, **overrides: Any) -> dict[str, Any]:
        return {'session': self.session, 'client_settings': self.settings, 'retry': FAST_RETRY, **overrides}

    def persistence(self, run_id: str, *, prefix: str = 'runs/', **overrides: Any) -> S3StatePersistence[Any, Any]:
        return S3StatePersistence.for_run(run_id, bucket=self.bucket, prefix=prefix, **self.options(**overrides))

    async def get(self, key: str) -> tuple[bytes, str, str]:
        """Body, ETag and Content-Type of an object, read with the raw client."""
        response = await self.raw.get_object(Bucket=self.bucket, Key=key)
        async with response['Body'] as stream:
            return await stream.read(), response['ETag'], response.get('ContentType', '')

    async def put(self, key: str, body: bytes) -> None:
        await self.raw.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType='application/json')

    async def backdate_claims(self, key: str, by: timedelta = AGED) -> None:
        """Every claim in the run head `key` dated `by` earlier, every other byte kept: claims made long ago.

        Ageing a claim by its stored time, not by waiting, makes it stale for certain however slow the machine:
        claims are judged by the S3 endpoint's clock against `claimed_at`, so this is the honest way to age one.
        """
        body, _, _ = await self.get(key)

        def earlier(match: re.Match[bytes]) -> bytes:
            claimed_at = datetime.fromisoformat(match[2].decode())
            return match[1] + pydantic_core.to_json(claimed_at - by)

        backdated, count = _CLAIMED_AT.subn(earlier, body)
        assert count, f'{key} holds no claim to backdate'
        await self.put(key, backdated)


@pytest.fixture
async def s3(request: pytest.FixtureRequest, endpoint_name: str) -> AsyncIterator[S3Bucket]:
    endpoint: S3Endpoint = request.getfixturevalue(f'{endpoint_name}_endpoint')
    session = new_session(endpoint)
    async with session.client('s3', endpoint_url=endpoint.url) as raw:
        bucket = f'test-{uuid.uuid4().hex[:16]}'
        await raw.create_bucket(Bucket=bucket)
        yield S3Bucket(endpoint_name, endpoint, bucket, raw, session)
        await _delete_bucket(raw, bucket)


async def _delete_bucket(raw: S3Client, bucket: str) -> None:
    # SeaweedFS gives each bucket volumes of its own: a suite that left them all behind would run out.
    while keys := [item['Key'] for item in (await raw.list_objects_v2(Bucket=bucket)).get('Contents', [])]:
        for key in keys:
            await raw.delete_object(Bucket=bucket, Key=key)
    await raw.delete_bucket(Bucket=bucket)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: S3Endpoint) -> S3Endpoint:
    """The standard AWS environment pointing at moto, for code that uses the default configuration."""
    for name in [n for n in os.environ if n.startswith('AWS_')]:
        monkeypatch.delenv(name)
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', moto_endpoint.access_key)
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', moto_endpoint.secret_key)
    monkeypatch.setenv('AWS_DEFAULT_REGION', moto_endpoint.region)
    monkeypatch.setenv('AWS_ENDPOINT_URL_S3', moto_endpoint.url)
    monkeypatch.setenv('AWS_CONFIG_FILE', str(Path(os.devnull)))
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', str(Path(os.devnull)))
    return moto_endpoint
