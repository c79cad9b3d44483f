"""The `pydantic-graph-s3` command as a user runs it: a subprocess against the loopback S3, exit codes included."""

from __future__ import annotations as _annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic_graph.persistence.file import FileStatePersistence

from pydantic_graph_s3.cli import ExitCode
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph

from .conftest import S3Bucket
from .support.fault_proxy import fault_proxy

pytestmark = pytest.mark.anyio

COMMAND = str(Path(sys.executable).parent / 'pydantic-graph-s3')
GRAPH = 'pydantic_graph_s3.examples.count_down:count_down_graph'


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def user_env(s3: S3Bucket, **overrides: str) -> dict[str, str]:
    """A user's environment: the worker's variables, AWS pointed at moto, no profile, no instance metadata."""
    env = {
        'PATH': os.environ.get('PATH', ''),
        'HOME': os.environ.get('HOME', '/tmp'),
        'COLUMNS': '200',
        'AWS_ENDPOINT_URL_S3': s3.endpoint.url,
        'AWS_ACCESS_KEY_ID': s3.endpoint.access_key,
        'AWS_SECRET_ACCESS_KEY': s3.endpoint.secret_key,
        'AWS_DEFAULT_REGION': s3.endpoint.region,
        'AWS_CONFIG_FILE': os.devnull,
        'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
        'AWS_EC2_METADATA_DISABLED': 'true',
        'PYDANTIC_GRAPH_S3_BUCKET': s3.bucket,
        'PYDANTIC_GRAPH_S3_PREFIX': 'runs/',
        **overrides,
    }
    return {name: value for name, value in env.items() if value != ''}


async def cli(s3: S3Bucket, *args: str, cwd: Path | None = None, **env: str) -> Result:
    done = await anyio.run_process([COMMAND, *args], env=user_env(s3, **env), check=False, cwd=cwd)
    result = Result(done.returncode, done.stdout.decode(), done.stderr.decode())
    assert 'Traceback' not in result.stderr, result.stderr
    return result


async def ended_run(s3: S3Bucket, run_id: str, counter: int = 2) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(counter), persistence=s3.persistence(run_id))


async def unfinished_run(s3: S3Bucket, run_id: str) -> None:
    await count_down_graph.initialize(CountDown(), state=CountDownState(3), persistence=s3.persistence(run_id))


async def test_list_shows_every_run_with_its_status(s3: S3Bucket) -> None:
    await ended_run(s3, 'done')
    await unfinished_run(s3, 'waiting')
    await s3.put('runs/junk.json', b'{"not": "a list"}')
    await s3.put('runs/nested/other.json', b'[]')

    listed = await cli(s3, 'runs', 'list', '--json')
    assert listed.code == 0, listed.stderr
    runs = {run['run_id']: run for run in listed.json()}
    assert set(runs) == {'done', 'waiting', 'junk'}
    assert (runs['done']['snapshots'], runs['done']['last_status'], runs['done']['ended']) == (4, 'end', True)
    assert (runs['waiting']['snapshots'], runs['waiting']['last_status'], runs['waiting']['ended']) == (
        1,
        'created',
        False,
    )
    assert 'not a snapshot list' in runs['junk']['problem']
    _, etag, _ = await s3.get('runs/done.json')
    assert runs['done']['etag'] == etag

    table = await cli(s3, 'runs', 'list')
    assert table.code == 0
    assert all(name in table.stdout for name in ('done', 'waiting', 'junk', 'last status'))

    # The options win over the environment.
    other = await cli(s3, 'runs', 'list', '--json', '--prefix', 'runs/nested/')
    assert [run['run_id'] for run in other.json()] == ['other']


