"""Fixtures: the repository's real S3 endpoints over HTTP (moto's server, SeaweedFS), a fresh bucket per test.

The endpoints come from the repository root's framework-free `tests.support` package, shared with the
pydantic-graph-s3 suite rather than copied: the root goes on `sys.path` so it imports as `tests.support`.
"""

from __future__ import annotations as _annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import anyio
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pydantic_ai_harness_s3 import ClientSettings, RetryPolicy, S3MemoryStore, S3StepStore  # noqa: E402
from tests.support.endpoints import S3Endpoint  # noqa: E402
from tests.support.fixtures import (  # noqa: E402
    anyio_backend,
    moto_endpoint,
    new_session,
    seaweedfs_endpoint,
)

# Tests retry fast: the bounds are what is under test, not the waiting. Racing processes need many attempts.
FAST_RETRY = RetryPolicy(max_attempts=60, max_elapsed=120.0, initial_backoff=0.005, max_backoff=0.2)


@dataclass
class Bucket:
    """A fresh bucket on one endpoint, and how to open stores (or other processes' stores) on it."""

    name: str
    endpoint: S3Endpoint
    bucket: str
    raw: Any
    session: aioboto3.Session = field(repr=False)

    def options(self, **overrides: Any) -> dict[str, Any]:
        settings = ClientSettings(endpoint_url=self.endpoint.url, read_timeout=30.0)
        return {'session': self.session, 'client_settings': settings, 'retry': FAST_RETRY, **overrides}

    def step_store(self, prefix: str = 'agents/', **overrides: Any) -> S3StepStore:
        return S3StepStore(bucket=self.bucket, prefix=prefix, **self.options(**overrides))

    def memory_store(self, prefix: str = 'memory/', **overrides: Any) -> S3MemoryStore:
        return S3MemoryStore(bucket=self.bucket, prefix=prefix, **self.options(**overrides))

    async def keys(self, prefix: str = '') -> list[str]:
        response = await self.raw.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [item['Key'] for item in response.get('Contents', [])]


async def _open_bucket(name: str, endpoint: S3Endpoint) -> AsyncIterator[Bucket]:
    session = new_session(endpoint)
    async with session.client('s3', endpoint_url=endpoint.url) as raw:
        bucket = f'test-{uuid.uuid4().hex[:16]}'
        await raw.create_bucket(Bucket=bucket)
        yield Bucket(name, endpoint, bucket, raw, session)
        # SeaweedFS gives each bucket volumes of its own: a suite that left them all behind would run out.
        while keys := [i['Key'] for i in (await raw.list_objects_v2(Bucket=bucket)).get('Contents', [])]:
            for key in keys:
                await raw.delete_object(Bucket=bucket, Key=key)
        await raw.delete_bucket(Bucket=bucket)


@pytest.fixture(params=['moto', 'seaweedfs'])
async def s3(request: pytest.FixtureRequest) -> AsyncIterator[Bucket]:
    """A fresh bucket on moto, then on SeaweedFS: the core suites run against both."""
    endpoint: S3Endpoint = request.getfixturevalue(f'{request.param}_endpoint')
    async for bucket in _open_bucket(request.param, endpoint):
        yield bucket


@pytest.fixture
async def moto(moto_endpoint: S3Endpoint) -> AsyncIterator[Bucket]:
    """A fresh bucket on moto only: for the agent kill test, the slowest suite."""
    async for bucket in _open_bucket('moto', moto_endpoint):
        yield bucket


async def wait_for_marker(marker: Path, process: subprocess.Popen[str], what: str) -> None:
    """Wait until a worker process creates `marker` (it does so at the point a test kills it)."""
    deadline = time.monotonic() + 120  # a safety net only: the worker signals when it gets there
    while not await anyio.Path(marker).exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f'the worker never reached {what}'
        await anyio.sleep(0.02)
