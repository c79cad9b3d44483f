"""`RunStore.stats` remembers what it read (`{prefix}~usage.json`), so the next summary reads only changed heads.

Each test counts the requests a summary makes with the store's own counters, and checks the summary itself against
one made with `remember=False` (every head read), so a memo that answered wrongly could not pass.
"""

from __future__ import annotations as _annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pydantic_graph_s3 import RunStore
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.usage import UsageStats

from .conftest import FAST_RETRY, S3Bucket
from .support.fault_proxy import Fault, fault_proxy
from .test_cli import cli

pytestmark = pytest.mark.anyio

MEMO = 'runs/~usage.json'


def store(s3: S3Bucket, **options: Any) -> RunStore:
    return RunStore(s3.bucket, 'runs/', session=s3.session, client_settings=s3.settings, retry=FAST_RETRY, **options)


async def summary(s3: S3Bucket, **options: Any) -> tuple[UsageStats, dict[str, int]]:
    """A summary by a fresh store (nothing cached in the process), and the requests it made by kind."""
    runs = store(s3)
    stats = await runs.stats(**options)
    counted = runs.request_stats
    return stats, {'lists': counted.lists, 'gets': counted.gets, 'puts': counted.puts, 'deletes': counted.deletes}


def same_summary(a: UsageStats, b: UsageStats) -> bool:
    ignored = {'requests': 0, 'memo_entries_skipped': 0}
    return {**a.__dict__, **ignored} == {**b.__dict__, **ignored}


async def make_runs(s3: S3Bucket, ended: int, waiting: int) -> None:
    for index in range(ended):
        await count_down_graph.run(CountDown(), state=CountDownState(2), persistence=s3.persistence(f'ended-{index}'))
    for index in range(waiting):
        persistence = s3.persistence(f'waiting-{index}')
        await count_down_graph.initialize(CountDown(), state=CountDownState(2), persistence=persistence)


async def test_a_second_summary_reads_no_head_that_did_not_change(s3: S3Bucket) -> None:
    await make_runs(s3, ended=4, waiting=2)

    first, first_cost = await summary(s3)
    assert first_cost == {'lists': 1, 'gets': 1 + 6, 'puts': 1, 'deletes': 0}, 'the memo (missing), six heads'
    second, second_cost = await summary(s3)
    assert second_cost == {'lists': 1, 'gets': 1, 'puts': 0, 'deletes': 0}, 'the memo only: nothing changed'
    assert same_summary(first, second)
    assert same_summary(second, (await summary(s3, remember=False))[0])
    assert second.runs == 6 and second.by_status['ended'] == 4 and second.by_status['waiting'] == 2
    assert second.requests == 2


async def test_changed_deleted_and_new_runs_are_read_again(s3: S3Bucket) -> None:
    await make_runs(s3, ended=3, waiting=2)
    await summary(s3)

    worker = s3.persistence('waiting-0')
    worker.set_graph_types(count_down_graph)
    assert await worker.load_next() is not None  # claimed: its head changed
    runs = store(s3)
    deleted = await runs.get_run('ended-0')
    await runs.delete_run('ended-0', etag=deleted.etag)
    await count_down_graph.run(CountDown(), state=CountDownState(1), persistence=s3.persistence('new'))

    after, cost = await summary(s3)
    assert cost == {'lists': 1, 'gets': 1 + 2, 'puts': 1, 'deletes': 0}, 'the memo, the claimed run, the new run'
    assert same_summary(after, (await summary(s3, remember=False))[0])
    assert dict(after.by_status) == {'active': 1, 'waiting': 1, 'stuck': 0, 'failed': 0, 'ended': 3, 'unreadable': 0}
    again, cost = await summary(s3)
    assert cost['gets'] == 1 and cost['puts'] == 0, 'the deleted run is forgotten, so nothing changes the memo again'
    assert same_summary(after, again)


async def test_a_remembered_claim_becomes_stuck_with_time_without_a_read(s3: S3Bucket) -> None:
    await make_runs(s3, ended=0, waiting=1)
    worker = s3.persistence('waiting-0', reclaim_after=timedelta(minutes=5))
    worker.set_graph_types(count_down_graph)
    assert await worker.load_next() is not None
    now = datetime.now(tz=UTC)
    assert (await summary(s3, now=now))[0].by_status['active'] == 1

    later, cost = await summary(s3, now=now + timedelta(hours=1))
    assert cost['gets'] == 1, 'the claim time is remembered, not the status'
    assert later.by_status['stuck'] == 1 and later.by_status['active'] == 0


