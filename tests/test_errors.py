"""Bad input never destroys data: each failure is a typed error naming s3://bucket/key, the object untouched."""

from __future__ import annotations as _annotations

from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import pytest

from pydantic_graph_s3 import (
    AccessDeniedError,
    BucketNotFoundError,
    ClientSettings,
    CorruptObjectError,
    CredentialsError,
    EndpointUnreachableError,
    ObjectTooLargeError,
    RetryPolicy,
    S3PersistenceError,
)
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph

from .conftest import S3Bucket
from .support.fault_proxy import Fault, fault_proxy

pytestmark = pytest.mark.anyio

GOOD = b'[\n  {\n    "state": {\n      "counter": 1\n    },\n    "node": {\n      "node_id": "CountDown"\n    },\n    "status": "created",\n    "kind": "node",\n    "id": "CountDown:1"\n  }\n]'  # noqa: E501

CORRUPT_BODIES = {
    'not json': b'{"snapshots": [',
    'not a list': b'{"kind": "node"}',
    'unknown kind': b'[{"kind": "nope", "state": {"counter": 1}}]',
    'unknown node id': GOOD.replace(b'"CountDown"', b'"SomeOtherGraphsNode"'),
    'state fails validation': GOOD.replace(b'"counter": 1', b'"counter": "one"'),
    'node not an object': GOOD.replace(b'{\n      "node_id": "CountDown"\n    }', b'5'),
    'binary': bytes(range(256)),
}


def _calls(persistence: Any) -> list[Callable[[], Awaitable[Any]]]:
    """One call of each kind: a read, a claim, and both appends."""
    node = CountDown()
    return [
        lambda: persistence.load_all(),
        lambda: persistence.load_next(),
        lambda: persistence.snapshot_node(CountDownState(0), node),
        lambda: persistence.snapshot_node_if_new('x', CountDownState(0), node),
    ]


@pytest.mark.parametrize('case', list(CORRUPT_BODIES))
async def test_corrupt_object_is_refused_and_left_byte_identical(s3: S3Bucket, case: str) -> None:
    await s3.put('runs/corrupt.json', CORRUPT_BODIES[case])
    before = await s3.get('runs/corrupt.json')
    persistence = s3.persistence('corrupt')
    persistence.set_graph_types(count_down_graph)

    for call in _calls(persistence):
        with pytest.raises(CorruptObjectError) as caught:
            await call()
        assert f's3://{s3.bucket}/runs/corrupt.json' in str(caught.value)
        assert 'left untouched' in str(caught.value)
    with pytest.raises(CorruptObjectError):
        async with persistence.record_run('CountDown:1'):
            pytest.fail('must not run')
    assert await s3.get('runs/corrupt.json') == before


async def test_good_fixture_body_is_valid(s3: S3Bucket) -> None:
    # Guards the corrupt cases above: each differs from a body that loads.
    await s3.put('runs/good.json', GOOD)
    persistence = s3.persistence('good')
    persistence.set_graph_types(count_down_graph)
    (snapshot,) = await persistence.load_all()
    assert snapshot.state == CountDownState(1)


async def test_missing_bucket(s3: S3Bucket) -> None:
    persistence = S3StatePersistence_for(s3, bucket=f'{s3.bucket}-missing')
    for call in _calls(persistence):
        with pytest.raises(
            BucketNotFoundError, match=rf's3://{s3.bucket}-missing/runs/r.json: bucket .* does not exist'
        ):
            await call()


async def test_object_over_size_limit_is_not_downloaded(s3: S3Bucket) -> None:
    await s3.put('runs/big.json', GOOD)
    before = await s3.get('runs/big.json')
    persistence = s3.persistence('big', max_object_bytes=len(GOOD) - 1)
    persistence.set_graph_types(count_down_graph)
    for call in _calls(persistence):
        with pytest.raises(ObjectTooLargeError, match=f'{len(GOOD)} bytes, over the {len(GOOD) - 1}-byte limit'):
            await call()
    assert persistence.stats.bytes_received == 0
    assert await s3.get('runs/big.json') == before


