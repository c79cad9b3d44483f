"""The findings of issue #9 ("Hardening"), one test (or more) each, through the public API and the Lambda handler.

Against the real HTTP S3 endpoints of the suite; faults are real HTTP responses or held connections (fault proxy).
"""

from __future__ import annotations as _annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pytest
from pydantic import AfterValidator
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from pydantic_graph_s3 import (
    AccessDeniedError,
    ClientSettings,
    ClockSkewError,
    CorruptObjectError,
    CredentialsError,
    DeadlineExceededError,
    RetryPolicy,
    RunStore,
    S3StatePersistence,
    verify_conditional_writes,
)
from pydantic_graph_s3.cli import ExitCode
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.persistence import UnfencedClaimError, recover_run
from pydantic_graph_s3.serverless import (
    DEFAULT_RECLAIM_AFTER,
    GraphWorker,
    InvalidEventError,
    StepBudget,
    WorkerSettings,
)
from pydantic_graph_s3.storage import storage_deadline

from .conftest import FAST_RETRY, S3Bucket
from .support.fault_proxy import Fault, FaultProxy, fault_proxy
from .test_cli import GRAPH, cli
from .test_lambda_handler import Bucket, FakeContext, sqs_record, start_event
from .test_lambda_handler import bucket as bucket  # the fixture

pytestmark = pytest.mark.anyio

MARKER = 'MARKER-7f3a-secret-value'
"""A state value that a validator refuses, quoting it."""
LEAK = 'LEAK-2b9d-secret-value'
"""A state value that is accepted, and that a node's exception quotes."""


def worker(s3: S3Bucket, graph: Graph[Any, Any, Any] = count_down_graph, **options: Any) -> GraphWorker[Any, Any, Any]:
    return GraphWorker(graph, bucket=s3.bucket, prefix='runs/', **s3.options(**options))


@pytest.fixture
def proxy(s3: S3Bucket) -> Iterator[FaultProxy]:
    with fault_proxy(s3.endpoint.url) as running:
        yield running


def through(proxy: FaultProxy, read_timeout: float = 30.0) -> ClientSettings:
    return ClientSettings(endpoint_url=proxy.url, read_timeout=read_timeout, connect_timeout=5.0)


# --- 1. crash recovery on by default ------------------------------------------------------------------------------


