"""GraphWorker.lambda_handler with Lambda-shaped events and a fake context, against a real HTTP S3 endpoint."""

from __future__ import annotations as _annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aioboto3
import pytest

from pydantic_graph_s3 import ClientSettings
from pydantic_graph_s3.examples.count_down import count_down_graph
from pydantic_graph_s3.serverless import GraphWorker, InvalidEventError, StepBudget, close_event_loop, event_loop

from .conftest import FAST_RETRY
from .support.endpoints import S3Endpoint
from .support.fixtures import new_session
from .test_serverless import nap_graph


@dataclass
class FakeContext:
    """A Lambda context whose invocation ends `millis` after it was made."""

    millis: int = 60_000

    def __post_init__(self) -> None:
        self.ends = time.monotonic() + self.millis / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.ends - time.monotonic()) * 1000))


@dataclass
class Bucket:
    """A fresh bucket, read and listed with a plain synchronous client."""

    endpoint: S3Endpoint
    name: str
    raw: Any

    def worker(self, graph: Any = count_down_graph, **options: Any) -> GraphWorker[Any, Any, Any]:
        defaults: dict[str, Any] = {
            'session': new_session(self.endpoint),
            'client_settings': ClientSettings(endpoint_url=self.endpoint.url),
            'retry': FAST_RETRY,
        }
        return GraphWorker(graph, bucket=self.name, prefix='runs/', **{**defaults, **options})

    def object_keys(self) -> list[str]:
        return [o['Key'] for o in self.raw.list_objects_v2(Bucket=self.name).get('Contents', [])]

    def body(self, run_id: str) -> Any:
        return json.loads(self.raw.get_object(Bucket=self.name, Key=f'runs/{run_id}.json')['Body'].read())


@pytest.fixture
def bucket(moto_endpoint: S3Endpoint) -> Iterator[Bucket]:
    raw = moto_endpoint.sync_client()
    name = f'handler-{uuid.uuid4().hex[:16]}'
    raw.create_bucket(Bucket=name)
    yield Bucket(moto_endpoint, name, raw)
    # The loop's clients are closed with it, as at the end of a Lambda container's life.
    close_event_loop()


def start_event(run_id: str, counter: int = 3, **overrides: Any) -> dict[str, Any]:
    return {'action': 'start', 'run_id': run_id, 'node': {'node_id': 'CountDown'}, 'state': {'counter': counter}} | (
        overrides
    )


def sqs_record(body: str, message_id: str) -> dict[str, Any]:
    return {
        'messageId': message_id,
        'receiptHandle': f'handle-{message_id}',
        'body': body,
        'attributes': {'ApproximateReceiveCount': '1'},
        'messageAttributes': {},
        'md5OfBody': '',
        'eventSource': 'aws:sqs',
        'eventSourceARN': 'arn:aws:sqs:us-east-1:123456789012:steps',
        'awsRegion': 'us-east-1',
    }


def test_start_then_advance_returns_every_step_result_key(bucket: Bucket) -> None:
    worker = bucket.worker()
    started = worker.lambda_handler(start_event('h1'), FakeContext())
    assert started == {
        'run_id': 'h1',
        'status': 'running',
        'steps': 0,
        'next_node': 'CountDown',
        'output': None,
        'error': None,
        'created': True,
    }
    # What the state machine sends.
    done = worker.lambda_handler({'action': 'advance', 'run_id': 'h1'}, FakeContext())
    assert done == {
        'run_id': 'h1',
        'status': 'done',
        'steps': 4,
        'next_node': None,
        'output': 0,
        'error': None,
        'created': None,
    }
    stored = bucket.body('h1')
    assert [s['state']['counter'] for s in stored] == [3, 2, 1, 0, 0]
    assert [s['kind'] for s in stored] == ['node'] * 4 + ['end']


def test_duplicated_start_event_is_a_no_op(bucket: Bucket) -> None:
    worker = bucket.worker()
    worker.lambda_handler(start_event('twice', counter=2), FakeContext())
    etag = bucket.raw.head_object(Bucket=bucket.name, Key='runs/twice.json')['ETag']
    again = worker.lambda_handler(start_event('twice', counter=8), FakeContext())
    assert (again['status'], again['next_node']) == ('running', 'CountDown')
    assert bucket.raw.head_object(Bucket=bucket.name, Key='runs/twice.json')['ETag'] == etag
    assert bucket.body('twice')[0]['state'] == {'counter': 2}


