"""The state machine definition, validated and executed locally with its Lambda Task answered by Python."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from . import terraform_hcl
from .fake_worker import read_scenario, write_scenario
from .stepfunctions import (
    TEST_STATE_MACHINE_ARN,
    TEST_VARIABLES,
    ChainResult,
    render_definition,
    run_state_machine,
    validate_definition,
)

pytestmark = pytest.mark.needs_node

HISTORY_EVENT_LIMIT = 25_000
NO_RETRY_DELAY = {'Advance': 0, 'ContinueAsNewExecution': 0}


def run(tmp_path: Path, worker_dir: Path, script: list[str], run_id: str = 'run-1', **variables: int) -> ChainResult:
    write_scenario(worker_dir, run_id, script)
    definition = render_definition(tmp_path, variables)
    return run_state_machine(
        definition,
        {'run_id': run_id},
        handler='tests.serverless.fake_worker:handler',
        env={'FAKE_WORKER_DIR': str(worker_dir)},
        retry_interval_overrides_ms=NO_RETRY_DELAY,
    )


def module_variable_default(name: str) -> int:
    default = terraform_hcl.module().variables[name]['default']
    assert isinstance(default, int)
    return default


def test_rendered_definition_passes_asl_validator(tmp_path: Path) -> None:
    result = validate_definition(render_definition(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'is valid' in result.stdout


def test_definition_with_module_defaults_passes_asl_validator(tmp_path: Path) -> None:
    defaults = {name: module_variable_default(name) for name in ('busy_wait_seconds', 'max_iterations_per_execution')}
    defaults['task_timeout_seconds'] = module_variable_default('lambda_timeout') + 30
    result = validate_definition(render_definition(tmp_path, defaults))
    assert result.returncode == 0, result.stdout + result.stderr


def test_asl_validator_rejects_a_broken_definition(tmp_path: Path) -> None:
    # Proves the validator is really consulted: a dangling Next must be refused.
    definition = json.loads(render_definition(tmp_path).read_text())
    definition['States']['WaitWhileBusy']['Next'] = 'NoSuchState'
    broken = tmp_path / 'broken.asl.json'
    broken.write_text(json.dumps(definition))
    assert validate_definition(broken).returncode != 0


def test_definition_uses_jsonpath_and_only_the_expected_integrations(tmp_path: Path) -> None:
    definition = json.loads(render_definition(tmp_path).read_text())
    assert definition.get('QueryLanguage', 'JSONPath') == 'JSONPath'
    resources = {s['Resource'] for s in definition['States'].values() if s['Type'] == 'Task'}
    assert resources == {'arn:aws:states:::lambda:invoke', 'arn:aws:states:::states:startExecution'}


def test_done_reaches_succeed(tmp_path: Path, worker_dir: Path) -> None:
    result = run(tmp_path, worker_dir, ['running', 'running', 'done'])

    assert [e.status for e in result.executions] == ['SUCCEEDED']
    assert result.final.states_entered()[-1] == 'Done'
    assert result.output['last'] == {'status': 'done', 'steps': 3, 'next_node': None, 'output': 3, 'error': None}
    assert result.output['run_id'] == 'run-1'
    events = read_scenario(worker_dir, 'run-1')['events']
    assert events == [{'action': 'advance', 'run_id': 'run-1'}] * 3


def test_failed_reaches_fail_with_the_worker_error(tmp_path: Path, worker_dir: Path) -> None:
    result = run(tmp_path, worker_dir, ['running', 'failed'])

    assert result.status == 'FAILED'
    assert result.final.error == 'GraphRunFailed'
    assert result.final.cause is not None
    cause = json.loads(result.final.cause)
    assert cause['last']['error'] == 'ValueError: the graph raised'
    assert cause['run_id'] == 'run-1'
    assert result.final.states_entered()[-1] == 'Failed'


def test_unknown_status_fails_instead_of_looping(tmp_path: Path, worker_dir: Path) -> None:
    result = run(tmp_path, worker_dir, ['paused'])

    assert result.status == 'FAILED'
    assert result.final.error == 'UnexpectedWorkerStatus'
    assert json.loads(result.final.cause or '')['last']['status'] == 'paused'


def test_busy_waits_then_advances_again(tmp_path: Path, worker_dir: Path) -> None:
    started = time.monotonic()
    result = run(tmp_path, worker_dir, ['busy', 'running', 'done'], busy_wait_seconds=1)
    elapsed = time.monotonic() - started

    assert result.status == 'SUCCEEDED'
    states = result.final.states_entered()
    assert states.count('WaitWhileBusy') == 1
    assert states.index('WaitWhileBusy') < len(states) - states[::-1].index('Advance') - 1
    assert result.handler_calls == 3
    # The Wait really waited its busy_wait_seconds (the template variable, not an override).
    assert elapsed >= 1.0


def test_lambda_throttling_is_retried(tmp_path: Path, worker_dir: Path) -> None:
    result = run(tmp_path, worker_dir, ['throttle', 'throttle', 'running', 'done'])

    assert result.status == 'SUCCEEDED'
    retried = [e for e in result.final.events if e['type'] == 'StateRetried']
    assert [e['state'] for e in retried] == ['Advance', 'Advance']
    assert result.output['last']['steps'] == 2


def test_lambda_throttling_gives_up_after_the_retry_budget(tmp_path: Path, worker_dir: Path) -> None:
    definition = json.loads(render_definition(tmp_path).read_text())
    max_attempts = definition['States']['Advance']['Retry'][0]['MaxAttempts']
    result = run(tmp_path, worker_dir, ['throttle'] * (max_attempts + 1) + ['done'])

    assert result.status == 'FAILED'
    assert result.final.error == 'Lambda.TooManyRequestsException'
    assert result.handler_calls == max_attempts + 1


def test_a_crashed_step_is_redone(tmp_path: Path, worker_dir: Path) -> None:
    result = run(tmp_path, worker_dir, ['crash', 'running', 'done'])

    assert result.status == 'SUCCEEDED'
    assert result.output['last']['status'] == 'done'


def test_a_worker_that_keeps_crashing_fails_the_execution(tmp_path: Path, worker_dir: Path) -> None:
    result = run(tmp_path, worker_dir, ['crash'] * 3 + ['done'])

    assert result.status == 'FAILED'
    assert result.final.error == 'WorkerCrashedError'
    assert json.loads(result.final.cause or '')['errorMessage'] == 'the worker crashed mid-step'


def test_long_run_continues_in_fresh_executions_and_completes(tmp_path: Path, worker_dir: Path) -> None:
    per_execution = TEST_VARIABLES['max_iterations_per_execution']
    steps = 2 * per_execution + 3
    script = ['running'] * 4 + ['busy'] + ['running'] * (steps - 5) + ['done']
    result = run(tmp_path, worker_dir, script, busy_wait_seconds=1)

    assert [e.status for e in result.executions] == ['SUCCEEDED'] * 3
    first, second, third = result.executions
    assert first.input == {'run_id': 'run-1'}
    for index, (previous, execution) in enumerate([(first, second), (second, third)]):
        [continuation] = previous.continuations
        # ITSELF: the ARN comes from the context object, and the chain only moves on through it.
        assert continuation['StateMachineArn'] == TEST_STATE_MACHINE_ARN
        assert continuation['Input']['run_id'] == 'run-1'
        assert continuation['Input']['segment'] == index + 1
        assert continuation['Input']['AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID'].endswith(f':execution-{index}')
        assert execution.input == continuation['Input']
        assert previous.output['iteration'] == per_execution
        assert previous.states_entered()[-1] == 'ContinuedInNewExecution'
        assert previous.states_entered().count('Advance') == per_execution
    assert third.continuations == []
    assert third.output['segment'] == 2
    assert third.output['last']['status'] == 'done'
    assert third.output['last']['steps'] == steps
    assert result.handler_calls == len(script)


def iteration_budgets() -> list[int]:
    """The module's default iterations per execution, and the most its validation allows."""
    variable = terraform_hcl.module().variables['max_iterations_per_execution']
    match = re.search(r'var\.max_iterations_per_execution <= (\d+)', variable['validation'][0]['condition'])
    assert match is not None
    return [variable['default'], int(match.group(1))]


@pytest.mark.parametrize('iterations', iteration_budgets(), ids=['default', 'validation-cap'])
def test_iteration_budget_keeps_every_execution_below_the_history_limit(
    tmp_path: Path, worker_dir: Path, iterations: int
) -> None:
    # Each iteration on the longest path without retries (busy, so the Wait runs too), measured, then every retry
    # of the Advance Task added on top: one more failed, scheduled and started event each.
    write_scenario(worker_dir, 'long-run', ['busy'] * iterations + ['done'])
    definition = render_definition(tmp_path, {'max_iterations_per_execution': iterations})
    result = run_state_machine(
        definition,
        {'run_id': 'long-run'},
        env={'FAKE_WORKER_DIR': str(worker_dir)},
        wait_time_overrides_ms={'WaitWhileBusy': 0},
    )
    first = result.executions[0]
    assert len(first.continuations) == 1
    assert result.status == 'SUCCEEDED'

    advance = json.loads(definition.read_text())['States']['Advance']
    retries_per_iteration = sum(r['MaxAttempts'] for r in advance['Retry'])
    worst_case = first.estimated_history_events() + 3 * retries_per_iteration * iterations
    assert worst_case < HISTORY_EVENT_LIMIT