async def test_show_raw_and_decoded(s3: S3Bucket) -> None:
    await ended_run(s3, 'done', counter=1)

    raw = await cli(s3, 'runs', 'show', 'done')
    assert raw.code == 0, raw.stderr
    assert 'raw JSON' in raw.stdout
    assert raw.stdout.count('CountDown') >= 2 and 'success' in raw.stdout
    assert 'result: 0' in raw.stdout

    decoded = await cli(s3, 'runs', 'show', 'done', '--graph', GRAPH, '--json')
    assert decoded.code == 0, decoded.stderr
    history = decoded.json()
    assert (history['ended'], history['result'], history['decoded_with']) == (True, 0, GRAPH)
    assert [s['state']['counter'] for s in history['snapshots']] == [1, 0, 0]
    assert [s['status'] for s in history['snapshots']] == ['success', 'success', 'end']
    assert all(s['start'] is not None for s in history['snapshots'])
    assert history['snapshots'][0]['duration'] >= 0


async def test_user_mistakes_exit_with_a_message_and_a_code(s3: S3Bucket, tmp_path: Path) -> None:
    await s3.put('runs/corrupt.json', b'[{"kind": "node", "node": {"node_id": "Nope"}, "status": "created"}]')
    cases: list[tuple[list[str], dict[str, str], int, str]] = [
        (['runs', 'show', 'nope'], {}, ExitCode.NOT_FOUND, 'no such object'),
        (['runs', 'list', '--bucket', f'{s3.bucket}-missing'], {}, ExitCode.NOT_FOUND, 'does not exist'),
        (['runs', 'list'], {'AWS_ACCESS_KEY_ID': '', 'AWS_SECRET_ACCESS_KEY': ''}, ExitCode.ACCESS, 'credentials'),
        (['runs', 'show', 'a/b'], {}, ExitCode.USAGE, 'invalid run id'),
        (['runs', 'show', 'x', '--graph', 'no_such_module:graph'], {}, ExitCode.USAGE, 'cannot load'),
        (['runs', 'show', 'x', '--graph', 'pydantic_graph_s3:RunStore'], {}, ExitCode.USAGE, 'not a pydantic_graph'),
        (['runs', 'show', 'corrupt', '--graph', GRAPH], {}, ExitCode.S3_ERROR, 'not a valid snapshot list'),
        (['runs', 'list'], {'PYDANTIC_GRAPH_S3_BUCKET': ''}, ExitCode.USAGE, "Missing option '--bucket'"),
        (['runs', 'prune', '--ended-before', 'last week'], {}, ExitCode.USAGE, 'not an ISO date'),
        (['demo', '--bucket', f'{s3.bucket}-missing'], {}, ExitCode.NOT_FOUND, 'does not exist'),
    ]
    for args, env, code, message in cases:
        result = await cli(s3, *args, cwd=tmp_path, **env)
        assert (result.code, message in result.stderr) == (code, True), (args, result.stderr)


async def test_export_then_import_round_trips_through_a_file(s3: S3Bucket, tmp_path: Path) -> None:
    await ended_run(s3, 'done')
    path = tmp_path / 'done.json'

    exported = await cli(s3, 'runs', 'export', 'done', str(path))
    assert exported.code == 0, exported.stderr
    body, _, _ = await s3.get('runs/done.json')
    assert path.read_bytes() == body
    file_persistence = FileStatePersistence[CountDownState, int](path)
    file_persistence.set_graph_types(count_down_graph)
    assert [s.state.counter for s in await file_persistence.load_all()] == [2, 1, 0, 0]

    again = await cli(s3, 'runs', 'export', 'done', str(path))
    assert (again.code, 'exists' in again.stderr) == (ExitCode.CONFLICT, True)
    assert (await cli(s3, 'runs', 'export', 'done', str(path), '--overwrite')).code == 0

    imported = await cli(s3, 'runs', 'import', str(path), 'copy', '--graph', GRAPH)
    assert imported.code == 0, imported.stderr
    assert (await s3.get('runs/copy.json'))[0] == body

    await unfinished_run(s3, 'busy')
    before = await s3.get('runs/busy.json')
    refused = await cli(s3, 'runs', 'import', str(path), 'busy')
    assert (refused.code, 'already exists' in refused.stderr) == (ExitCode.CONFLICT, True)
    assert await s3.get('runs/busy.json') == before

    (tmp_path / 'bad.json').write_text('{"not": "a list"}')
    bad = await cli(s3, 'runs', 'import', str(tmp_path / 'bad.json'), 'bad')
    assert (bad.code, 'not a pydantic-graph snapshot list' in bad.stderr) == (ExitCode.USAGE, True)


