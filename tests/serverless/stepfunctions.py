"""Render the module's Step Functions definition and run it locally, its Lambda Task answered by a Python handler.

The execution itself is done by the npm package aws-local-stepfunctions (see `run_state_machine.mjs`); this module
only renders the Terraform template, starts node, and reads back what every execution of the chain did.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
MODULE_DIR = REPO_ROOT / 'terraform' / 'modules' / 'pydantic-graph-s3'
ASL_TEMPLATE = MODULE_DIR / 'state_machine.asl.json'
RUNNER = HERE / 'run_state_machine.mjs'
BRIDGE = HERE / 'lambda_bridge.py'
NODE_MODULES = HERE / 'node_modules'

TEST_STATE_MACHINE_ARN = 'arn:aws:states:us-east-1:123456789012:stateMachine:pydantic-graph-s3-test'
TEST_VARIABLES: dict[str, Any] = {
    'function_arn': 'arn:aws:lambda:us-east-1:123456789012:function:pydantic-graph-s3-test',
    'busy_wait_seconds': 1,
    'max_iterations_per_execution': 5,
    'task_timeout_seconds': 30,
}

# Terraform template syntax: `${name}` interpolates, `$${` and `%%{` are escapes, `%{` starts a directive.
_TEMPLATE_TOKEN = re.compile(r'\$\$\{|%%\{|\$\{\s*([^}]*?)\s*\}|%\{')
_IDENTIFIER = re.compile(r'[A-Za-z_][A-Za-z0-9_-]*')


class TemplateError(ValueError):
    pass


def template_variables(text: str) -> set[str]:
    """The variable names a template interpolates."""
    return {m.group(1) for m in _TEMPLATE_TOKEN.finditer(text) if m.group(1) is not None}


def render_template(text: str, variables: Mapping[str, Any]) -> str:
    """Render as Terraform's `templatefile` does for templates made only of plain `${name}` interpolations.

    Anything richer (directives, expressions) is refused rather than guessed at, and so is a missing variable, as
    `templatefile` refuses it.
    """

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == '$${':
            return '${'
        if token == '%%{':
            return '%{'
        if token == '%{':
            raise TemplateError('template directives (%{...}) are not supported by this renderer')
        name = match.group(1)
        if not _IDENTIFIER.fullmatch(name):
            raise TemplateError(f'only plain variable interpolations are supported, not ${{{name}}}')
        if name not in variables:
            raise TemplateError(f'vars map does not contain key {name!r}')
        value = variables[name]
        if isinstance(value, bool):
            return 'true' if value else 'false'
        return str(value)

    return _TEMPLATE_TOKEN.sub(substitute, text)


def render_definition(directory: Path, variables: Mapping[str, Any] | None = None) -> Path:
    """Write the state machine definition rendered with `TEST_VARIABLES` (updated by `variables`) to `directory`."""
    rendered = render_template(ASL_TEMPLATE.read_text(), {**TEST_VARIABLES, **(variables or {})})
    # Parsing proves the rendering is JSON, as Step Functions will require of the real one.
    definition = json.loads(rendered)
    path = directory / 'state_machine.rendered.asl.json'
    path.write_text(json.dumps(definition, indent=2))
    return path


def node_executable() -> str | None:
    return shutil.which('node')


def require_node_modules() -> None:
    if not (NODE_MODULES / 'aws-local-stepfunctions').is_dir() or not (NODE_MODULES / 'asl-validator').is_dir():
        raise RuntimeError(f'the npm packages are not installed: run `npm ci` in {HERE}')


@dataclass(frozen=True)
class Execution:
    """One Step Functions execution of a chain: the first, or one started as its continuation."""

    input: Any
    status: str
    output: Any
    error: str | None
    cause: str | None
    continuations: list[Any]
    events: list[dict[str, Any]]

    def states_entered(self) -> list[str]:
        return [e['state'] for e in self.events if e['type'] == 'StateEntered']

    def estimated_history_events(self) -> int:
        """How many events AWS would record for this execution's history, which a Standard workflow caps at 25,000.

        Task states count 5 (entered, scheduled, started, succeeded, exited), each retry 3 more (failed, scheduled,
        started), other states 2 (entered, exited), and the execution 2 (started, and succeeded or failed).
        """
        entered = Counter(e['state_type'] for e in self.events if e['type'] == 'StateEntered')
        retries = sum(1 for e in self.events if e['type'] == 'StateRetried')
        tasks = entered.pop('Task', 0)
        return 2 + 5 * tasks + 3 * retries + 2 * sum(entered.values())


@dataclass(frozen=True)
class ChainResult:
    """Every execution a run needed, in order; the last one decides how the run ended."""

    executions: list[Execution]
    handler_calls: int
    stderr: str = field(repr=False, default='')

    @property
    def final(self) -> Execution:
        return self.executions[-1]

    @property
    def status(self) -> str:
        return self.final.status

    @property
    def output(self) -> Any:
        return self.final.output


def run_state_machine(
    definition_path: Path,
    input: Any,
    handler: str = 'tests.serverless.fake_worker:handler',
    env: Mapping[str, str] | None = None,
    *,
    state_machine_arn: str = TEST_STATE_MACHINE_ARN,
    max_executions: int = 20,
    wait_time_overrides_ms: Mapping[str, int] | None = None,
    retry_interval_overrides_ms: Mapping[str, int | list[int]] | None = None,
    python: list[str] | None = None,
    timeout: float = 120,
) -> ChainResult:
    """Execute the definition at `definition_path` locally, continuation after continuation, until one ends.

    `handler` (`module:function`, importable from the repository root) answers every `lambda:invoke` Task, in one
    Python process kept for the whole chain, run with this interpreter and `env` added to the environment.
    """
    node = node_executable()
    if node is None:
        raise RuntimeError('node is not installed')
    require_node_modules()
    request = {
        'definition_path': str(definition_path),
        'input': input,
        'handler': handler,
        'python': python or [sys.executable, str(BRIDGE)],
        'state_machine_arn': state_machine_arn,
        'max_executions': max_executions,
        'wait_time_overrides_ms': dict(wait_time_overrides_ms or {}),
        'retry_interval_overrides_ms': dict(retry_interval_overrides_ms or {}),
    }
    request_path = definition_path.with_name(definition_path.name + '.request.json')
    request_path.write_text(json.dumps(request))
    python_path = os.pathsep.join(
        p for p in (str(REPO_ROOT), str(REPO_ROOT / 'src'), os.environ.get('PYTHONPATH')) if p
    )
    completed = subprocess.run(
        [node, str(RUNNER), str(request_path)],
        cwd=REPO_ROOT,
        env={**os.environ, 'PYTHONPATH': python_path, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f'run_state_machine.mjs failed ({completed.returncode}):\n{completed.stderr}')
    report = json.loads(completed.stdout)
    executions = [
        Execution(
            input=e['input'],
            status=e['status'],
            output=e['output'],
            error=e['error'],
            cause=e['cause'],
            continuations=e['continuations'],
            events=e['events'],
        )
        for e in report['executions']
    ]
    if executions and executions[-1].continuations:
        raise RuntimeError(f'the run still wanted to continue after {max_executions} executions')
    return ChainResult(executions=executions, handler_calls=report['handler_calls'], stderr=completed.stderr)


def validate_definition(definition_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the asl-validator command line on a rendered definition (ARN and JSONPath checks on)."""
    node = node_executable()
    if node is None:
        raise RuntimeError('node is not installed')
    require_node_modules()
    cli = NODE_MODULES / 'asl-validator' / 'dist' / 'bin' / 'asl-validator.js'
    return subprocess.run(
        [node, str(cli), '--json-path', str(definition_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
