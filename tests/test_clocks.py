"""Claims under clock skew, bad claim data, and writes that land after the client gave up on them (issue #9)."""

from __future__ import annotations as _annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from botocore.exceptions import ReadTimeoutError
from pydantic_graph.persistence import NodeSnapshot

from pydantic_graph_s3 import CorruptObjectError
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_s3_cas import shared_client
from pydantic_s3_cas.cas import CLOCK_TOLERANCE

from .conftest import S3Bucket
from .support.fixtures import new_session

pytestmark = pytest.mark.anyio

# An hour, so that no claim goes stale because the machine is slow; the skews below are larger than it, so a worker
# that trusted its own clock would take a fresh claim over.
RECLAIM = timedelta(hours=1)


def worker(s3: S3Bucket, run_id: str, **overrides: Any) -> Any:
    options: dict[str, Any] = {'reclaim_after': RECLAIM, 'session': new_session(s3.endpoint), **overrides}
    persistence = s3.persistence(run_id, **options)
    persistence.set_graph_types(count_down_graph)
    return persistence


def skew_clock(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    """This machine's wall clock, as the storage layer reads it, off by `offset`."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + offset

    monkeypatch.setattr('pydantic_s3_cas.cas.datetime', Skewed)


async def claimed_run(s3: S3Bucket, run_id: str) -> None:
    await worker(s3, run_id).snapshot_node(CountDownState(1), CountDown())
    assert await worker(s3, run_id).load_next() is not None  # a live worker holds it now


@pytest.mark.parametrize('offset', [2 * RECLAIM, -2 * RECLAIM, timedelta(days=1)], ids=['ahead', 'behind', 'a-day'])
async def test_a_skewed_worker_does_not_steal_a_fresh_claim(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch, offset: timedelta
) -> None:
    await claimed_run(s3, 'fresh-claim')
    skew_clock(monkeypatch, offset)
    before = await s3.get('runs/fresh-claim.json')
    assert await worker(s3, 'fresh-claim').load_next() is None
    assert await s3.get('runs/fresh-claim.json') == before


async def test_a_skewed_worker_stamps_claims_with_the_s3_clock(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    await worker(s3, 'stamped').snapshot_node(CountDownState(1), CountDown())
    skew_clock(monkeypatch, timedelta(days=1))
    persistence = worker(s3, 'stamped')
    before = datetime.now(tz=UTC)  # the real time: only the storage layer's clock runs a day ahead
    assert await persistence.load_next() is not None
    after = datetime.now(tz=UTC)
    (claim,) = (await persistence.load_record()).claims.values()
    # Within the endpoint's clock (this machine's real one) and its tolerance, however long the call took.
    assert before - CLOCK_TOLERANCE - timedelta(seconds=1) <= claim.claimed_at <= after + CLOCK_TOLERANCE


async def set_claim(s3: S3Bucket, run_id: str, **claim: Any) -> str:
    """Store a run whose only node snapshot is `pending` under the given claim, as some worker left it."""
    await worker(s3, run_id).snapshot_node(CountDownState(1), CountDown())
    items = json.loads((await s3.get(f'runs/{run_id}.json'))[0])
    items[0]['status'] = 'pending'
    items[0]['claim'] = {'token': 'a' * 32, 'attempt': 1, **claim}
    await s3.put(f'runs/{run_id}.json', json.dumps(items, indent=2).encode())
    return str(items[0]['id'])


@pytest.mark.parametrize('claimed_at', [datetime.now(tz=UTC) + timedelta(days=1), datetime(9999, 1, 1, tzinfo=UTC)])
async def test_a_claim_dated_in_the_future_is_reclaimed(s3: S3Bucket, claimed_at: datetime) -> None:
    snapshot_id = await set_claim(s3, 'future', claimed_at=claimed_at.isoformat())
    taken = await worker(s3, 'future').load_next()
    assert taken is not None and taken.id == snapshot_id
    (claim,) = (await worker(s3, 'future').load_record()).claims.values()
    assert claim.attempt == 2


async def test_a_stale_claim_is_still_reclaimed_by_a_slow_clock(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    await set_claim(s3, 'old', claimed_at=(datetime.now(tz=UTC) - 2 * RECLAIM).isoformat())
    skew_clock(monkeypatch, -20 * RECLAIM)
    assert await worker(s3, 'old').load_next() is not None


@pytest.mark.parametrize(
    'claim',
    [
        {'claimed_at': '2024-01-01T00:00:00'},  # naive
        {'claimed_at': '2024-01-01T00:00:00Z', 'attempt': -1000},
        {'claimed_at': '2024-01-01T00:00:00Z', 'attempt': 10**12},
        {'claimed_at': '2024-01-01T00:00:00Z', 'token': ''},
    ],
    ids=['naive', 'negative-attempt', 'absurd-attempt', 'empty-token'],
)
async def test_bad_claim_data_is_corrupt_and_left_untouched(s3: S3Bucket, claim: dict[str, Any]) -> None:
    await set_claim(s3, 'bad-claim', **claim)
    before = await s3.get('runs/bad-claim.json')
    persistence = worker(s3, 'bad-claim')
    for call in (persistence.load_next, persistence.load_all, persistence.recover):
        with pytest.raises(CorruptObjectError, match='invalid claim'):
            await call()
    assert await s3.get('runs/bad-claim.json') == before


async def test_a_put_that_lands_after_the_retry_reread_is_recognised(s3: S3Bucket) -> None:
    """The claim's PUT times out but lands later, after the retry has read the old version: the retry's own PUT
    then loses to it (412), and the next read sees the landed body, which must count as this call's write."""
    session = new_session(s3.endpoint)
    persistence = s3.persistence('landed', session=session)
    persistence.set_graph_types(count_down_graph)
    await persistence.snapshot_node(CountDownState(1), CountDown())
    client = await shared_client(session, s3.settings)
    real_put, real_get = client.put_object, client.get_object
    reread, landed = anyio.Event(), anyio.Event()
    calls = 0

    async with anyio.create_task_group() as group:

        async def delayed_put(**request: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:

                async def land_later() -> None:
                    await reread.wait()  # lands only after the retry has read the old version
                    await real_put(**request)
                    landed.set()

                group.start_soon(land_later)
                raise ReadTimeoutError(endpoint_url=s3.endpoint.url)
            await landed.wait()  # the retry read the old version; now the first body lands first
            return await real_put(**request)

        async def noted_get(**request: Any) -> Any:
            response = await real_get(**request)
            if calls == 1:
                reread.set()
            return response

        client.put_object = delayed_put  # type: ignore[method-assign]
        client.get_object = noted_get  # type: ignore[method-assign]
        fresh = s3.persistence('landed', session=session)
        fresh.set_graph_types(count_down_graph)
        try:
            claimed = await fresh.load_next()
        finally:
            del client.put_object, client.get_object
    assert calls >= 2 and fresh.stats.conflicts >= 1
    assert isinstance(claimed, NodeSnapshot) and claimed.status == 'running'
    (snapshot,) = await fresh.load_all()
    assert isinstance(snapshot, NodeSnapshot) and snapshot.status == 'running'
