"""Spans (to an in-memory exporter), counters, and log records: what an operator sees of a run."""

from __future__ import annotations as _annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from pydantic_graph_s3 import RetriesExhaustedError, RetryPolicy
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_s3_cas import shared_client

from .conftest import S3Bucket

pytestmark = pytest.mark.anyio


# logfire's configuration is process-wide and cannot be undone, and a configured logfire slows every later test
# (FileStatePersistence's 1-second lock then times out), so the spans are captured in a process of their own.
SPAN_CAPTURE = """
import asyncio, json, sys
import aioboto3, logfire
from logfire.testing import TestExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from pydantic_graph_s3 import ClientSettings, S3StatePersistence
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph

exporter = TestExporter()
logfire.configure(send_to_logfire=False, console=False, additional_span_processors=[SimpleSpanProcessor(exporter)])
endpoint, bucket, access_key, secret_key = sys.argv[1:5]
session = aioboto3.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name='us-east-1')

async def run(endpoint, bucket):
    persistence = S3StatePersistence.for_run(
        'traced', bucket=bucket, prefix='runs/', session=session, client_settings=ClientSettings(endpoint_url=endpoint)
    )
    await count_down_graph.run(CountDown(), state=CountDownState(1), persistence=persistence)
    return persistence.stats.requests

requests = asyncio.run(run(endpoint, bucket))
spans = [span['attributes'] for span in exporter.exported_spans_as_dict()]
print(json.dumps({'requests': requests, 'spans': spans}, default=str))
"""


async def test_one_span_per_persistence_call_and_per_s3_request(s3: S3Bucket) -> None:
    arguments = [s3.endpoint.url, s3.bucket, s3.endpoint.access_key, s3.endpoint.secret_key]
    done = await anyio.run_process([sys.executable, '-c', SPAN_CAPTURE, *arguments], check=False)
    assert done.returncode == 0, done.stderr.decode()
    captured = json.loads(done.stdout)

    calls = [span for span in captured['spans'] if span.get('method')]
    requests = [span for span in captured['spans'] if span.get('operation')]
    assert [call['method'] for call in calls].count('record_run') == 2
    assert {call['run_id'] for call in calls} == {'traced'}
    assert all(call['outcome'] == 'ok' for call in calls)
    # As the request-cost test counts them: one GET finding nothing, one create, two PUTs per node.
    assert [request['operation'] for request in requests] == ['GetObject'] + ['PutObject'] * 5
    first, *puts = requests
    assert (first['outcome'], first['etag'], first['attempt']) == ('missing', '', 1)
    for request in puts:
        assert (request['bucket'], request['key'], request['run_id']) == (s3.bucket, 'runs/traced.json', 'traced')
        assert (request['outcome'], request['attempt']) == ('ok', 1)
        assert request['etag'].startswith('"')
    assert captured['requests'] == len(requests)


@dataclass(eq=False)
class RefusingClient:
    """A client whose conditional PUTs always lose to another writer (412): every other call goes through."""

    real: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def put_object(self, **_: Any) -> Any:
        raise ClientError({'Error': {'Code': 'PreconditionFailed', 'Message': 'lost'}}, 'PutObject')


async def test_conflicts_and_retries_are_counted_once_each(s3: S3Bucket) -> None:
    client = RefusingClient(await shared_client(s3.session, s3.settings))
    retry = RetryPolicy(max_attempts=4, max_elapsed=30, initial_backoff=0.001, max_backoff=0.01)
    persistence = s3.persistence('contended', client=client, retry=retry)
    persistence.set_graph_types(count_down_graph)
    with pytest.raises(RetriesExhaustedError, match='4 attempt'):
        await persistence.snapshot_node(CountDownState(1), CountDown())
    stats = persistence.stats.as_dict()
    # Four attempts, each a GET then a refused PUT; three of them were retries.
    assert {k: stats[k] for k in ('gets', 'puts', 'conflicts', 'retries', 'requests')} == {
        'gets': 4,
        'puts': 4,
        'conflicts': 4,
        'retries': 3,
        'requests': 8,
    }


SECRET = 'sk-do-not-log-7f3a'


@dataclass
class Vault:
    password: str


@dataclass
class Open(BaseNode[Vault, None, str]):
    async def run(self, ctx: GraphRunContext[Vault]) -> End[str]:
        return End('opened')


vault_graph = Graph(nodes=[Open])


async def test_every_record_has_the_run_id_and_no_state(s3: S3Bucket, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger='pydantic_graph_s3')
    await vault_graph.run(Open(), state=Vault(SECRET), persistence=s3.persistence('vault'))
    records = [r for r in caplog.records if r.name.startswith('pydantic_graph_s3')]
    assert records
    assert {getattr(r, 'run_id', None) for r in records} == {'vault'}
    assert all('vault' in r.getMessage() or r.levelno < logging.INFO for r in records)
    assert [r.getMessage() for r in records if r.levelno >= logging.INFO] == [
        f'run vault: snapshot {s} {status}'
        for s, status in [(records_snapshot(records), 'running'), (records_snapshot(records), 'success')]
    ]
    assert not any(SECRET in r.getMessage() for r in records)


def records_snapshot(records: list[logging.LogRecord]) -> str:
    (snapshot_id,) = {r.args[1] for r in records if r.levelno == logging.INFO and isinstance(r.args, tuple)}
    assert isinstance(snapshot_id, str) and snapshot_id.startswith('Open:')
    return snapshot_id
