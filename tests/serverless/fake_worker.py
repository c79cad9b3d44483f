"""A deterministic stand-in for the GraphWorker Lambda handler, scripted per run.

A test writes `{FAKE_WORKER_DIR}/{run_id}.json` as `{"script": [...]}`; each `advance` consumes the next entry:
`running`, `busy`, `done` and `failed` are answered as StepResults (`paused`, a status the state machine does not
know, too), `throttle` raises what Step Functions reports
as Lambda.TooManyRequestsException, and `crash` raises like a failing function. The state lives in files, not in
the process, as the real worker's lives in S3.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUSES = frozenset({'running', 'busy', 'done', 'failed', 'paused'})


class ThrottledError(Exception):
    states_error = 'Lambda.TooManyRequestsException'


class WorkerCrashedError(Exception):
    pass


def scenario_path(run_id: str) -> Path:
    return Path(os.environ['FAKE_WORKER_DIR']) / f'{run_id}.json'


def write_scenario(directory: Path, run_id: str, script: list[str]) -> None:
    (directory / f'{run_id}.json').write_text(json.dumps({'script': script, 'position': 0, 'steps': 0, 'events': []}))


def read_scenario(directory: Path, run_id: str) -> dict[str, Any]:
    scenario: dict[str, Any] = json.loads((directory / f'{run_id}.json').read_text())
    return scenario


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get('action') != 'advance':
        raise ValueError(f'the fake worker only advances runs, not {event.get("action")!r}')
    run_id = event['run_id']
    path = scenario_path(run_id)
    scenario = json.loads(path.read_text())
    scenario['events'].append(event)
    position = scenario['position']
    if position >= len(scenario['script']):
        raise WorkerCrashedError(f'run {run_id} was advanced past the end of its script')
    entry = scenario['script'][position]
    scenario['position'] = position + 1
    if entry in {'running', 'done'}:
        scenario['steps'] += 1
    path.write_text(json.dumps(scenario))

    if entry == 'throttle':
        raise ThrottledError('Rate exceeded')
    if entry == 'crash':
        raise WorkerCrashedError('the worker crashed mid-step')
    if entry not in STATUSES:
        raise ValueError(f'unknown script entry {entry!r}')
    return {
        'run_id': run_id,
        'status': entry,
        'steps': scenario['steps'],
        'next_node': None if entry in {'done', 'failed'} else 'CountDown',
        'output': scenario['steps'] if entry == 'done' else None,
        'error': 'ValueError: the graph raised' if entry == 'failed' else None,
    }
