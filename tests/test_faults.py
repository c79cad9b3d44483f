"""Injected faults between us and S3 (a proxy on loopback): retried when they may pass, bounded, and typed.

Each fault is a real HTTP response or a real held or dropped connection, so what is tested is the whole path
through botocore's error parsing, not a mock of it.
"""

from __future__ import annotations as _annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import pytest
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot

from pydantic_graph_s3 import (
    AccessDeniedError,
    ClientSettings,
    CredentialsError,
    RetriesExhaustedError,
    RetryPolicy,
    S3StatePersistence,
)
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph

from .conftest import FAST_RETRY, S3Bucket
from .support.fault_proxy import Fault, FaultProxy, fault_proxy

pytestmark = pytest.mark.anyio

KEY_PATH = r'/runs/faulty\.json'


@dataclass
class Proxied:
    s3: S3Bucket
    proxy: FaultProxy

    def persistence(self, retry: RetryPolicy = FAST_RETRY, **options: Any) -> S3StatePersistence[Any, Any]:
        """A persistence of run `faulty` whose requests all go through the proxy, with a short read timeout: a
        request the proxy holds times out in a second, and the proxy keeps a slow answer from timing out."""
        settings = ClientSettings(endpoint_url=self.proxy.url, read_timeout=1.0, connect_timeout=10.0)
        persistence = self.s3.persistence(
            'faulty', session=self.s3.session, client_settings=settings, retry=retry, **options
        )
        persistence.set_graph_types(count_down_graph)
        return persistence

    def puts(self) -> list[Any]:
        return [e for e in self.proxy.log if e.method == 'PUT']


@pytest.fixture
def proxied(s3: S3Bucket) -> Iterator[Proxied]:
    with fault_proxy(s3.endpoint.url) as proxy:
        yield Proxied(s3, proxy)


async def history(proxied: Proxied) -> list[Any]:
    persistence = proxied.s3.persistence('faulty')
    persistence.set_graph_types(count_down_graph)
    return await persistence.load_all()


@pytest.mark.parametrize(
    'fault',
    [
        Fault(status=503, method='PUT', times=2),
        Fault(status=500, method='PUT', times=2),
        Fault(status=409, method='PUT', times=2),
        Fault(status=412, method='PUT', times=2),
        Fault(status=500, method='GET', times=2),
        Fault(status=503, code='SlowDown', method='GET', times=2),
        Fault(timeout=True, method='PUT', times=1),
        Fault(drop=True, method='PUT', times=2),
    ],
    ids=lambda f: f'{f.method}-{f.kind}',
)
async def test_transient_faults_and_conflicts_are_retried(proxied: Proxied, fault: Fault) -> None:
    persistence = proxied.persistence()
    proxied.proxy.inject(fault)
    await persistence.snapshot_node(CountDownState(1), CountDown())

    assert [s.state for s in await history(proxied)] == [CountDownState(1)]
    assert proxied.proxy.counters['injected'] == fault.times
    # Each fault costs one retry; a loaded machine may add a read timeout of its own, never fewer.
    assert persistence.stats.retries >= fault.times


@pytest.mark.parametrize('outcome', [{'timeout': True}, {'drop': True}, {'status': 500}])
async def test_a_write_that_landed_unseen_is_not_applied_twice(proxied: Proxied, outcome: dict[str, Any]) -> None:
    persistence = proxied.persistence()
    node = CountDown()
    await persistence.snapshot_node(CountDownState(1), node)
    # The running-status write reaches S3, but its answer is lost: the retry must recognise it, not refuse to
    # start a node it started itself.
    proxied.proxy.inject(Fault(forward=True, method='PUT', **outcome))
    async with persistence.record_run(node.get_snapshot_id()):
        pass
    proxied.proxy.inject(Fault(forward=True, method='PUT', **outcome))
    await persistence.snapshot_end(CountDownState(0), _end())

    first, end = await history(proxied)
    assert isinstance(first, NodeSnapshot)
    assert first.status == 'success'
    assert isinstance(end, EndSnapshot)
    assert proxied.proxy.counters[f'forward+{Fault(**outcome).kind}'] == 2


@pytest.mark.parametrize('outcome', [{'timeout': True}, {'drop': True}, {'status': 500}])
async def test_claimed_writes_that_landed_unseen_are_recognised(proxied: Proxied, outcome: dict[str, Any]) -> None:
    # With claims, each write of a step (the claim that starts the node, the success with its successor) lands but
    # its answer is lost: each retry must find its own token or snapshot, not take its own claim for another
    # worker's and give up.
    await proxied.persistence().snapshot_node(CountDownState(1), CountDown())
    proxied.proxy.inject(Fault(forward=True, method='PUT', times=2, **outcome))
    persistence = proxied.persistence(reclaim_after=timedelta(seconds=60))
    async with count_down_graph.iter_from_persistence(persistence) as run:
        assert await run.next() == CountDown()

    assert proxied.proxy.counters[f'forward+{Fault(**outcome).kind}'] == 2
    record = await persistence.load_record()
    assert [getattr(s, 'status', None) for s in record.snapshots] == ['success', 'created']
    assert [c.attempt for c in record.claims.values()] == [1]