async def test_a_worker_takes_over_a_dead_workers_step_with_default_settings(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv('PYDANTIC_GRAPH_S3_RECLAIM_AFTER', raising=False)
    w = worker(s3)
    await w.start('dead', CountDown(), CountDownState(counter=1))
    # A worker claimed the step and died: its claim is older than any Lambda invocation can live.
    await worker(s3).persistence('dead').load_next()
    stored = json.loads((await s3.get('runs/dead.json'))[0])
    stored[0]['claim']['claimed_at'] = (datetime.now(tz=UTC) - DEFAULT_RECLAIM_AFTER - timedelta(seconds=1)).isoformat()
    await s3.put('runs/dead.json', json.dumps(stored).encode())

    result = await w.advance('dead')
    assert (result.status, result.steps, result.output) == ('done', 2, 0)


def test_reclaim_after_comes_from_the_option_then_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv('PYDANTIC_GRAPH_S3_RECLAIM_AFTER', raising=False)
    assert GraphWorker(count_down_graph, bucket='bkt').persistence('r').reclaim_after == DEFAULT_RECLAIM_AFTER
    assert timedelta(minutes=15) < DEFAULT_RECLAIM_AFTER  # Lambda's longest timeout: no live step is taken over
    opted_out = GraphWorker(count_down_graph, bucket='bkt', reclaim_after=None)
    assert opted_out.persistence('r').reclaim_after is None
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_RECLAIM_AFTER', '120')
    assert GraphWorker(count_down_graph, bucket='bkt').persistence('r').reclaim_after == timedelta(seconds=120)
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_RECLAIM_AFTER', 'never')
    assert GraphWorker(count_down_graph, bucket='bkt').persistence('r').reclaim_after is None
    # The persistence itself keeps pydantic-graph's strict semantics (and FileStatePersistence's bytes).
    assert S3StatePersistence.for_run('r', bucket='bkt').reclaim_after is None


# --- 3. recover refuses what it cannot fence ----------------------------------------------------------------------


async def test_recover_refuses_a_step_claimed_without_a_token_unless_forced(s3: S3Bucket) -> None:
    await worker(s3).start('slow', CountDown(), CountDownState(counter=2))
    # A worker without reclaim_after claims the step and is merely slow: it will write a successor later.
    slow = worker(s3, reclaim_after=None).persistence('slow')
    assert await slow.load_next() is not None
    before = await s3.get('runs/slow.json')

    operator = worker(s3).persistence('slow')
    with pytest.raises(UnfencedClaimError, match='cannot be fenced') as refused:
        await recover_run(operator)
    assert '--force' in str(refused.value)
    assert await s3.get('runs/slow.json') == before  # nothing released: no second successor can appear

    refused_cli = await cli(s3, 'runs', 'recover', 'slow', '--graph', GRAPH)
    assert refused_cli.code == ExitCode.CONFLICT
    assert 'cannot be fenced' in refused_cli.stderr
    assert 'Traceback' not in refused_cli.stderr
    assert await s3.get('runs/slow.json') == before

    forced = await cli(s3, 'runs', 'recover', 'slow', '--graph', GRAPH, '--force')
    assert forced.code == 0, forced.stderr
    assert [s['status'] for s in json.loads((await s3.get('runs/slow.json'))[0])] == ['created']

    # The step is claimed again by a worker without a token: that claim is refused again, not hidden by the
    # token the forced recover left behind.
    assert await worker(s3, reclaim_after=None).persistence('slow').load_next() is not None
    with pytest.raises(UnfencedClaimError):
        await recover_run(worker(s3).persistence('slow'))


# --- 7. the deadline bounds storage calls -------------------------------------------------------------------------


async def test_the_deadline_bounds_every_storage_call_even_a_hanging_one(s3: S3Bucket, proxy: FaultProxy) -> None:
    await worker(s3).start('hang', CountDown(), CountDownState(counter=1))
    # Default retry bounds (12 attempts, 60 s) and a 30 s read timeout: without the deadline this takes minutes.
    hanging = worker(
        s3, client_settings=through(proxy), retry=RetryPolicy(), budget=StepBudget(reserve=0.5, storage_margin=10.0)
    )
    proxy.inject(Fault(timeout=True, method='GET', times=None))
    # Every GET hangs, so the storage calls end at the deadline less the margin: 10 s before it, which no slow
    # machine's lag uses up.
    deadline = time.monotonic() + 15.0
    with pytest.raises(DeadlineExceededError, match=r's3://.*/runs/hang\.json: deadline reached'):
        await hanging.advance('hang', deadline=deadline)
    assert time.monotonic() < deadline
    assert proxy.counters['timeout'] >= 1

    proxy.clear()  # the run is resumable: nothing was changed
    assert (await hanging.advance('hang')).status == 'done'


async def test_the_deadline_stops_retries_before_the_retry_policy_does(s3: S3Bucket, proxy: FaultProxy) -> None:
    # A policy that would go on for 10 minutes: stopping long before that can only be the deadline's doing.
    policy = RetryPolicy(max_attempts=1000, max_elapsed=600)
    persistence = s3.persistence('retried', client_settings=through(proxy), retry=policy)
    persistence.set_graph_types(count_down_graph)
    proxy.inject(Fault(status=503, method='PUT', times=None))
    deadline = time.monotonic() + 2.0
    with storage_deadline(deadline), pytest.raises(DeadlineExceededError, match='last error: PutObject: SlowDown'):
        await persistence.snapshot_node(CountDownState(1), CountDown())
    assert time.monotonic() < deadline + 30.0  # at the deadline (a slow machine may lag), not after 10 minutes


# --- 8. errors classified right -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('fault', 'error', 'advice'),
    [
        (Fault(status=403, code='RequestTimeTooSkewed', times=None), ClockSkewError, 'Synchronise the clock'),
        (Fault(status=400, code='TokenRefreshRequired', times=None), CredentialsError, 'Refresh or configure'),
    ],
    ids=['RequestTimeTooSkewed', 'TokenRefreshRequired'],
)
async def test_clock_and_token_errors_are_reported_at_once(
    s3: S3Bucket, proxy: FaultProxy, fault: Fault, error: type[Exception], advice: str
) -> None:
    persistence = s3.persistence('skewed', client_settings=through(proxy))
    persistence.set_graph_types(count_down_graph)
    proxy.inject(fault)
    with pytest.raises(error, match=advice):
        await persistence.load_all()
    assert proxy.counters['injected'] == 1  # not retried