def test_eventbridge_events_carry_the_request_in_detail(bucket: Bucket) -> None:
    worker = bucket.worker()
    envelope = {
        'version': '0',
        'id': str(uuid.uuid4()),
        'detail-type': 'pydantic-graph-s3 request',
        'source': 'my.app',
        'account': '123456789012',
        'time': '2025-01-01T00:00:00Z',
        'region': 'us-east-1',
        'resources': [],
    }
    assert worker.lambda_handler(envelope | {'detail': start_event('eb', counter=1)}, None)['status'] == 'running'
    advance = envelope | {'detail': {'action': 'advance', 'run_id': 'eb', 'max_steps': 1}}
    assert worker.lambda_handler(advance, FakeContext())['steps'] == 1
    assert worker.lambda_handler(advance, FakeContext())['status'] == 'done'


@pytest.mark.parametrize(
    ('event', 'message'),
    [
        ({'run_id': 'bad'}, 'action: Field required (one of "start", "advance")'),
        ({'action': 'stop', 'run_id': 'bad'}, "Input tag 'stop' found using 'action' does not match"),
        ({'action': 'advance'}, 'advance.run_id: Field required'),
        ({'action': 'advance', 'run_id': '../x'}, 'invalid run id'),
        ({'action': 'advance', 'run_id': 'bad', 'extra': 1}, 'extra: Extra inputs are not permitted'),
        ({'action': 'advance', 'run_id': 'bad', 'max_steps': 0}, 'max_steps: Input should be greater than'),
        (start_event('bad', node={'node_id': 'Nope'}), "node_id 'Nope' is not a node of this graph (CountDown)"),
        (start_event('bad', node={}), 'node_id None is not a node of this graph'),
        (start_event('bad', node={'node_id': 'CountDown', 'count': 1}), 'CountDown has no field(s) for 1 of'),
        (start_event('bad', state={'counter': 'three'}), 'state: counter: Input should be a valid integer'),
        (start_event('bad', state=None), 'state: Input should be a dictionary or an instance of CountDownState'),
        ({'Records': [{'eventSource': 'aws:sns'}]}, 'only SQS records are supported'),
        ({'detail-type': 'x', 'detail': 'advance'}, 'invalid request'),
    ],
)
def test_bad_events_are_refused_without_writes(bucket: Bucket, event: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEventError) as raised:
        bucket.worker().lambda_handler(event, FakeContext())
    assert message in str(raised.value)
    assert bucket.object_keys() == []


def test_sqs_batch_reports_only_the_records_that_need_another_delivery(bucket: Bucket) -> None:
    worker = bucket.worker()
    for run_id in ('sqs-done', 'sqs-busy', 'sqs-long'):
        worker.lambda_handler(start_event(run_id, counter=3), None)
    # Another worker has claimed sqs-busy's step: a duplicate delivery must leave it alone.
    claimed = bucket.body('sqs-busy')
    claimed[0]['status'] = 'pending'
    bucket.raw.put_object(Bucket=bucket.name, Key='runs/sqs-busy.json', Body=json.dumps(claimed).encode())

    records = [
        sqs_record(json.dumps({'action': 'advance', 'run_id': 'sqs-done'}), 'm-done'),
        sqs_record(json.dumps({'action': 'advance', 'run_id': 'sqs-done'}), 'm-duplicate'),
        sqs_record(json.dumps({'action': 'advance', 'run_id': 'sqs-busy'}), 'm-busy'),
        sqs_record(json.dumps({'action': 'advance', 'run_id': 'sqs-long', 'max_steps': 1}), 'm-long'),
        sqs_record(json.dumps({'action': 'advance', 'run_id': 'sqs-missing'}), 'm-missing'),
        sqs_record('not json', 'm-garbage'),
        sqs_record(json.dumps({'action': 'advance'}), 'm-invalid'),
    ]
    reply = worker.lambda_handler({'Records': records}, FakeContext())
    failed = [item['itemIdentifier'] for item in reply['batchItemFailures']]
    # m-long is still running: it comes back so that its run goes on. The others are finished with.
    assert failed == ['m-long', 'm-missing', 'm-garbage', 'm-invalid']
    assert bucket.body('sqs-done')[-1]['kind'] == 'end'
    assert len(bucket.body('sqs-done')) == 5
    assert [s['status'] for s in bucket.body('sqs-busy')] == ['pending']
    assert [s['status'] for s in bucket.body('sqs-long')] == ['success', 'created']
    assert 'runs/sqs-missing.json' not in bucket.object_keys()


