"""GraphWorker against a real HTTP S3 endpoint: idempotent start, advance, deadlines, busy, failed."""

from __future__ import annotations as _annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot

from pydantic_graph_s3 import BucketNotFoundError
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.serverless import GraphWorker, RunNotFoundError, StepBudget, StepResult, run_status

from .conftest import S3Bucket

pytestmark = pytest.mark.anyio


@dataclass
class Nap(BaseNode[CountDownState, None, int]):
    """Counts down like CountDown, sleeping first: a step of known length."""

    seconds: float = 0.2

    async def run(self, ctx: GraphRunContext[CountDownState]) -> Nap | End[int]:
        await asyncio.sleep(self.seconds)
        if ctx.state.counter <= 0:
            return End(ctx.state.counter)
        ctx.state.counter -= 1
        return Nap(self.seconds)


nap_graph = Graph(nodes=[Nap])


@dataclass
class Gate:
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runs: int = 0


GATES: dict[str, Gate] = {}


@dataclass
class Hold(BaseNode[CountDownState, None, int]):
    """Runs until its test opens the gate, so that a second worker arrives while it is running."""

    gate: str

    async def run(self, ctx: GraphRunContext[CountDownState]) -> End[int]:
        gate = GATES[self.gate]
        gate.runs += 1
        gate.entered.set()
        await gate.release.wait()
        return End(ctx.state.counter)


hold_graph = Graph(nodes=[Hold])


@dataclass
class Boom(BaseNode[CountDownState, None, int]):
    async def run(self, ctx: GraphRunContext[CountDownState]) -> End[int]:
        raise ValueError(f'cannot count from {ctx.state.counter}')


boom_graph = Graph(nodes=[Boom])


def worker(s3: S3Bucket, graph: Graph[Any, Any, Any] = count_down_graph, **options: Any) -> GraphWorker[Any, Any, Any]:
    return GraphWorker(graph, bucket=s3.bucket, prefix='runs/', **s3.options(**options))


async def history(s3: S3Bucket, run_id: str, graph: Graph[Any, Any, Any] = count_down_graph) -> list[Any]:
    persistence = s3.persistence(run_id)
    persistence.set_graph_types(graph)
    return await persistence.load_all()


# --- start ----------------------------------------------------------------------------------------------------


async def test_start_creates_the_run_with_one_create_only_put(s3: S3Bucket) -> None:
    w = worker(s3)
    result = await w.start('r1', CountDown(), CountDownState(counter=3))
    assert result == StepResult(run_id='r1', status='running', steps=0, next_node='CountDown', created=True)
    [snapshot] = await history(s3, 'r1')
    assert isinstance(snapshot, NodeSnapshot)
    assert (snapshot.status, snapshot.state, snapshot.node) == ('created', CountDownState(3), CountDown())
    fresh = w.persistence('r2')
    await fresh.initialize_run(CountDownState(1), CountDown())
    assert (fresh.stats.gets, fresh.stats.puts) == (0, 1)
    # An existing run: the create-only PUT is refused (412), then one read to report its status.
    again = w.persistence('r2')
    assert await again.initialize_run(CountDownState(9), CountDown()) is not None
    assert (again.stats.gets, again.stats.puts, again.stats.conflicts) == (1, 1, 1)


async def test_duplicated_start_is_a_no_op(s3: S3Bucket) -> None:
    w = worker(s3)
    await w.start('dup', CountDown(), CountDownState(counter=3))
    before = await s3.get('runs/dup.json')
    again = await w.start('dup', CountDown(), CountDownState(counter=99))
    assert again == StepResult(run_id='dup', status='running', steps=0, next_node='CountDown', created=False)
    assert await s3.get('runs/dup.json') == before

    await w.advance('dup')
    done = await w.start('dup', CountDown(), CountDownState(counter=99))
    assert (done.status, done.output) == ('done', 0)


async def test_concurrent_starts_create_the_run_once_and_say_which(s3: S3Bucket) -> None:
    workers = [worker(s3) for _ in range(24)]
    results = await asyncio.gather(
        *(w.start('race', CountDown(), CountDownState(counter=i)) for i, w in enumerate(workers))
    )
    assert {r.status for r in results} == {'running'}
    # Exactly one caller's state was stored, and only that caller is told its start created the run.
    [creator] = [i for i, r in enumerate(results) if r.created]
    assert [r.created for r in results].count(False) == 23
    [snapshot] = await history(s3, 'race')
    assert snapshot.state.counter == creator


# --- advance --------------------------------------------------------------------------------------------------