async def test_delete_is_conditional_and_confirmed(s3: S3Bucket) -> None:
    await unfinished_run(s3, 'busy')
    _, etag, _ = await s3.get('runs/busy.json')
    # A worker advances the run after the operator listed it: the ETag they saw no longer matches.
    async with count_down_graph.iter_from_persistence(s3.persistence('busy')) as run:
        await run.next()
    stale = await cli(s3, 'runs', 'delete', 'busy', '--etag', etag, '--yes')
    assert (stale.code, 'changed since it was read' in stale.stderr) == (ExitCode.CONFLICT, True)
    await s3.get('runs/busy.json')  # still there

    # No terminal to say yes on: declined, with its own exit code (it was 1, the code of S3 errors).
    unconfirmed = await cli(s3, 'runs', 'delete', 'busy')
    assert unconfirmed.code == ExitCode.DECLINED
    assert 'NOT ended' in unconfirmed.stderr
    assert 'run busy not deleted: no terminal to confirm on; pass --yes' in unconfirmed.stderr
    await s3.get('runs/busy.json')

    deleted = await cli(s3, 'runs', 'delete', 'busy', '--yes')
    assert deleted.code == 0, deleted.stderr
    assert (await cli(s3, 'runs', 'list', '--json')).json() == []
    gone = await cli(s3, 'runs', 'delete', 'busy', '--yes')
    assert gone.code == ExitCode.NOT_FOUND


async def test_prune_deletes_only_ended_runs_before_the_date(s3: S3Bucket) -> None:
    await ended_run(s3, 'old-1')
    await ended_run(s3, 'old-2')
    await unfinished_run(s3, 'busy')

    past = await cli(s3, 'runs', 'prune', '--ended-before', '2000-01-01', '--json', '--yes')
    assert past.code == 0
    assert [o['deleted'] for o in past.json()] == [False, False, False]

    dry = await cli(s3, 'runs', 'prune', '--ended-before', '2999-01-01', '--dry-run')
    assert dry.code == 0
    assert 'would delete: 2 of 3 runs' in dry.stdout
    assert len((await cli(s3, 'runs', 'list', '--json')).json()) == 3

    pruned = await cli(s3, 'runs', 'prune', '--ended-before', '2999-01-01T00:00:00+00:00', '--json', '--yes')
    assert pruned.code == 0
    outcomes = {o['run']['run_id']: (o['deleted'], o['reason']) for o in pruned.json()}
    assert outcomes == {
        'old-1': (True, 'deleted'),
        'old-2': (True, 'deleted'),
        'busy': (False, 'not ended (last status: created)'),
    }
    assert [run['run_id'] for run in (await cli(s3, 'runs', 'list', '--json')).json()] == ['busy']


async def test_recover_and_check_endpoint_commands(s3: S3Bucket) -> None:
    await unfinished_run(s3, 'stuck')
    claimed = s3.persistence('stuck', reclaim_after=timedelta(minutes=5))
    claimed.set_graph_types(count_down_graph)
    assert await claimed.load_next() is not None

    recovered = await cli(s3, 'runs', 'recover', 'stuck', '--graph', GRAPH)
    assert recovered.code == 0, recovered.stderr
    assert 'recovered stuck: 1 step(s) runnable again: CountDown:' in recovered.stdout  # was a Python list
    (snapshot,) = await claimed.load_all()
    assert getattr(snapshot, 'status', None) == 'created'
    without_graph = await cli(s3, 'runs', 'recover', 'stuck')
    assert (without_graph.code, "needs its graph's types" in without_graph.stderr) == (ExitCode.USAGE, True)

    checked = await cli(s3, 'check-endpoint')
    assert checked.code == 0, checked.stderr
    if s3.name == 'moto':  # moto checks no signatures, so the proxy may strip a signed header
        with fault_proxy(s3.endpoint.url) as ignoring:
            ignoring.strip_headers('If-Match')
            unsafe = await cli(s3, 'check-endpoint', AWS_ENDPOINT_URL_S3=ignoring.url)
        assert (unsafe.code, f'{ignoring.url} ignores If-Match' in unsafe.stderr) == (ExitCode.UNSAFE_ENDPOINT, True)
    assert f'conditional writes honoured at s3://{s3.bucket}/runs/: {s3.endpoint.url}' in checked.stdout