def test_sqs_storage_errors_fail_only_their_records(bucket: Bucket, moto_endpoint: S3Endpoint) -> None:
    good = bucket.worker()
    good.lambda_handler(start_event('sqs-ok', counter=1), None)
    records = [sqs_record(json.dumps({'action': 'advance', 'run_id': 'sqs-ok'}), 'm-ok')]
    assert good.lambda_handler({'Records': records}, FakeContext()) == {'batchItemFailures': []}
    broken = GraphWorker(
        count_down_graph,
        bucket=f'{bucket.name}-gone',
        session=new_session(moto_endpoint),
        client_settings=ClientSettings(endpoint_url=moto_endpoint.url),
        retry=FAST_RETRY,
    )
    assert broken.lambda_handler({'Records': records}, FakeContext()) == {
        'batchItemFailures': [{'itemIdentifier': 'm-ok'}]
    }


def test_storage_errors_raise_from_direct_events(bucket: Bucket) -> None:
    worker = bucket.worker()
    worker._bucket = f'{bucket.name}-gone'
    with pytest.raises(Exception, match='does not exist') as raised:
        worker.lambda_handler({'action': 'advance', 'run_id': 'r'}, FakeContext())
    assert type(raised.value).__name__ == 'BucketNotFoundError'


def test_the_handler_stops_before_the_invocation_times_out(bucket: Bucket) -> None:
    worker = bucket.worker(nap_graph, budget=StepBudget(reserve=0.2))
    worker.lambda_handler(
        {'action': 'start', 'run_id': 'nap', 'node': {'node_id': 'Nap', 'seconds': 0.15}, 'state': {'counter': 40}},
        None,
    )
    context = FakeContext(millis=1200)
    result = worker.lambda_handler({'action': 'advance', 'run_id': 'nap'}, context)
    assert result['status'] == 'running'
    assert 2 <= result['steps'] < 8
    assert context.get_remaining_time_in_millis() > 0
    assert [s['status'] for s in bucket.body('nap')] == ['success'] * result['steps'] + ['created']


def test_warm_invocations_reuse_the_event_loop_and_the_s3_client(bucket: Bucket) -> None:
    session = new_session(bucket.endpoint)
    created: list[Any] = []
    original = session.client

    def counting_client(*args: Any, **kwargs: Any) -> Any:
        created.append(args)
        return original(*args, **kwargs)

    session.client = counting_client  # type: ignore[method-assign]
    worker = bucket.worker(session=session)
    loop = event_loop()
    worker.lambda_handler(start_event('warm', counter=2), FakeContext())
    worker.lambda_handler({'action': 'advance', 'run_id': 'warm', 'max_steps': 1}, FakeContext())
    worker.lambda_handler({'action': 'advance', 'run_id': 'warm'}, FakeContext())
    assert event_loop() is loop
    assert created == [('s3',)]


def test_a_closed_loop_is_replaced(bucket: Bucket) -> None:
    first = event_loop()
    close_event_loop()
    assert event_loop() is not first
    assert bucket.worker().lambda_handler(start_event('after-close'), None)['status'] == 'running'


def test_bucket_and_prefix_from_the_environment(
    bucket: Bucket, aws_env: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the Terraform module configures the function: nothing in code, everything from the environment.
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_BUCKET', bucket.name)
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_PREFIX', 'runs/')
    worker = GraphWorker(count_down_graph, session=aioboto3.Session())
    worker.lambda_handler(start_event('from-env', counter=1), None)
    assert worker.lambda_handler({'action': 'advance', 'run_id': 'from-env'}, FakeContext())['output'] == 0
    assert bucket.object_keys() == ['runs/from-env.json']