# --- 9. the endpoint check under the module's policy, and the advice of AccessDeniedError --------------------------


async def test_access_denied_names_the_permission_the_operation_needs(s3: S3Bucket, proxy: FaultProxy) -> None:
    settings = through(proxy)
    proxy.inject(Fault(status=403, code='AccessDenied', method='DELETE', times=None))
    with pytest.raises(AccessDeniedError, match=r'Grant s3:DeleteObject on arn:aws:s3:::.*conditional-write-probe-'):
        await verify_conditional_writes(s3.bucket, 'runs/', session=s3.session, client_settings=settings)
    proxy.clear()

    proxy.inject(Fault(status=403, code='AccessDenied', method='GET', path=r'list-type=2', times=None))
    store = RunStore(s3.bucket, 'runs/', session=s3.session, client_settings=settings, retry=FAST_RETRY)
    with pytest.raises(AccessDeniedError, match=r'Grant s3:ListBucket on arn:aws:s3:::test-\w+ \(for keys starting'):
        [run async for run in store.list_runs()]

    proxy.clear()
    proxy.inject(Fault(status=403, code='AccessDenied', method='PUT', times=None))
    with pytest.raises(AccessDeniedError, match='Grant s3:PutObject on'):
        await worker(s3, client_settings=settings).start('denied', CountDown(), CountDownState(1))


# --- 10. no state values in logs, messages or StepResult.error ----------------------------------------------------


def refuse_marker(value: str) -> str:
    if MARKER in value:
        raise ValueError(f'{value!r} is not allowed')
    return value


@dataclass
class SecretState:
    secret: Annotated[str, AfterValidator(refuse_marker)]


@dataclass
class Leak(BaseNode[SecretState, None, str]):
    async def run(self, ctx: GraphRunContext[SecretState]) -> End[str]:
        raise ValueError(f'cannot handle {ctx.state.secret}')


@dataclass
class Echo(BaseNode[SecretState, None, str]):
    async def run(self, ctx: GraphRunContext[SecretState]) -> Leak:
        return Leak()


@dataclass
class Picky(BaseNode[SecretState, None, str]):
    label: str = ''

    def __post_init__(self) -> None:
        if self.label:
            raise TypeError(f'cannot use label {self.label}')  # not wrapped by pydantic, unlike ValueError

    async def run(self, ctx: GraphRunContext[SecretState]) -> End[str]:
        return End(self.label)


secret_graph = Graph(nodes=[Echo, Leak, Picky])


def text_of(records: list[logging.LogRecord]) -> str:
    """Everything a log handler could print: messages and formatted tracebacks."""
    formatter = logging.Formatter()
    return '\n'.join(formatter.format(r) for r in records)


