"""A fresh bucket on the embedded S3 (moto's server on loopback), for the benchmarks of this folder."""

from __future__ import annotations as _annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

from pydantic_ai_harness_s3 import ClientSettings
from pydantic_s3_cas.embedded import embedded_s3


@contextmanager
def embedded_bucket() -> Iterator[dict[str, Any]]:
    """The options of a store on a new bucket of a running embedded S3 (`bucket`, `prefix`, `client_settings`)."""
    # The embedded server takes any credentials; set some so that no AWS configuration is needed to run this.
    for name, value in (('AWS_ACCESS_KEY_ID', 'bench'), ('AWS_SECRET_ACCESS_KEY', 'bench')):
        os.environ.setdefault(name, value)
    with embedded_s3() as url:
        bucket = f'bench-{uuid.uuid4().hex[:12]}'
        raw = boto3.client(
            's3', endpoint_url=url, aws_access_key_id='x', aws_secret_access_key='x', region_name='us-east-1'
        )
        raw.create_bucket(Bucket=bucket)
        settings = ClientSettings(endpoint_url=url, region_name='us-east-1')
        yield {'bucket': bucket, 'prefix': 'bench/', 'client_settings': settings}