# --- The front door: one line on stderr, the documented exit code, every time (issue #12, #9 item 15) --------

MOTO_ONLY = pytest.mark.parametrize('endpoint_name', ['moto'])  # about the command, not the S3 implementation
UNREACHABLE = 'http://127.0.0.1:9'


def one_error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: '), result.stderr
    return lines[0]


@MOTO_ONLY
async def test_invalid_bucket_names_are_refused_before_any_request(s3: S3Bucket) -> None:
    # The endpoint is unreachable: a request would end in exit 6, not in the usage error.
    cases = [
        (['runs', 'list'], 'Bad_Bucket!', "'Bad_Bucket!'"),
        (['runs', 'show', 'r1'], 'a/b', "'a/b'"),
        (['check-endpoint'], 'x' * 300, '(300 characters)'),
        (['demo'], 'bad[/:]markup', "'bad[/:]markup'"),  # brackets once crashed the error printer
        (['runs', 'export', 'r1', 'r1.json'], '192.168.5.4', 'it is an IP address'),
    ]
    for args, bucket, shown in cases:
        result = await cli(s3, *args, '--bucket', bucket, AWS_ENDPOINT_URL_S3=UNREACHABLE)
        assert result.code == ExitCode.USAGE, (args, bucket, result.stderr)
        assert f'invalid bucket name {shown}' in one_error_line(result) or shown in result.stderr
        assert result.stdout == ''


@MOTO_ONLY
async def test_export_path_mistakes_are_one_line_each(s3: S3Bucket, tmp_path: Path) -> None:
    await ended_run(s3, 'done')
    cases = [
        ([str(tmp_path / 'missing' / 'r.json')], f'folder {tmp_path / "missing"} does not exist: create it first'),
        (['/proc/r.json'], 'cannot write /proc/r.json'),
        ([str(tmp_path)], f'{tmp_path} is a folder: give the path of the file to write'),
        ([str(tmp_path), '--overwrite'], f'{tmp_path} is a folder'),
        (['.', '--overwrite'], '. is a folder'),
    ]
    for args, message in cases:
        result = await cli(s3, 'runs', 'export', 'done', *args, cwd=tmp_path)
        assert (result.code, message in one_error_line(result)) == (ExitCode.USAGE, True), (args, result.stderr)
    assert os.listdir(tmp_path) == []  # no temporary file left behind either


@MOTO_ONLY
async def test_exported_files_follow_the_umask(s3: S3Bucket, tmp_path: Path) -> None:
    await ended_run(s3, 'done')
    for umask, mode in [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)]:
        previous = os.umask(umask)  # inherited by the command
        try:
            result = await cli(s3, 'runs', 'export', 'done', str(tmp_path / f'{umask:o}.json'))
        finally:
            os.umask(previous)
        assert result.code == 0, result.stderr
        assert (tmp_path / f'{umask:o}.json').stat().st_mode & 0o777 == mode


@MOTO_ONLY
async def test_an_unreachable_endpoint_is_one_message(s3: S3Bucket) -> None:
    result = await cli(s3, 'runs', 'list', AWS_ENDPOINT_URL_S3=UNREACHABLE)
    assert result.code == ExitCode.UNREACHABLE
    assert f'{UNREACHABLE} unreachable' in one_error_line(result)  # no "giving up on" log line before it


