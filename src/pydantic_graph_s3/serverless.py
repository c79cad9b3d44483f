"""Serverless workers: start and advance pydantic-graph runs stored in S3 from AWS Lambda.

`GraphWorker` runs a graph's steps with `S3StatePersistence`, so any number of invocations (Step Functions
retries, duplicated SQS deliveries, concurrent callers) can work on one run: one of them runs each step, the
others answer `busy`, and nothing runs twice. Its `lambda_handler` takes direct, Step Functions, SQS and
EventBridge events and answers with a `StepResult`.
"""

from __future__ import annotations as _annotations

import asyncio
import atexit
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar

from pydantic import Field, field_validator
from pydantic_graph import BaseNode, End
from pydantic_graph.exceptions import GraphNodeStatusError, GraphRuntimeError
from pydantic_graph.graph import Graph, GraphRun
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot, Snapshot
from pydantic_settings import BaseSettings, SettingsConfigDict

from pydantic_s3_cas import S3PersistenceError, storage_deadline, validate_bucket_name

from .events import handle_event
from .persistence import ClaimLostError, S3StatePersistence, validate_prefix
from .wire import (
    AdvanceRequest,
    InvalidEventError,
    Request,
    RunNotFoundError,
    StartDecoder,
    StartRequest,
    StepResult,
    parse_request,
)

__all__ = (
    'GraphWorker',
    'StepResult',
    'StepBudget',
    'WorkerSettings',
    'StartRequest',
    'AdvanceRequest',
    'InvalidEventError',
    'RunNotFoundError',
    'LambdaContext',
    'parse_request',
    'run_status',
    'event_loop',
    'close_event_loop',
    'DEFAULT_RECLAIM_AFTER',
)

StateT = TypeVar('StateT')
DepsT = TypeVar('DepsT')
RunEndT = TypeVar('RunEndT')

DEFAULT_RECLAIM_AFTER = timedelta(seconds=15 * 60 + 60)
"""`GraphWorker`'s `reclaim_after` when neither the option nor `PYDANTIC_GRAPH_S3_RECLAIM_AFTER` sets one: Lambda's
longest possible timeout (15 minutes), which bounds every step a Lambda worker runs, plus a minute for clock skew.
A claim older than that belongs to a worker that is certainly dead, so taking it over cannot run a step twice."""


class WorkerSettings(BaseSettings):
    """Worker configuration from the environment, as the Terraform module sets it for the Lambda function."""

    model_config = SettingsConfigDict(env_prefix='PYDANTIC_GRAPH_S3_')

    bucket: str | None = None
    """`PYDANTIC_GRAPH_S3_BUCKET`: the bucket holding the runs."""
    prefix: str = ''
    """`PYDANTIC_GRAPH_S3_PREFIX`: the folder of the runs, `''` or ending with `/`."""
    max_steps: int | None = Field(default=None, ge=1)
    """`PYDANTIC_GRAPH_S3_MAX_STEPS`: most steps one `advance` runs (default: as many as time allows)."""
    reclaim_after: Annotated[float, Field(gt=0)] | Literal['never'] | None = None
    """`PYDANTIC_GRAPH_S3_RECLAIM_AFTER`: seconds after which a step whose worker died is taken over (see
    `S3StatePersistence.reclaim_after`), or `never`. Unset: `DEFAULT_RECLAIM_AFTER`. The Terraform module sets it
    to the function's timeout plus a minute. A `reclaim_after` persistence option takes precedence."""

    @field_validator('prefix')
    @classmethod
    def _prefix_is_a_folder(cls, prefix: str) -> str:
        return validate_prefix(prefix)


class LambdaContext(Protocol):
    """The part of the Lambda context object the handler uses."""

    def get_remaining_time_in_millis(self) -> int: ...