async def test_advance_runs_to_the_end_and_records_every_step(s3: S3Bucket) -> None:
    w = worker(s3)
    await w.start('count', CountDown(), CountDownState(counter=3))
    result = await w.advance('count')
    assert result == StepResult(run_id='count', status='done', steps=4, next_node=None, output=0)
    snapshots = await history(s3, 'count')
    assert [s.state.counter for s in snapshots] == [3, 2, 1, 0, 0]
    assert [s.status for s in snapshots[:-1]] == ['success'] * 4
    assert isinstance(snapshots[-1], EndSnapshot)
    assert snapshots[-1].result.data == 0
    assert await w.advance('count') == StepResult(run_id='count', status='done', steps=0, output=0)


async def test_max_steps_stops_with_the_next_node(s3: S3Bucket) -> None:
    w = worker(s3)
    await w.start('steps', CountDown(), CountDownState(counter=3))
    first = await w.advance('steps', max_steps=2)
    assert first == StepResult(run_id='steps', status='running', steps=2, next_node='CountDown')
    assert [s.status for s in await history(s3, 'steps')] == ['success', 'success', 'created']
    assert (await worker(s3).advance('steps')).model_dump() == {
        'run_id': 'steps',
        'status': 'done',
        'steps': 2,
        'next_node': None,
        'output': 0,
        'error': None,
        'created': None,
    }


async def test_max_steps_from_the_environment(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_MAX_STEPS', '1')
    w = worker(s3)
    await w.start('env-steps', CountDown(), CountDownState(counter=2))
    assert (await w.advance('env-steps')).steps == 1
    assert (await w.advance('env-steps', max_steps=5)).status == 'done'


async def test_advance_stops_before_the_deadline_with_a_learned_margin(s3: S3Bucket) -> None:
    budget = StepBudget(reserve=0.1, factor=2.0)
    w = worker(s3, nap_graph, budget=budget)
    # Steps of 1 s, whose sleep dwarfs a slow machine's lag in the writes: the learned margin stays right.
    await w.start('nap', Nap(seconds=1.0), CountDownState(counter=50))
    deadline = time.monotonic() + 8.0
    result = await w.advance('nap', deadline=deadline)
    finished = time.monotonic()
    assert result.status == 'running'
    assert finished < deadline
    # Each step takes 1 s plus its writes; it stops once under 0.1 + 2 x the longest step is left.
    assert budget.longest >= 1.0
    assert 1 <= result.steps <= 7, 'every step sleeps 1 s, and only 8 s were given'
    if budget.longest < 2.6:  # then 8 s - longest > 0.1 + 2 x longest: a second step had time, on any machine
        assert result.steps >= 2
    assert deadline - finished < budget.reserve + (budget.factor + 1) * budget.longest
    snapshots = await history(s3, 'nap', nap_graph)
    assert [s.status for s in snapshots] == ['success'] * result.steps + ['created']


async def test_no_step_starts_without_time_for_it(s3: S3Bucket) -> None:
    # No storage margin: what is tested is that no step starts, and the status read after that still fits. The
    # 30 s left are short of the 60 s reserve, yet leave the reads all the time a slow machine needs.
    early = worker(s3, nap_graph, budget=StepBudget(reserve=60.0, storage_margin=0))
    await early.start('late', Nap(seconds=0.2), CountDownState(counter=5))
    before = await s3.get('runs/late.json')
    result = await early.advance('late', deadline=time.monotonic() + 30.0)
    assert result == StepResult(run_id='late', status='running', steps=0, next_node='Nap')
    assert await s3.get('runs/late.json') == before

    budget = StepBudget(reserve=0.5, storage_margin=0)
    w = worker(s3, nap_graph, budget=budget)

    # The learned step length counts too: with 5 s steps seen, 10 s is enough for a first step only (sized so
    # that a slow read before the first step still leaves it room, and the second can never fit).
    budget.observe(5.0)
    assert budget.margin(first=True) == pytest.approx(5.5)
    assert budget.margin(first=False) == pytest.approx(10.5)
    result = await w.advance('late', deadline=time.monotonic() + 5.4)
    assert result.steps == 0
    result = await w.advance('late', deadline=time.monotonic() + 10.0)
    assert result.steps == 1


def test_step_budget_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match='factor'):
        StepBudget(factor=0.5)
    assert StepBudget().allows(None, first=False)


