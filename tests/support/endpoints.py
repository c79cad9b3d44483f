"""Where a test's S3 lives: an endpoint URL plus the credentials and region to sign requests for it.

Every S3 implementation the suite runs against (moto, SeaweedFS, a fault proxy in front of either) is handed
to tests as one `S3Endpoint`, so a test never needs to know which server it talks to.
"""

from __future__ import annotations as _annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import boto3
from botocore.config import Config

from pydantic_s3_cas.embedded import embedded_s3

__all__ = ('S3Endpoint', 'moto_s3')


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 endpoint and what a client needs to sign requests for it."""

    url: str
    access_key: str
    secret_key: str
    region: str

    def with_url(self, url: str) -> S3Endpoint:
        """The same credentials at another URL, e.g. a proxy in front of this endpoint."""
        return replace(self, url=url)

    def sync_client(self, config: Config | None = None) -> Any:
        """A plain boto3 client for this endpoint, for test set-up and checks outside any event loop."""
        return boto3.client(
            's3',
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
        )


@contextmanager
def moto_s3(*, timeout: float = 30.0) -> Iterator[S3Endpoint]:
    """Run the embedded moto server for the duration of the block; moto accepts any credentials."""
    with embedded_s3(timeout=timeout) as url:
        yield S3Endpoint(url=url, access_key='testing', secret_key='testing', region='us-east-1')