def test_no_state_value_reaches_a_log_record_an_error_or_a_step_result(
    bucket: Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = (MARKER, LEAK)
    # Our loggers, at every level (botocore's own DEBUG records show request bodies: a user turns those on).
    caplog.set_level(logging.DEBUG, logger='pydantic_graph_s3')
    caplog.set_level(logging.DEBUG, logger='pydantic_s3_cas')
    w = bucket.worker(secret_graph)
    seen: list[str] = []

    # Direct: a node's exception quoting the state becomes StepResult.error without its message.
    w.lambda_handler(start_event('leak', node={'node_id': 'Echo'}, state={'secret': LEAK}), None)
    failed = w.lambda_handler({'action': 'advance', 'run_id': 'leak'}, FakeContext())
    assert failed['status'] == 'failed'
    assert failed['error'].startswith('ValueError: node Leak failed (snapshot Leak:')
    seen.append(failed['error'])

    # Direct: a node field that its class refuses with a TypeError quoting it.
    with pytest.raises(InvalidEventError, match='node: TypeError') as picky:
        w.lambda_handler(start_event('picky', node={'node_id': 'Picky', 'label': LEAK}, state={'secret': ''}), None)
    seen.append(str(picky.value))

    # Direct and EventBridge: a state value refused by a validator whose message quotes it.
    bad_start = start_event('marked', node={'node_id': 'Echo'}, state={'secret': MARKER})
    envelope = {'detail-type': 'request', 'source': 'app', 'detail': bad_start}
    for event in (bad_start, envelope):
        with pytest.raises(InvalidEventError) as raised:
            w.lambda_handler(event, FakeContext())
        seen.append(str(raised.value))
        assert raised.value.__suppress_context__  # the ValidationError (with input_value) is not chained
    assert 'state: secret: the value was refused (value_error' in seen[-2]

    # SQS: the same, a bad action with the marker in its body, and a node failing on the marker.
    bodies = [
        json.dumps(bad_start),
        json.dumps({'action': 'stop', 'run_id': 'x', 'state': {'secret': MARKER}}),
        json.dumps({'action': 'advance', 'run_id': 'leak'}),
    ]
    records = [sqs_record(body, f'm{i}') for i, body in enumerate(bodies)]
    w.lambda_handler({'Records': records}, FakeContext())

    # SQS: a node fails quoting the state, and recording its failure fails too (403): the storage error is
    # logged, and the node's exception, its context, must not come with it.
    w.lambda_handler(start_event('denied', node={'node_id': 'Leak'}, state={'secret': LEAK}), None)
    with fault_proxy(bucket.endpoint.url) as proxy:
        # This worker's PUTs: the claim (which starts the node), then the node's `error`, which is refused.
        proxy.inject(Fault(status=403, code='AccessDenied', method='PUT', after=1, times=None))
        denied = bucket.worker(secret_graph, client_settings=ClientSettings(endpoint_url=proxy.url))
        reply = denied.lambda_handler(
            {'Records': [sqs_record(json.dumps({'action': 'advance', 'run_id': 'denied'}), 'm-denied')]},
            FakeContext(),
        )
        assert reply == {'batchItemFailures': [{'itemIdentifier': 'm-denied'}]}
        assert proxy.counters['injected'] == 1

    # A stored run that no longer validates: CorruptObjectError without the value.
    stored = bucket.body('leak')
    stored[0]['state']['secret'] = MARKER
    bucket.raw.put_object(Bucket=bucket.name, Key='runs/leak.json', Body=json.dumps(stored).encode())
    with pytest.raises(CorruptObjectError) as corrupt:
        w.lambda_handler({'action': 'advance', 'run_id': 'leak'}, FakeContext())
    seen.append(str(corrupt.value))
    assert 'state.secret' in seen[-1]

    logged = text_of([r for r in caplog.records if r.name.startswith(('pydantic_graph_s3', 'pydantic_s3_cas'))])
    assert "SQS message 'm-denied' failed: AccessDeniedError" in logged
    for secret in secrets:
        assert secret not in logged
        assert all(secret not in message for message in seen)


# --- 11. bounded quotes -------------------------------------------------------------------------------------------


def test_a_huge_run_id_gives_a_short_error_and_a_short_log_line(
    bucket: Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    huge = 'x' * 10_000_000 + '/'
    w = bucket.worker()
    with pytest.raises(InvalidEventError) as raised:
        w.lambda_handler({'action': 'advance', 'run_id': huge}, FakeContext())
    assert 'invalid run id' in str(raised.value)
    assert len(str(raised.value)) < 1000
    with pytest.raises(ValueError, match='invalid run id') as direct:
        S3StatePersistence.for_run(huge, bucket='bkt')
    assert len(str(direct.value)) < 1000

    caplog.set_level(logging.INFO)
    body = json.dumps({'action': 'advance', 'run_id': huge[:1_000_000]})
    w.lambda_handler({'Records': [sqs_record(body, 'm-huge')]}, FakeContext())
    [line] = [r for r in caplog.records if 'SQS message' in r.getMessage()]
    assert len(logging.Formatter().format(line)) < 2000


# --- 12. ambiguous events are refused -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('event', 'message'),
    [
        ({'action': 'advance', 'run_id': 'a', 'Records': []}, 'an SQS event (Records) that also has action, run_id'),
        (
            start_event('a') | {'detail-type': 'x', 'detail': {'action': 'advance', 'run_id': 'b'}},
            'carries the request in detail only',
        ),
        ({'detail': {'action': 'advance', 'run_id': 'b'}}, 'needs both detail-type and detail'),
        (start_event('a', state={'countr': 3}), 'CountDownState has no field(s) for 1 of the given key(s)'),
        (start_event('a', state={'counter': 3, 'extra': 1}), 'keys not shown; its fields: counter)'),
        ({'action': 'advance', 'run_id': 'a', 'max_steps': '1'}, 'max_steps: Input should be a valid integer'),
        ({'action': 'advance', 'run_id': 'a', 'max_steps': True}, 'max_steps: Input should be a valid integer'),
        ({'action': 'advance', 'run_id': 'a', 'max_steps': 1.0}, 'max_steps: Input should be a valid integer'),
    ],
)
def test_ambiguous_events_are_refused(bucket: Bucket, event: dict[str, Any], message: str) -> None:
    bucket.worker().lambda_handler(start_event('b', counter=3), None)
    before = bucket.body('b')
    with pytest.raises(InvalidEventError) as raised:
        bucket.worker().lambda_handler(event, FakeContext())
    assert message in str(raised.value)
    assert bucket.object_keys() == ['runs/b.json']
    assert bucket.body('b') == before


def test_states_that_allow_extra_fields_keep_them(bucket: Bucket) -> None:
    from pydantic import BaseModel, ConfigDict

    class Open(BaseModel):
        model_config = ConfigDict(extra='allow')
        counter: int

    @dataclass
    class Tick(BaseNode[Open, None, int]):
        async def run(self, ctx: GraphRunContext[Open]) -> End[int]:
            return End(ctx.state.counter + len(ctx.state.model_extra or {}))

    w = bucket.worker(Graph(nodes=[Tick]))
    w.lambda_handler(start_event('open', node={'node_id': 'Tick'}, state={'counter': 1, 'note': 'kept'}), None)
    assert bucket.body('open')[0]['state'] == {'counter': 1, 'note': 'kept'}
    assert w.lambda_handler({'action': 'advance', 'run_id': 'open'}, FakeContext())['output'] == 2


# --- 13. a prefix names a folder ----------------------------------------------------------------------------------


async def test_a_prefix_without_a_slash_is_refused_and_never_reaches_another_prefix(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another deployment (prefix runs-v2/) has a finished run, abc.
    other = worker(s3)
    other_run = GraphWorker(count_down_graph, bucket=s3.bucket, prefix='runs-v2/', **s3.options())
    await other_run.start('abc', CountDown(), CountDownState(counter=0))
    await other_run.advance('abc')
    before = await s3.get('runs-v2/abc.json')

    for make in (
        lambda: S3StatePersistence.for_run('-v2abc', bucket=s3.bucket, prefix='runs'),
        lambda: RunStore(s3.bucket, 'runs'),
        lambda: GraphWorker(count_down_graph, bucket=s3.bucket, prefix='runs'),
    ):
        with pytest.raises(ValueError, match='a prefix names a folder, so it must be empty or end with "/"'):
            make()
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_PREFIX', 'runs')
    with pytest.raises(ValueError, match='must be empty or end with'):
        WorkerSettings()
    monkeypatch.delenv('PYDANTIC_GRAPH_S3_PREFIX')
    listed = await cli(s3, 'runs', 'list', PYDANTIC_GRAPH_S3_PREFIX='runs')
    assert (listed.code, 'Traceback' in listed.stderr) == (ExitCode.USAGE, False)

    # With the folder prefix, the same names are another run, and prune never sees the other deployment's.
    assert (await other.start('-v2abc', CountDown(), CountDownState(counter=0))).created is True
    await other.advance('-v2abc')
    store = RunStore(s3.bucket, 'runs/', **s3.options())
    pruned = [o async for o in store.prune(ended_before=datetime(2999, 1, 1, tzinfo=UTC))]
    assert [(o.run.key, o.deleted) for o in pruned] == [('runs/-v2abc.json', True)]
    assert await s3.get('runs-v2/abc.json') == before
