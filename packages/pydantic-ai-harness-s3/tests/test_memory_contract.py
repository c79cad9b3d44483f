"""The third-party MemoryStore contract suite (`pydantic_ai_memory_core.contract`) against S3MemoryStore, on moto's
server and on SeaweedFS."""

from __future__ import annotations as _annotations

import uuid
from collections.abc import Iterator

import pytest
from conftest import FAST_RETRY
from pydantic_ai_memory_core.contract import *  # noqa: F403  (the suite's test functions)

from pydantic_ai_harness_s3 import ClientSettings, S3MemoryStore
from tests.support.endpoints import S3Endpoint
from tests.support.fixtures import new_session

pytestmark = pytest.mark.anyio


@pytest.fixture(params=['moto', 'seaweedfs'])
def store(request: pytest.FixtureRequest) -> Iterator[S3MemoryStore]:
    """A fresh, empty store. Made without an event loop: the suite's end-to-end test runs its own loops."""
    endpoint: S3Endpoint = request.getfixturevalue(f'{request.param}_endpoint')
    raw = endpoint.sync_client()
    bucket = f'contract-{uuid.uuid4().hex[:16]}'
    raw.create_bucket(Bucket=bucket)
    yield S3MemoryStore(
        bucket=bucket,
        prefix='memory/',
        client_settings=ClientSettings(endpoint_url=endpoint.url),
        session=new_session(endpoint),
        retry=FAST_RETRY,
    )
    # SeaweedFS gives each bucket volumes of its own: a suite that left them all behind would run out.
    while keys := [item['Key'] for item in raw.list_objects_v2(Bucket=bucket).get('Contents', [])]:
        for key in keys:
            raw.delete_object(Bucket=bucket, Key=key)
    raw.delete_bucket(Bucket=bucket)