async def test_unseen_append_is_not_duplicated_after_another_writer(proxied: Proxied) -> None:
    # The append lands but its answer is lost, and another writer appends before the retry reads the object:
    # the body no longer matches what was sent, so only the snapshot's unique id prevents a second copy.
    persistence = proxied.persistence()
    await persistence.snapshot_node(CountDownState(1), CountDown())
    proxied.proxy.inject(
        Fault(forward=True, drop=True, method='PUT'),
        Fault(timeout=True, method='GET'),  # holds the retry's first read while the other writer acts
    )
    other = proxied.s3.persistence('faulty')
    other.set_graph_types(count_down_graph)

    async def other_writer() -> None:
        while not any(e.fault == 'timeout' for e in proxied.proxy.log):  # noqa: ASYNC110 (the proxy has no events)
            await anyio.sleep(0.01)
        await other.snapshot_node(CountDownState(3), CountDown())

    node = CountDown()
    async with anyio.create_task_group() as group:
        group.start_soon(other_writer)
        await persistence.snapshot_node(CountDownState(2), node)

    snapshots = await history(proxied)
    assert [s.state.counter for s in snapshots] == [1, 2, 3]
    assert [s.id for s in snapshots].count(node.get_snapshot_id()) == 1


async def test_persistent_failure_is_bounded(proxied: Proxied) -> None:
    persistence = proxied.persistence(RetryPolicy(max_attempts=4, max_elapsed=20, initial_backoff=0.01))
    await persistence.snapshot_node(CountDownState(1), CountDown())
    before = await proxied.s3.get('runs/faulty.json')
    proxied.proxy.inject(Fault(status=503, method='PUT', times=None))

    with pytest.raises(RetriesExhaustedError, match='gave up after 4 attempt') as caught:
        await persistence.snapshot_node(CountDownState(2), CountDown())
    assert caught.value.attempts == 4
    assert f's3://{proxied.s3.bucket}/runs/faulty.json' in str(caught.value)
    assert await proxied.s3.get('runs/faulty.json') == before


async def test_elapsed_bound_stops_retries(proxied: Proxied) -> None:
    persistence = proxied.persistence(RetryPolicy(max_attempts=1000, max_elapsed=3, initial_backoff=0.2))
    proxied.proxy.inject(Fault(timeout=True, method='GET', times=None))
    with pytest.raises(RetriesExhaustedError) as caught:
        await persistence.load_all()
    # The time bound stopped it, long before the attempt bound: each held read costs a 1 s read timeout.
    assert 1 <= caught.value.attempts < 1000


@pytest.mark.parametrize(
    ('fault', 'error'),
    [
        (Fault(status=403, code='AccessDenied', method='PUT', times=None), AccessDeniedError),
        (Fault(status=400, code='ExpiredToken', method='PUT', times=None), CredentialsError),
        (Fault(status=403, code='InvalidAccessKeyId', method='GET', times=None), CredentialsError),
        (Fault(status=403, code='SignatureDoesNotMatch', method='GET', times=None), CredentialsError),
    ],
    ids=lambda v: getattr(v, 'error_code', getattr(v, '__name__', '')),
)
async def test_final_errors_are_not_retried(proxied: Proxied, fault: Fault, error: type[Exception]) -> None:
    persistence = proxied.persistence()
    await persistence.snapshot_node(CountDownState(1), CountDown())
    persistence.stats.retries = 0
    proxied.proxy.inject(fault)
    with pytest.raises(error, match=r's3://.*/runs/faulty\.json'):
        await proxied.persistence().snapshot_node(CountDownState(2), CountDown())
    assert proxied.proxy.counters['injected'] == 1
    assert [s.state for s in await history(proxied)] == [CountDownState(1)]


async def test_get_denied_on_a_missing_run_still_creates_it(proxied: Proxied) -> None:
    # AWS answers 403 instead of 404 for a missing key when the caller may not list the bucket.
    proxied.proxy.inject(Fault(status=403, code='AccessDenied', method='GET', times=None))
    await proxied.persistence().snapshot_node(CountDownState(1), CountDown())
    assert [s.state for s in await history(proxied)] == [CountDownState(1)]

    # The run exists now: a writer that may not read it is refused, and the object is unchanged.
    before = await proxied.s3.get('runs/faulty.json')
    with pytest.raises(AccessDeniedError, match='access denied for GetObject'):
        await proxied.persistence().snapshot_node(CountDownState(2), CountDown())
    with pytest.raises(AccessDeniedError):
        await proxied.persistence().load_next()
    with pytest.raises(AccessDeniedError):
        await proxied.persistence().load_all()
    assert await proxied.s3.get('runs/faulty.json') == before


async def test_graph_run_completes_through_random_faults(proxied: Proxied) -> None:
    proxied.proxy.random_faults(0.15, seed=7)
    persistence = proxied.persistence(RetryPolicy(max_attempts=20, max_elapsed=60, initial_backoff=0.01))
    result = await count_down_graph.run(CountDown(), state=CountDownState(6), persistence=persistence)
    proxied.proxy.clear()

    assert result.output == 0
    snapshots = await history(proxied)
    assert [s.state.counter for s in snapshots] == [6, 5, 4, 3, 2, 1, 0, 0]
    assert all(s.status == 'success' for s in snapshots if isinstance(s, NodeSnapshot))
    assert proxied.proxy.counters['injected'] > 0


def _end() -> Any:
    from pydantic_graph import End

    return End(0)