@dataclass
class StepBudget:
    """Decides whether there is time for another step before a deadline, from the step durations seen so far.

    A step may only start when the time left exceeds `reserve + factor * longest`, where `longest` is the
    longest of the last `window` steps this worker ran (warm invocations keep learning). The first step of a
    call needs only `reserve + longest`: skipping it would not help, as the next invocation gets the same time,
    while further steps get `factor` times the slack because step durations vary.
    """

    reserve: float = 1.0
    """Seconds always kept back: for the writes and reply after the last step, and other SQS records."""
    factor: float = 2.0
    window: int = 32
    storage_margin: float = 0.25
    """Every storage call ends this many seconds before the deadline (`DeadlineExceededError` if it cannot), so
    that the worker can still answer before Lambda ends the invocation."""
    _recent: deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.reserve < 0 or self.factor < 1 or self.window < 1 or self.storage_margin < 0:
            raise ValueError('need reserve >= 0, factor >= 1, window >= 1 and storage_margin >= 0')
        self._recent = deque(maxlen=self.window)

    def observe(self, seconds: float) -> None:
        self._recent.append(seconds)

    @property
    def longest(self) -> float:
        return max(self._recent, default=0.0)

    def margin(self, *, first: bool) -> float:
        """Seconds that must be left to start a step."""
        return self.reserve + (1.0 if first else self.factor) * self.longest

    def allows(self, deadline: float | None, *, first: bool) -> bool:
        return deadline is None or deadline - time.monotonic() > self.margin(first=first)

    def storage_deadline(self, deadline: float | None) -> float | None:
        """When the storage calls of a call with `deadline` must have ended."""
        return None if deadline is None else deadline - self.storage_margin