async def test_a_damaged_memo_costs_a_full_read_and_is_written_over(s3: S3Bucket) -> None:
    await make_runs(s3, ended=2, waiting=1)
    expected, _ = await summary(s3, remember=False)
    for damaged in (b'not json', b'{"pydantic_graph_s3": "usage-99", "heads": {}}', b'{"heads": 5}', b'[1, 2]'):
        await s3.put(MEMO, damaged)
        read_all, cost = await summary(s3)
        assert cost == {'lists': 1, 'gets': 1 + 3, 'puts': 1, 'deletes': 0}, damaged
        assert same_summary(read_all, expected)
        assert (await summary(s3))[1]['gets'] == 1, 'the rewritten memo is used'


async def test_the_memo_is_never_a_run_and_survives_prune(s3: S3Bucket) -> None:
    await make_runs(s3, ended=2, waiting=0)
    await summary(s3)
    runs = store(s3)
    assert sorted([run.run_id async for run in runs.list_runs()]) == ['ended-0', 'ended-1']
    outcomes = [outcome async for outcome in runs.prune(ended_before=datetime.now(tz=UTC) + timedelta(days=1))]
    assert sorted(o.run.run_id for o in outcomes if o.deleted) == ['ended-0', 'ended-1']
    await s3.get(MEMO)  # still there: prune deletes runs and their orphaned history only
    emptied, _ = await summary(s3)
    assert emptied.runs == 0 and emptied.objects.total == 0


async def test_without_remember_nothing_is_written(s3: S3Bucket) -> None:
    await make_runs(s3, ended=1, waiting=1)
    _, cost = await summary(s3, remember=False)
    assert cost == {'lists': 1, 'gets': 2, 'puts': 0, 'deletes': 0}
    listed = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix='runs/')
    assert MEMO not in [item['Key'] for item in listed.get('Contents', [])]


async def test_a_memo_that_may_not_be_written_is_logged_and_the_summary_stands(
    s3: S3Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    await make_runs(s3, ended=2, waiting=0)
    expected, _ = await summary(s3, remember=False)
    with fault_proxy(s3.endpoint.url) as proxy:
        proxy.inject(Fault(status=403, code='AccessDenied', method='PUT', path='(~|%7E)usage', times=None))
        settings = replace(s3.settings, endpoint_url=proxy.url)
        runs = RunStore(s3.bucket, 'runs/', session=s3.session, client_settings=settings, retry=FAST_RETRY)
        denied = await runs.stats()
    assert same_summary(denied, expected)
    records = [r for r in caplog.records if 'usage memo' in r.getMessage()]
    assert len(records) == 1 and 'AccessDeniedError' in records[0].getMessage()


async def test_the_cli_remembers_unless_told_not_to(s3: S3Bucket) -> None:
    await make_runs(s3, ended=1, waiting=1)

    async def memo_exists() -> bool:
        listed = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix=MEMO)
        return bool(listed.get('Contents'))

    forgetful = await cli(s3, 'runs', 'stats', '--no-remember', '--json')
    assert forgetful.code == 0, forgetful.stderr
    assert forgetful.json()['requests'] == 1 + 2 and not await memo_exists()
    remembering = await cli(s3, 'runs', 'stats', '--json')
    assert remembering.code == 0 and await memo_exists()
    assert remembering.json()['by_status'] == forgetful.json()['by_status']
    assert (await cli(s3, 'runs', 'stats', '--json')).json()['requests'] == 1 + 1, 'one LIST, the memo'


async def test_an_invalid_memo_entry_is_left_out_and_reported_never_a_crash(s3: S3Bucket) -> None:
    await make_runs(s3, ended=2, waiting=1)
    listed = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix='runs/')
    etags = {item['Key']: item['ETag'] for item in listed['Contents']}
    # Each entry names the head's current ETag, so the summary would use it as is.
    entries = {
        'waiting-0': [etags['runs/waiting-0.json'], 1, 'claimed', '2026-01-01T00:00:00'],  # a claim time without zone
        'ended-0': [etags['runs/ended-0.json'], True, 'ended', None],  # a count that is a bool
    }
    memo = json.dumps({'pydantic_graph_s3': 'usage-1', 'heads': entries}).encode()
    await s3.put(MEMO, memo)

    stats, _ = await summary(s3)
    assert stats.memo_entries_skipped == 2
    assert same_summary(stats, (await summary(s3, remember=False))[0])
    # The memo was written over: the next summary has nothing to skip, and reads no head.
    again, cost = await summary(s3)
    assert again.memo_entries_skipped == 0 and cost['gets'] == 1
    assert same_summary(again, stats)

    await s3.put(MEMO, memo)
    shown = await cli(s3, 'runs', 'stats', '--json')  # no traceback (checked by `cli`)
    assert shown.code == 0 and shown.json()['memo_entries_skipped'] == 2
    await s3.put(MEMO, memo)
    text = await cli(s3, 'runs', 'stats')
    assert text.code == 0 and '2 invalid entries of the usage memo were left out' in text.stdout
    clean = await cli(s3, 'runs', 'stats')
    assert clean.code == 0 and 'usage memo' not in clean.stdout