async def test_unreachable_endpoint_is_bounded(s3: S3Bucket) -> None:
    persistence = S3StatePersistence_for(
        s3,
        client_settings=ClientSettings(endpoint_url='http://127.0.0.1:9', connect_timeout=0.5),
        retry=RetryPolicy(max_attempts=3, max_elapsed=10, initial_backoff=0.01, max_backoff=0.05),
    )
    with pytest.raises(EndpointUnreachableError, match=r'http://127\.0\.0\.1:9 unreachable after 3 attempt') as caught:
        await persistence.load_all()
    assert isinstance(caught.value, S3PersistenceError)
    assert caught.value.attempts == 3


def S3StatePersistence_for(s3: S3Bucket, bucket: str | None = None, **overrides: Any) -> Any:
    from pydantic_graph_s3 import S3StatePersistence

    persistence = S3StatePersistence.for_run('r', bucket=bucket or s3.bucket, prefix='runs/', **s3.options(**overrides))
    persistence.set_graph_types(count_down_graph)
    return persistence


# --- the bad input matrix: every row, every call, in one place ------------------------------------------------

MATRIX: dict[str, tuple[type[S3PersistenceError], str]] = {
    # row: (the typed error, what its message tells the reader to do)
    'not json': (CorruptObjectError, 'It was left untouched: inspect it'),
    'not a list': (CorruptObjectError, 'It was left untouched: inspect it'),
    'unknown node id': (CorruptObjectError, 'It was left untouched: inspect it'),
    'state fails validation': (CorruptObjectError, 'It was left untouched: inspect it'),
    'over size limit': (ObjectTooLargeError, 'Raise max_object_bytes'),
    'missing bucket': (BucketNotFoundError, 'Create it, or check the bucket name'),
    'access denied': (AccessDeniedError, 'to the identity these credentials belong to'),
    'expired credential': (CredentialsError, 'Refresh or configure AWS credentials'),
    'unreachable endpoint': (EndpointUnreachableError, 'Check the network'),
}


def _matrix_persistence(s3: S3Bucket, row: str, stack: ExitStack) -> Any:
    """The persistence of run `r` that meets the row's bad input."""
    if row == 'over size limit':
        return S3StatePersistence_for(s3, max_object_bytes=len(GOOD) - 1)
    if row == 'missing bucket':
        return S3StatePersistence_for(s3, bucket=f'{s3.bucket}-missing')
    if row == 'unreachable endpoint':
        return S3StatePersistence_for(
            s3,
            client_settings=ClientSettings(endpoint_url='http://127.0.0.1:9', connect_timeout=0.5),
            retry=RetryPolicy(max_attempts=2, max_elapsed=5, initial_backoff=0.01, max_backoff=0.02),
        )
    if row in ('access denied', 'expired credential'):
        proxy = stack.enter_context(fault_proxy(s3.endpoint.url))
        code = 'AccessDenied' if row == 'access denied' else 'ExpiredToken'
        proxy.inject(Fault(status=403 if row == 'access denied' else 400, code=code, times=None))
        return S3StatePersistence_for(s3, client_settings=ClientSettings(endpoint_url=proxy.url))
    return S3StatePersistence_for(s3)


@pytest.mark.parametrize('row', list(MATRIX))
async def test_bad_input_matrix(s3: S3Bucket, row: str) -> None:
    """Each row: every call raises the row's typed error naming s3://bucket/key and saying what to do, and the
    run's object is byte-identical afterwards, ETag included."""
    await s3.put('runs/r.json', CORRUPT_BODIES.get(row, GOOD))
    before = await s3.get('runs/r.json')
    error, advice = MATRIX[row]
    with ExitStack() as stack:
        persistence = _matrix_persistence(s3, row, stack)

        async def record_run() -> None:
            async with persistence.record_run('CountDown:1'):
                pytest.fail('must not run')

        for call in [*_calls(persistence), record_run]:
            with pytest.raises(error) as caught:
                await call()
            assert str(caught.value).startswith(f's3://{persistence.bucket}/runs/r.json: ')
            assert advice in str(caught.value)
    assert await s3.get('runs/r.json') == before