class GraphWorker(Generic[StateT, DepsT, RunEndT]):
    """Starts and advances runs of one graph stored in S3; `lambda_handler` serves it as an AWS Lambda function.

    ```py
    worker = GraphWorker(my_graph)  # bucket and prefix from PYDANTIC_GRAPH_S3_BUCKET / _PREFIX
    handler = worker.lambda_handler
    ```
    """

    def __init__(
        self,
        graph: Graph[StateT, DepsT, RunEndT],
        *,
        bucket: str | None = None,
        prefix: str | None = None,
        deps: DepsT = None,  # type: ignore[assignment]  # as pydantic-graph's own `deps: DepsT = None`
        max_steps: int | None = None,
        budget: StepBudget | None = None,
        **persistence_options: Any,
    ) -> None:
        """`bucket`, `prefix` and `max_steps` default to the environment (`WorkerSettings`), read on first use.

        `persistence_options` go to every `S3StatePersistence` (client, session, client_settings, retry, ...).
        Crash recovery is on: `reclaim_after` defaults to `PYDANTIC_GRAPH_S3_RECLAIM_AFTER`, else to
        `DEFAULT_RECLAIM_AFTER`; pass `reclaim_after=None` to turn it off.
        """
        if max_steps is not None and max_steps < 1:
            raise ValueError(f'max_steps must be at least 1, got {max_steps}')
        if prefix is not None:
            validate_prefix(prefix)
        self.graph = graph
        self.deps = deps
        self.budget = budget or StepBudget()
        self.persistence_options = persistence_options
        self._bucket = None if bucket is None else validate_bucket_name(bucket)  # a typo fails here, not per run
        self._prefix = prefix
        self._max_steps = max_steps
        self._settings: WorkerSettings | None = None
        self._decoder = StartDecoder(graph)

    def persistence(self, run_id: str) -> S3StatePersistence[StateT, RunEndT]:
        """A new persistence object for run `run_id`, with this graph's types set."""
        settings = self._env()
        bucket = self._bucket or settings.bucket
        if not bucket:
            raise ValueError('GraphWorker has no bucket: pass bucket= or set PYDANTIC_GRAPH_S3_BUCKET')
        prefix = settings.prefix if self._prefix is None else self._prefix
        options = dict(self.persistence_options)
        if 'reclaim_after' not in options:
            options['reclaim_after'] = _reclaim_after(settings.reclaim_after)
        persistence: S3StatePersistence[StateT, RunEndT] = S3StatePersistence.for_run(
            run_id, bucket=bucket, prefix=prefix, **options
        )
        persistence.set_graph_types(self.graph)
        return persistence

    async def start(
        self,
        run_id: str,
        node: BaseNode[StateT, DepsT, RunEndT],
        state: StateT = None,  # type: ignore[assignment]
        *,
        deadline: float | None = None,
    ) -> StepResult:
        """Create run `run_id` at `node` with `state`, as `Graph.initialize` does.

        Idempotent: if the run exists it is left untouched (the write is create-only) and its status returned,
        with `created=False`: of concurrent starts, exactly one answers `created=True`.
        """
        with storage_deadline(self.budget.storage_deadline(deadline)):
            existing = await self.persistence(run_id).initialize_run(state, node)
        if existing is None:
            return StepResult(run_id=run_id, status='running', next_node=node.get_node_id(), created=True)
        return run_status(run_id, existing).model_copy(update={'created': False})

    async def advance(self, run_id: str, *, max_steps: int | None = None, deadline: float | None = None) -> StepResult:
        """Run the run's next steps, until it ends, `max_steps` ran, or there is no time for another step.

        `deadline` is an absolute `time.monotonic()` time; a step is only started if `self.budget` says it will
        end in time, and every storage call ends `budget.storage_margin` before it (else `DeadlineExceededError`).
        Storage errors (`S3PersistenceError`) are raised, nothing is lost: the step is redone by the next call. A
        node that raises makes the run `failed`; a step another worker holds makes this call `busy`.
        """
        with storage_deadline(self.budget.storage_deadline(deadline)):
            return await self._advance(run_id, max_steps, deadline)

    async def _advance(self, run_id: str, max_steps: int | None, deadline: float | None) -> StepResult:
        limit = max_steps if max_steps is not None else self._max_steps or self._env().max_steps
        if limit is not None and limit < 1:
            raise ValueError(f'max_steps must be at least 1, got {limit}')
        persistence = self.persistence(run_id)
        if not self.budget.allows(deadline, first=True):
            return await _current_status(persistence, run_id)
        started = time.monotonic()
        entered = False
        try:
            async with self.graph.iter_from_persistence(persistence, deps=self.deps, infer_name=False) as run:
                entered = True
                return await self._run_steps(run, persistence, run_id, limit, deadline, started)
        except GraphRuntimeError:
            if entered:
                raise
            # Nothing to claim (`load_next` found no `created` snapshot): the history says why. A `created` one
            # there now was written since by another worker, still advancing the run: that is `busy` too.
            status = await _current_status(persistence, run_id)
            return status.model_copy(update={'status': 'busy'}) if status.status == 'running' else status

    async def _run_steps(
        self,
        run: GraphRun[StateT, DepsT, RunEndT],
        persistence: S3StatePersistence[StateT, RunEndT],
        run_id: str,
        limit: int | None,
        deadline: float | None,
        started: float,
    ) -> StepResult:
        steps = 0
        while True:
            try:
                node = await run.next()
            except ClaimLostError:
                # This worker was taken for dead and its step given to another: that one has the run now.
                status = await _current_status(persistence, run_id, steps=steps)
                return status.model_copy(update={'status': 'busy'}) if status.status == 'running' else status
            except S3PersistenceError:
                raise
            except Exception as e:
                return await self._after_failed_step(e, persistence, run_id, steps)
            now = time.monotonic()
            self.budget.observe(now - started)
            started = now
            steps += 1
            if isinstance(node, End):
                return StepResult(run_id=run_id, status='done', steps=steps, output=node.data)
            if (limit is not None and steps >= limit) or not self.budget.allows(deadline, first=False):
                return StepResult(run_id=run_id, status='running', steps=steps, next_node=node.get_node_id())

    async def _after_failed_step(
        self, error: Exception, persistence: S3StatePersistence[StateT, RunEndT], run_id: str, steps: int
    ) -> StepResult:
        # Only S3 tells whether the node itself failed (its snapshot is recorded `error`) or another worker
        # holds the step (`record_run` refused it); anything else is not a state of the run, so it is raised.
        status = await _current_status(persistence, run_id, steps=steps)
        if status.status == 'failed':
            # Not the exception's message: it may quote state or node values (see `StepResult.error`).
            return status.model_copy(update={'error': f'{type(error).__name__}: {status.error}'})
        if isinstance(error, GraphNodeStatusError):
            return status.model_copy(update={'status': 'busy'})
        raise error

    def lambda_handler(self, event: Mapping[str, Any], context: LambdaContext | None) -> dict[str, Any]:
        """The AWS Lambda entry point: `handler = worker.lambda_handler`.

        Runs on the process's one event loop (`event_loop()`), so warm invocations reuse the S3 client. The
        deadline is the invocation's remaining time. See `handle` for the events and what is raised.
        """
        deadline = None
        if context is not None:
            deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
        return event_loop().run(self.handle(event, deadline=deadline))

    async def handle(self, event: Mapping[str, Any], *, deadline: float | None = None) -> dict[str, Any]:
        """Answer one Lambda event (see `events.handle_event`): a direct, Step Functions or EventBridge request is
        answered with its `StepResult` as a dict, an SQS batch with the records to deliver again. An invalid
        request raises `InvalidEventError` before anything is read or written; a storage error is raised too, so
        that Lambda and Step Functions retry it."""
        return await handle_event(event, deadline, lambda request, by: self.dispatch(request, deadline=by))

    async def dispatch(self, request: Request, *, deadline: float | None = None) -> StepResult:
        """Carry out one parsed request."""
        if isinstance(request, StartRequest):
            node, state = self._decoder.decode(request)
            return await self.start(request.run_id, node, state, deadline=deadline)
        return await self.advance(request.run_id, max_steps=request.max_steps, deadline=deadline)

    def _env(self) -> WorkerSettings:
        if self._settings is None:
            self._settings = WorkerSettings()
        return self._settings


