"""The module's state machine executed locally with the real GraphWorker handler, its runs in a real HTTP S3."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pydantic_graph_s3 import ClientSettings
from pydantic_graph_s3.examples.count_down import count_down_graph
from pydantic_graph_s3.serverless import GraphWorker, close_event_loop

from ..support.endpoints import S3Endpoint
from ..support.fixtures import new_session
from .graphs import explode_graph
from .stepfunctions import TEST_VARIABLES, ChainResult, render_definition, run_state_machine

pytestmark = pytest.mark.needs_node

PREFIX = 'sfn-runs/'
NO_RETRY_DELAY = {'Advance': 0, 'ContinueAsNewExecution': 0}


@pytest.fixture
def bucket(moto_endpoint: S3Endpoint) -> Iterator[tuple[str, Any]]:
    raw = moto_endpoint.sync_client()
    name = f'sfn-{uuid.uuid4().hex[:16]}'
    raw.create_bucket(Bucket=name)
    yield name, raw
    close_event_loop()


def lambda_env(endpoint: S3Endpoint, bucket: str, **extra: str) -> dict[str, str]:
    """What the Terraform module and the Lambda runtime give the function, pointed at the local S3."""
    return {
        'PYDANTIC_GRAPH_S3_BUCKET': bucket,
        'PYDANTIC_GRAPH_S3_PREFIX': PREFIX,
        'AWS_ENDPOINT_URL_S3': endpoint.url,
        'AWS_ACCESS_KEY_ID': endpoint.access_key,
        'AWS_SECRET_ACCESS_KEY': endpoint.secret_key,
        'AWS_DEFAULT_REGION': endpoint.region,
        'AWS_CONFIG_FILE': '/dev/null',
        'AWS_SHARED_CREDENTIALS_FILE': '/dev/null',
        **extra,
    }


def start(endpoint: S3Endpoint, bucket: str, graph: Any, run_id: str, node: str, counter: int) -> None:
    worker = GraphWorker(
        graph,
        bucket=bucket,
        prefix=PREFIX,
        session=new_session(endpoint),
        client_settings=ClientSettings(endpoint_url=endpoint.url),
    )
    event = {'action': 'start', 'run_id': run_id, 'node': {'node_id': node}, 'state': {'counter': counter}}
    assert worker.lambda_handler(event, None)['status'] == 'running'


def stored(raw: Any, bucket: str, run_id: str) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = json.loads(
        raw.get_object(Bucket=bucket, Key=f'{PREFIX}{run_id}.json')['Body'].read()
    )
    return history


def run(tmp_path: Path, run_id: str, handler: str, env: dict[str, str]) -> ChainResult:
    return run_state_machine(
        render_definition(tmp_path),
        {'run_id': run_id},
        handler=handler,
        env=env,
        retry_interval_overrides_ms=NO_RETRY_DELAY,
    )


def test_count_down_runs_to_the_end_one_step_per_invocation(
    tmp_path: Path, moto_endpoint: S3Endpoint, bucket: tuple[str, Any]
) -> None:
    name, raw = bucket
    counter = 7
    start(moto_endpoint, name, count_down_graph, 'sfn-count', 'CountDown', counter)
    # One step per invocation, so the loop and a continuation into a fresh execution both really happen.
    env = lambda_env(moto_endpoint, name, PYDANTIC_GRAPH_S3_MAX_STEPS='1')
    result = run(tmp_path, 'sfn-count', 'pydantic_graph_s3.examples.count_down:handler', env)

    per_execution = TEST_VARIABLES['max_iterations_per_execution']
    assert [e.status for e in result.executions] == ['SUCCEEDED', 'SUCCEEDED']
    assert result.executions[0].states_entered().count('Advance') == per_execution
    assert result.final.states_entered()[-1] == 'Done'
    assert result.output['last'] == {'status': 'done', 'steps': 1, 'next_node': None, 'output': 0, 'error': None}
    assert result.handler_calls == counter + 1

    history = stored(raw, name, 'sfn-count')
    assert [s['kind'] for s in history] == ['node'] * (counter + 1) + ['end']
    assert [s['state']['counter'] for s in history] == [7, 6, 5, 4, 3, 2, 1, 0, 0]
    assert {s['status'] for s in history[:-1]} == {'success'}
    assert {s['node']['node_id'] for s in history[:-1]} == {'CountDown'}
    assert history[-1]['result']['data'] == 0


def test_one_invocation_runs_as_many_steps_as_time_allows(
    tmp_path: Path, moto_endpoint: S3Endpoint, bucket: tuple[str, Any]
) -> None:
    name, raw = bucket
    start(moto_endpoint, name, count_down_graph, 'sfn-fast', 'CountDown', 5)
    result = run(tmp_path, 'sfn-fast', 'pydantic_graph_s3.examples.count_down:handler', lambda_env(moto_endpoint, name))

    assert [e.status for e in result.executions] == ['SUCCEEDED']
    assert result.handler_calls == 1
    assert result.output['last']['steps'] == 6
    assert [s['state']['counter'] for s in stored(raw, name, 'sfn-fast')] == [5, 4, 3, 2, 1, 0, 0]


def test_a_node_that_raises_fails_the_execution_with_its_error(
    tmp_path: Path, moto_endpoint: S3Endpoint, bucket: tuple[str, Any]
) -> None:
    name, raw = bucket
    start(moto_endpoint, name, explode_graph, 'sfn-boom', 'Explode', 3)
    result = run(tmp_path, 'sfn-boom', 'tests.serverless.graphs:explode_handler', lambda_env(moto_endpoint, name))

    assert result.status == 'FAILED'
    assert result.final.error == 'GraphRunFailed'
    cause = json.loads(result.final.cause or '')
    assert cause['last']['status'] == 'failed'
    history = stored(raw, name, 'sfn-boom')
    assert [s['status'] for s in history] == ['success', 'success', 'error']
    # The exception's type and where, not its message ('exploded at 1'), which may quote state values.
    assert cause['last']['error'] == f'ValueError: node Explode failed (snapshot {history[-1]["id"]})'
    # The failure is the run's, not the Lambda's: nothing was retried.
    assert result.handler_calls == 1


def test_advancing_a_run_never_started_fails_as_a_lambda_error(
    tmp_path: Path, moto_endpoint: S3Endpoint, bucket: tuple[str, Any]
) -> None:
    name, raw = bucket
    result = run(
        tmp_path, 'sfn-ghost', 'pydantic_graph_s3.examples.count_down:handler', lambda_env(moto_endpoint, name)
    )

    assert result.status == 'FAILED'
    assert result.final.error == 'RunNotFoundError'
    assert "run 'sfn-ghost' does not exist" in json.loads(result.final.cause or '')['errorMessage']
    # Retried as States.TaskFailed (MaxAttempts 2), and nothing was ever written.
    assert result.handler_calls == 3
    assert raw.list_objects_v2(Bucket=name)['KeyCount'] == 0