async def test_two_concurrent_advances_make_one_busy(s3: S3Bucket) -> None:
    GATES['busy'] = gate = Gate()
    first, second = worker(s3, hold_graph), worker(s3, hold_graph)
    await first.start('held', Hold(gate='busy'), CountDownState(counter=7))
    running = asyncio.create_task(first.advance('held'))
    await asyncio.wait_for(gate.entered.wait(), 120)  # a safety net only: the step starts, however slowly

    busy = await second.advance('held')
    assert busy == StepResult(run_id='held', status='busy', steps=0, next_node='Hold')
    gate.release.set()
    assert await running == StepResult(run_id='held', status='done', steps=1, output=7)
    assert gate.runs == 1


async def test_a_step_claimed_but_not_started_is_busy_too(s3: S3Bucket) -> None:
    # Another worker's `load_next` claimed and started the node (running) and is about to run it.
    w = worker(s3)
    await w.start('claimed', CountDown(), CountDownState(counter=1))
    claimed = s3.persistence('claimed')
    claimed.set_graph_types(count_down_graph)
    assert await claimed.load_next() is not None
    assert (await w.advance('claimed')).status == 'busy'
    assert [s.status for s in await history(s3, 'claimed')] == ['running']


async def test_concurrent_advances_never_run_a_step_twice(s3: S3Bucket) -> None:
    await worker(s3).start('many', CountDown(), CountDownState(counter=4))
    results = await asyncio.gather(*(worker(s3).advance('many') for _ in range(5)))
    assert {r.status for r in results} <= {'done', 'busy', 'running'}
    assert sum(r.steps for r in results) <= 5
    # Whoever is left finishes; the history is the one chain a single worker would have written.
    while (result := await worker(s3).advance('many')).status != 'done':
        assert result.status in {'busy', 'running'}
    snapshots = await history(s3, 'many')
    assert [s.state.counter for s in snapshots] == [4, 3, 2, 1, 0, 0]
    assert sum(r.steps for r in results) + result.steps == 5


async def test_a_node_that_raises_fails_the_run(s3: S3Bucket) -> None:
    w = worker(s3, boom_graph)
    await w.start('boom', Boom(), CountDownState(counter=3))
    result = await w.advance('boom')
    assert result == StepResult(run_id='boom', status='failed', steps=0, next_node=None, error=result.error)
    [snapshot] = await history(s3, 'boom', boom_graph)
    # The exception's type, not its message, which may quote state values ('cannot count from 3').
    assert result.error == f'ValueError: node Boom failed (snapshot {snapshot.id})'
    assert snapshot.status == 'error'
    again = await w.advance('boom')
    assert (again.status, again.error) == ('failed', f'node Boom failed (snapshot {snapshot.id})')


async def test_advancing_an_unknown_run_raises_and_writes_nothing(s3: S3Bucket) -> None:
    with pytest.raises(RunNotFoundError, match="run 'ghost' does not exist"):
        await worker(s3).advance('ghost')
    listed = await s3.raw.list_objects_v2(Bucket=s3.bucket)
    assert listed['KeyCount'] == 0


async def test_storage_errors_are_raised_not_reported_as_failed_runs(s3: S3Bucket) -> None:
    w = GraphWorker(count_down_graph, bucket=f'{s3.bucket}-missing', **s3.options())
    with pytest.raises(BucketNotFoundError):
        await w.start('r', CountDown(), CountDownState(counter=1))
    with pytest.raises(BucketNotFoundError):
        await w.advance('r')


def test_run_status_reads_the_last_snapshot() -> None:
    start = NodeSnapshot(state=CountDownState(1), node=CountDown())
    with pytest.raises(RunNotFoundError):
        run_status('r', [])
    for status, expected in [('created', 'running'), ('pending', 'busy'), ('running', 'busy'), ('success', 'busy')]:
        start.status = status  # type: ignore[assignment]
        assert run_status('r', [start]).status == expected
    start.status = 'error'
    assert run_status('r', [start]).status == 'failed'
    end = EndSnapshot(state=CountDownState(0), result=End(0))
    assert run_status('r', [start, end]) == StepResult(run_id='r', status='done', output=0)


def test_worker_needs_a_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('PYDANTIC_GRAPH_S3_BUCKET', raising=False)
    with pytest.raises(ValueError, match='PYDANTIC_GRAPH_S3_BUCKET'):
        GraphWorker(count_down_graph).persistence('r')
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_BUCKET', 'from-env')
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_PREFIX', 'env/')
    assert GraphWorker(count_down_graph).persistence('r').uri == 's3://from-env/env/r.json'
    assert GraphWorker(count_down_graph, prefix='').persistence('r').uri == 's3://from-env/r.json'
    with pytest.raises(ValueError, match='max_steps'):
        GraphWorker(count_down_graph, max_steps=0)
