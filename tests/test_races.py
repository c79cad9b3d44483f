"""Races between separate instances and processes, each with its own client, on a real HTTP S3 endpoint."""

from __future__ import annotations as _annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot

from pydantic_graph_s3 import S3StatePersistence
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.layout import decode_head
from pydantic_s3_cas.child_process import popen_dying_with_parent

from .conftest import S3Bucket
from .race_worker import RaceState, Step, race_graph
from .support.fixtures import new_session

pytestmark = pytest.mark.anyio

RACERS = 12


def racer(s3: S3Bucket, run_id: str) -> S3StatePersistence[Any, Any]:
    """A persistence with a session, and so a client and connection pool, of its own."""
    persistence = s3.persistence(run_id, session=new_session(s3.endpoint))
    persistence.set_graph_types(count_down_graph)
    return persistence


async def test_concurrent_snapshot_node_if_new_creates_one_snapshot(s3: S3Bucket) -> None:
    node = CountDown()
    racers = [racer(s3, 'if-new-race') for _ in range(RACERS)]
    async with anyio.create_task_group() as group:
        for index, persistence in enumerate(racers):
            group.start_soon(persistence.snapshot_node_if_new, node.get_snapshot_id(), CountDownState(index), node)

    history = await racers[0].load_all()
    assert len(history) == 1
    assert sum(p.stats.puts - p.stats.conflicts for p in racers) == 1, 'exactly one write may succeed'


async def test_concurrent_load_next_has_one_winner(s3: S3Bucket) -> None:
    await racer(s3, 'claim-race').snapshot_node(CountDownState(1), CountDown())
    racers = [racer(s3, 'claim-race') for _ in range(RACERS)]
    claims: list[Any] = []

    async def claim(persistence: S3StatePersistence[Any, Any]) -> None:
        claims.append(await persistence.load_next())

    async with anyio.create_task_group() as group:
        for persistence in racers:
            group.start_soon(claim, persistence)

    winners = [c for c in claims if c is not None]
    assert len(claims) == RACERS and len(winners) == 1
    assert winners[0].status == 'running'
    (snapshot,) = await racers[0].load_all()
    assert isinstance(snapshot, NodeSnapshot)
    assert snapshot.status == 'running'


async def test_concurrent_record_run_starts_once(s3: S3Bucket) -> None:
    node = CountDown()
    await racer(s3, 'start-race').snapshot_node(CountDownState(1), node)
    started: list[int] = []
    refused: list[Exception] = []

    async def start(index: int) -> None:
        try:
            async with racer(s3, 'start-race').record_run(node.get_snapshot_id()):
                started.append(index)
        except Exception as e:
            refused.append(e)

    async with anyio.create_task_group() as group:
        for index in range(RACERS):
            group.start_soon(start, index)
    # The racers' errors are kept in the message: a failure under load must be diagnosable from its output.
    outcome = f'started by {started}, refused with {[f"{type(e).__name__}: {e}" for e in refused]}'
    assert len(started) == 1, outcome
    assert len(refused) == RACERS - 1, outcome
    assert all(type(e).__name__ == 'GraphNodeStatusError' for e in refused), outcome


@pytest.mark.timeout(240)
@pytest.mark.parametrize('pad', [0, 3000], ids=['small-state', 'sealing'])
async def test_worker_processes_racing_on_one_run_execute_each_node_once(
    s3: S3Bucket, tmp_path: Path, pad: int
) -> None:
    steps, workers = 15, 4
    persistence = s3.persistence('process-race', prefix='')
    await race_graph.initialize(Step(), state=RaceState(steps, 'x' * pad), persistence=persistence)
    log = tmp_path / 'executions.log'
    busy_log = tmp_path / 'executions.log.busy'  # see tests/race_worker.py

    env = {
        **os.environ,
        'RACE_LOG': str(log),
        'AWS_ACCESS_KEY_ID': s3.endpoint.access_key,
        'AWS_SECRET_ACCESS_KEY': s3.endpoint.secret_key,
        'AWS_DEFAULT_REGION': s3.endpoint.region,
    }
    command = [sys.executable, '-m', 'tests.race_worker', s3.endpoint.url, s3.bucket, 'process-race']
    # Started from this (the main) thread, so that they die with the test process whatever ends it.
    processes = [
        popen_dying_with_parent(command, env=env, stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent, text=True)
        for _ in range(workers)
    ]

    def wait_for_workers() -> list[int]:
        outputs = [p.communicate()[0] for p in processes]
        assert [p.returncode for p in processes] == [0] * workers, outputs
        return [int(out) for out in outputs]

    ran = await anyio.to_thread.run_sync(wait_for_workers)

    executions = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert executions == Counter(range(steps + 1)), 'every node must run exactly once'
    assert sum(ran) == steps + 1
    history = await persistence.load_all()
    assert [s.status for s in history if isinstance(s, NodeSnapshot)] == ['success'] * (steps + 1)
    assert isinstance(history[-1], EndSnapshot) and len(history) == steps + 2
    # The workers make the race certain (see tests/race_worker.py): other workers were turned away, and ran nodes.
    assert len({p for line in log.read_text().splitlines() for p in line.split()[1:]}) > 1, 'no race happened'
    assert busy_log.read_text(), 'no worker was ever turned away'
    if pad:
        # The racing sealers agreed on every segment, and left none that the head does not count.
        head = decode_head((await s3.get('process-race.json'))[0])
        listed = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix='process-race~')
        assert head.sealed_segments >= 3
        assert len(listed.get('Contents', [])) == head.sealed_segments