def run_status(run_id: str, history: Sequence[Snapshot[Any, Any]], *, steps: int = 0) -> StepResult:
    """Where a run stands according to its snapshots: the last one is the run's current step or its end."""
    if not history:
        raise RunNotFoundError(f'run {run_id!r} does not exist: start it first (action "start")')
    last = history[-1]
    if isinstance(last, EndSnapshot):
        return StepResult(run_id=run_id, status='done', steps=steps, output=last.result.data)
    node_id = last.node.get_node_id()
    if last.status == 'created':
        return StepResult(run_id=run_id, status='running', steps=steps, next_node=node_id)
    if last.status == 'error':
        return StepResult(
            run_id=run_id, status='failed', steps=steps, error=f'node {node_id} failed (snapshot {last.id})'
        )
    # pending or running: another worker claimed it; success: its worker is writing the successor.
    return StepResult(run_id=run_id, status='busy', steps=steps, next_node=node_id)


async def _current_status(persistence: S3StatePersistence[Any, Any], run_id: str, *, steps: int = 0) -> StepResult:
    """`run_status` from S3, with the reason when the reclaim bound (`max_attempts`) failed the run.

    Only the run's live tail is read (one GET of its head): the last snapshot says where the run stands, so a status
    check costs the same at step 10 and at step 100,000.
    """
    record = await persistence.load_tail()
    status = run_status(run_id, record.snapshots, steps=steps)
    last = record.snapshots[-1]
    claim = record.claims.get(last.id) if isinstance(last, NodeSnapshot) else None
    if isinstance(last, NodeSnapshot) and claim is not None and claim.error is not None:
        return status.model_copy(update={'error': f'node {last.node.get_node_id()} {claim.error}'})
    return status


def _reclaim_after(configured: float | Literal['never'] | None) -> timedelta | None:
    """The worker's `reclaim_after` from `PYDANTIC_GRAPH_S3_RECLAIM_AFTER` (unset: the default, `never`: off)."""
    if configured is None:
        return DEFAULT_RECLAIM_AFTER
    if configured == 'never':
        return None
    return timedelta(seconds=configured)


_runner: asyncio.Runner | None = None


def event_loop() -> asyncio.Runner:
    """The process's one event loop, kept across warm Lambda invocations.

    `asyncio.run` per invocation would close the loop, and with it the shared S3 client, whose creation costs
    about 100 ms of CPU; on one kept loop the client is created once per container.
    """
    global _runner
    if _runner is None:
        _runner = asyncio.Runner()
    return _runner


@atexit.register
def close_event_loop() -> None:
    """Close the event loop of `event_loop()` and the S3 clients on it; the next call opens a new one."""
    global _runner
    runner, _runner = _runner, None
    if runner is not None:
        runner.close()
