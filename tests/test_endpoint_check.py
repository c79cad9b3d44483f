"""The endpoint self-check: passes on stores that honour If-Match/If-None-Match, names the store that ignores them.

The store that ignores them is moto behind the fault proxy with those headers stripped from every request
(moto does not check signatures, so the stripped requests are still accepted): exactly what such a store does.
"""

from __future__ import annotations as _annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pydantic_graph_s3 import (
    ClientSettings,
    ConditionalWritesUnsupportedError,
    S3PersistenceError,
    S3StatePersistence,
    verify_conditional_writes,
)
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph

from .conftest import S3Bucket
from .support.endpoints import S3Endpoint
from .support.fault_proxy import FaultProxy, fault_proxy

pytestmark = pytest.mark.anyio


async def keys(s3: S3Bucket) -> list[str]:
    listing = await s3.raw.list_objects_v2(Bucket=s3.bucket)
    return [item['Key'] for item in listing.get('Contents', [])]


async def test_conforming_store_passes_and_the_probe_is_deleted(s3: S3Bucket) -> None:
    await verify_conditional_writes(s3.bucket, 'runs/', session=s3.session, client_settings=s3.settings)
    assert await keys(s3) == []


@pytest.fixture
def ignoring(moto_endpoint: S3Endpoint) -> Iterator[FaultProxy]:
    with fault_proxy(moto_endpoint.url) as proxy:
        yield proxy


@pytest.mark.parametrize('endpoint_name', ['moto'])
@pytest.mark.parametrize('header', ['If-None-Match', 'If-Match'])
async def test_a_store_that_ignores_a_condition_is_named(s3: S3Bucket, ignoring: FaultProxy, header: str) -> None:
    ignoring.strip_headers(header)
    settings = ClientSettings(endpoint_url=ignoring.url)
    with pytest.raises(ConditionalWritesUnsupportedError) as caught:
        await verify_conditional_writes(s3.bucket, 'runs/', session=s3.session, client_settings=settings)
    message = str(caught.value)
    assert f'endpoint {ignoring.url} ignores {header} on PutObject' in message
    assert f's3://{s3.bucket}/runs/.conditional-write-probe-' in message and 'Use a store that honours' in message
    assert (caught.value.endpoint, caught.value.header) == (ignoring.url, header)
    assert isinstance(caught.value, S3PersistenceError)
    assert await keys(s3) == [], 'the probe is deleted even when the check fails'
    assert any(e.method == 'PUT' for e in ignoring.log), 'the check went through the proxy'


def checked(s3: S3Bucket, url: str, run_id: str = 'checked', prefix: str = 'runs/') -> S3StatePersistence[Any, Any]:
    settings = ClientSettings(endpoint_url=url)
    persistence = s3.persistence(run_id, prefix=prefix, client_settings=settings, verify_endpoint=True)
    persistence.set_graph_types(count_down_graph)
    return persistence


@pytest.mark.parametrize('endpoint_name', ['moto'])
async def test_verify_endpoint_refuses_before_touching_the_run(s3: S3Bucket, ignoring: FaultProxy) -> None:
    ignoring.strip_headers('If-Match', 'If-None-Match')
    with pytest.raises(ConditionalWritesUnsupportedError, match=f'endpoint {ignoring.url} ignores If-None-Match'):
        await checked(s3, ignoring.url).snapshot_node(CountDownState(1), CountDown())
    assert await keys(s3) == []


@pytest.mark.parametrize('endpoint_name', ['moto'])
async def test_verify_endpoint_checks_once_per_endpoint_and_bucket(s3: S3Bucket, ignoring: FaultProxy) -> None:
    # A conforming store behind the proxy, so that the proxy's log shows the probe's requests.
    await checked(s3, ignoring.url, 'first').snapshot_node(CountDownState(1), CountDown())
    probes = [e for e in ignoring.log if 'conditional-write-probe' in e.path]
    assert [e.method for e in probes].count('DELETE') == 1
    await checked(s3, ignoring.url, 'second').snapshot_node(CountDownState(1), CountDown())
    assert [e for e in ignoring.log if 'conditional-write-probe' in e.path] == probes
    assert sorted(await keys(s3)) == ['runs/first.json', 'runs/second.json']


@pytest.mark.parametrize('endpoint_name', ['moto'])
@pytest.mark.parametrize('prefix', ['runs/', ''])
async def test_the_probe_goes_beside_the_run(s3: S3Bucket, ignoring: FaultProxy, prefix: str) -> None:
    await checked(s3, ignoring.url, 'beside', prefix=prefix).snapshot_node(CountDownState(1), CountDown())
    probe_paths = {e.path.split('?')[0] for e in ignoring.log if 'conditional-write-probe' in e.path}
    assert len(probe_paths) == 1
    assert probe_paths.pop().startswith(f'/{s3.bucket}/{prefix}.conditional-write-probe-')
