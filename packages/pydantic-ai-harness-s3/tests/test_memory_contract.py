"""The third-party MemoryStore contract suite (`pydantic_ai_memory_core.contract`) against S3MemoryStore on moto."""

from __future__ import annotations as _annotations

import uuid

import pytest
from conftest import FAST_RETRY
from pydantic_ai_memory_core.contract import *  # noqa: F403  (the suite's test functions)

from pydantic_ai_harness_s3 import ClientSettings, S3MemoryStore
from tests.support.endpoints import S3Endpoint
from tests.support.fixtures import new_session

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(moto_endpoint: S3Endpoint) -> S3MemoryStore:
    """A fresh, empty store. Made without an event loop: the suite's end-to-end test runs its own loops."""
    raw = moto_endpoint.sync_client()
    bucket = f'contract-{uuid.uuid4().hex[:16]}'
    raw.create_bucket(Bucket=bucket)
    return S3MemoryStore(
        bucket=bucket,
        prefix='memory/',
        client_settings=ClientSettings(endpoint_url=moto_endpoint.url),
        session=new_session(moto_endpoint),
        retry=FAST_RETRY,
    )