@MOTO_ONLY
async def test_a_declined_delete_changes_nothing_and_says_so(s3: S3Bucket) -> None:
    await unfinished_run(s3, 'busy')
    before = await s3.get('runs/busy.json')
    for answer in (b'n\n', b'\n', b''):  # no, the default (no), end of input
        result = await cli_on_a_terminal(s3, answer, 'runs', 'delete', 'busy')
        assert result.code == ExitCode.DECLINED, (answer, result.stderr)
        assert 'delete run busy?' in result.stderr and 'run busy not deleted' in result.stderr
        assert 'Aborted' not in result.stderr
    assert await s3.get('runs/busy.json') == before
    confirmed = await cli_on_a_terminal(s3, b'y\n', 'runs', 'delete', 'busy')
    assert confirmed.code == 0, confirmed.stderr


async def cli_on_a_terminal(s3: S3Bucket, typed: bytes, *args: str) -> Result:
    """The command with a terminal as stdin, on which `typed` was typed (then end of input)."""
    controller, terminal = os.openpty()
    os.write(controller, typed + b'\x04')  # Ctrl-D: end of input after the answer
    try:
        done = await anyio.run_process([COMMAND, *args], env=user_env(s3), check=False, stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    result = Result(done.returncode, done.stdout.decode(), done.stderr.decode())
    assert 'Traceback' not in result.stderr, result.stderr
    return result


@MOTO_ONLY
async def test_the_demo_refuses_to_start_an_existing_run_again(s3: S3Bucket) -> None:
    first = await cli(s3, 'demo', '--bucket', s3.bucket, '--run-id', 'r1', '--counter', '1')
    assert first.code == 0, first.stderr
    before = await s3.get('graph-runs/r1.json')
    again = await cli(s3, 'demo', '--bucket', s3.bucket, '--run-id', 'r1', '--counter', '1')
    assert again.code == ExitCode.CONFLICT
    assert 'graph-runs/r1.json: object already exists and was left untouched' in one_error_line(again)
    assert await s3.get('graph-runs/r1.json') == before  # no second start appended


@MOTO_ONLY
async def test_output_details_users_tripped_on(s3: S3Bucket) -> None:
    await s3.put('graph-runs/elsewhere.json', b'[]')
    await s3.put('other/deeper/too.json', b'[]')
    empty = await cli(s3, 'runs', 'list', '--prefix', '')
    assert empty.code == 0 and '(0 runs)' in empty.stdout
    assert 'runs may be under graph-runs/, other/deeper/: pass --prefix' in empty.stderr
    assert '\n\n' not in f'\n{empty.stderr}'  # no stray blank line when stderr is not a terminal

    await ended_run(s3, 'done', counter=1)
    shown = await cli(s3, 'runs', 'show', 'done')
    assert shown.code == 0, shown.stderr
    assert 'state' in shown.stdout and '{"counter":1}' in shown.stdout
    assert ' µs' in shown.stdout or ' ms' in shown.stdout
    assert '0.0 ms' not in shown.stdout

    await unfinished_run(s3, 'stuck')
    claimed = s3.persistence('stuck', reclaim_after=timedelta(minutes=5))
    claimed.set_graph_types(count_down_graph)
    assert (snapshot := await claimed.load_next()) is not None
    recovered = await cli(s3, 'runs', 'recover', 'stuck', '--graph', GRAPH)
    assert recovered.stdout == f'recovered stuck: 1 step(s) runnable again: {snapshot.id}\n'

    usage = await cli(s3, 'runs', 'export', '--help')
    assert 'RUN_ID' in usage.stdout and 'PATH' in usage.stdout and '{run_id}' not in usage.stdout

    checked = await cli(s3, 'check-endpoint', '--json')
    assert checked.code == 0, checked.stderr
    assert checked.json() == {
        'bucket': s3.bucket,
        'prefix': 'runs/',
        'endpoint': s3.endpoint.url,
        'conditional_writes': True,
    }

    # Not a terminal, no COLUMNS: a long URI stays on one line.
    long_id = 'a-run-id-long-enough-to-wrap-at-eighty-columns-' + 'x' * 40
    demo = await cli(s3, 'demo', '--bucket', s3.bucket, '--run-id', long_id, '--counter', '0', COLUMNS='')
    assert demo.code == 0, demo.stderr
    assert f'at s3://{s3.bucket}/graph-runs/{long_id}.json\n' in demo.stdout
    assert re.search(r'│ CountDown:[0-9a-f]{32} ', demo.stdout), demo.stdout  # snapshot ids are not folded either


GRAPH_MODULES = {
    'broken_syntax': ('def graph(:\n', 'SyntaxError'),
    'raises_at_import': ('raise RuntimeError("no database")\n', 'RuntimeError: no database'),
    'exits_at_import': ('import sys\nsys.exit(0)\n', 'SystemExit'),
}


@MOTO_ONLY
async def test_graph_modules_that_fail_to_import_are_one_line(s3: S3Bucket, tmp_path: Path) -> None:
    for module, (source, message) in GRAPH_MODULES.items():
        (tmp_path / f'{module}.py').write_text(source)
        result = await cli(s3, 'runs', 'show', 'x', '--graph', f'{module}:graph', cwd=tmp_path)
        assert result.code == ExitCode.USAGE, (module, result.stderr)  # SystemExit(0) did exit 0, silently
        assert f'--graph: cannot load {module}:graph: {message}' in one_error_line(result)


@MOTO_ONLY
async def test_graph_modules_in_the_current_directory_do_not_shadow_libraries(s3: S3Bucket, tmp_path: Path) -> None:
    await ended_run(s3, 'done', counter=1)
    (tmp_path / 's3transfer.py').write_text('raise SystemExit("the library was shadowed")\n')
    (tmp_path / 'my_graphs.py').write_text(f'from {GRAPH.split(":")[0]} import count_down_graph as graph\n')
    result = await cli(s3, 'runs', 'show', 'done', '--graph', 'my_graphs:graph', '--json', cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert result.json()['decoded_with'] == 'my_graphs:graph'


def command_paths() -> list[list[str]]:
    """Every command the CLI has, as the words a user types: `['runs', 'export']`, `['demo']`."""
    import typer.main

    from pydantic_graph_s3.cli import app

    def walk(command: Any, words: list[str]) -> list[list[str]]:
        subcommands = getattr(command, 'commands', None)
        if subcommands is None:
            return [words]
        return [path for name, sub in sorted(subcommands.items()) for path in walk(sub, [*words, name])]

    return walk(typer.main.get_command(app), [])


async def test_every_usage_line_names_arguments_in_capitals_without_braces() -> None:
    paths = command_paths()
    assert ['runs', 'export'] in paths and ['check-endpoint'] in paths and len(paths) >= 14
    env = {'PATH': os.environ.get('PATH', ''), 'HOME': os.environ.get('HOME', '/tmp'), 'COLUMNS': '200'}
    usages: dict[str, str] = {}

    async def usage_of(words: list[str]) -> None:
        done = await anyio.run_process([COMMAND, *words, '--help'], env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()
        (line,) = [line.strip() for line in done.stdout.decode().splitlines() if line.strip().startswith('Usage:')]
        usages[' '.join(words)] = line

    async with anyio.create_task_group() as group:
        for words in paths:
            group.start_soon(usage_of, words)
    for command, line in usages.items():
        assert re.fullmatch(rf'Usage: pydantic-graph-s3 {command} \[OPTIONS\]( [A-Z][A-Z_]*)*', line), line
    assert usages['runs export'] == 'Usage: pydantic-graph-s3 runs export [OPTIONS] RUN_ID PATH'
    assert usages['runs import'] == 'Usage: pydantic-graph-s3 runs import [OPTIONS] PATH RUN_ID'
    assert usages['runs update-state'] == 'Usage: pydantic-graph-s3 runs update-state [OPTIONS] RUN_ID PATH'
