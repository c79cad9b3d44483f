"""The pytest fixtures every suite of this repository shares: real S3 endpoints over HTTP on loopback.

Framework-free, like the rest of `tests.support`: the pydantic-graph-s3 suite and the pydantic-ai-harness-s3
suite (another environment, without pydantic-graph 1.x) both import them into their conftest.
"""

from __future__ import annotations as _annotations

from collections.abc import Iterator

import aioboto3
import pytest

from .endpoints import S3Endpoint, moto_s3
from .seaweedfs import seaweedfs_s3

__all__ = ('new_session', 'anyio_backend', 'moto_endpoint', 'seaweedfs_endpoint')


def new_session(endpoint: S3Endpoint) -> aioboto3.Session:
    """A session of its own, and so a client and connection pool of its own, signing for `endpoint`."""
    return aioboto3.Session(
        aws_access_key_id=endpoint.access_key, aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region
    )


@pytest.fixture
def anyio_backend() -> str:
    return 'asyncio'


@pytest.fixture(scope='session')
def moto_endpoint() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope='session')
def seaweedfs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with seaweedfs_s3(tmp_path_factory.mktemp('seaweedfs')) as endpoint:
        yield endpoint
