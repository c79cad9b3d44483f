"""The command as an operator meets it: true messages, care with data, progress, ids to paste, a careful demo.

Each command runs as a subprocess (about a second of imports each), so the cases of a test run concurrently.
"""

from __future__ import annotations as _annotations

import json
import os
import select
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest

from pydantic_graph_s3.cli import ExitCode
from pydantic_graph_s3.examples.count_down import count_down_graph

from .conftest import S3Bucket
from .test_cli import (
    COMMAND,
    GRAPH,
    MOTO_ONLY,
    UNREACHABLE,
    Result,
    cli,
    cli_on_a_terminal,
    ended_run,
    one_error_line,
    unfinished_run,
    user_env,
)

pytestmark = [pytest.mark.anyio, MOTO_ONLY]


async def together(*calls: Callable[[], Awaitable[Result]]) -> list[Result]:
    """Run the commands at once (each is a subprocess); their results in order."""
    results: list[Result | None] = [None] * len(calls)

    async def one(index: int) -> None:
        results[index] = await calls[index]()

    async with anyio.create_task_group() as group:
        for index in range(len(calls)):
            group.start_soon(one, index)
    return [result for result in results if result is not None]


def run(s3: S3Bucket, *args: str, **env: str) -> Callable[[], Awaitable[Result]]:
    return lambda: cli(s3, *args, cwd=None, **env)


async def test_messages_say_what_is_true(s3: S3Bucket, tmp_path: Path) -> None:
    await ended_run(s3, 'done', counter=1)
    await s3.put('runs/junk.json', b'not json at all')
    (tmp_path / 'empty.json').write_bytes(b'')
    (tmp_path / 'zip.json').write_bytes(b'PK\x03\x04 not json')
    (tmp_path / 'state.json').write_text('{"counter": 3}')
    long_id = 'i' * 250
    junk_before = await s3.get('runs/junk.json')

    recovered, updated, exported, deleted, empty, zipped, too_long = await together(
        run(s3, 'runs', 'recover', 'nosuchrun', '--graph', GRAPH),
        run(s3, 'runs', 'update-state', 'done', str(tmp_path / 'state.json'), '--graph', GRAPH),
        run(s3, 'runs', 'export', 'done', str(tmp_path / 'done-export.json')),
        run(s3, 'runs', 'delete', 'junk'),
        run(s3, 'runs', 'import', str(tmp_path / 'empty.json'), 'fresh'),
        run(s3, 'runs', 'import', str(tmp_path / 'zip.json'), 'fresh'),
        run(s3, 'runs', 'show', long_id),
    )
    assert recovered.code == ExitCode.NOT_FOUND
    assert 'no such object' in one_error_line(recovered)
    assert updated.code == ExitCode.CONFLICT
    assert 'fork' in one_error_line(updated) and 'rollback' not in updated.stderr
    size = (tmp_path / 'done-export.json').stat().st_size
    assert exported.code == 0 and f'({size} B)' in exported.stdout, exported.stdout
    assert deleted.code == ExitCode.DECLINED  # no terminal: nothing deleted
    assert deleted.stderr.startswith('run junk: unreadable (') and 'None' not in deleted.stderr, deleted.stderr
    assert await s3.get('runs/junk.json') == junk_before
    for refused in (empty, zipped):
        assert refused.code == ExitCode.USAGE
        assert 'is not JSON' in one_error_line(refused)
    assert 'it is empty' in empty.stderr
    assert too_long.code == ExitCode.USAGE
    assert '(250 characters)' in one_error_line(too_long)
    assert 'fresh' not in [run['run_id'] for run in (await cli(s3, 'runs', 'list', '--json')).json()]


async def test_rolled_back_snapshots_show_as_superseded(s3: S3Bucket) -> None:
    await unfinished_run(s3, 'busy')
    persistence = s3.persistence('busy')
    persistence.set_graph_types(count_down_graph)
    first = (await persistence.load_all())[0].id
    rolled = await cli(s3, 'runs', 'rollback', 'busy', '--to', first, '--graph', GRAPH)
    assert rolled.code == 0, rolled.stderr

    table, as_json = await together(run(s3, 'runs', 'show', 'busy'), run(s3, 'runs', 'show', 'busy', '--json'))
    rows = as_json.json()['snapshots']
    assert [(row['status'], row['superseded']) for row in rows] == [('error', True), ('created', False)]
    assert 'superseded' in table.stdout and ' error ' not in table.stdout


class NotS3(BaseHTTPRequestHandler):
    """A web server: every path is a page."""

    def do_GET(self) -> None:
        self._page()

    def do_PUT(self) -> None:
        self._page()

    def do_HEAD(self) -> None:
        self._page()

    def _page(self) -> None:
        body = b'<html>not S3</html>'
        self.send_response(404)
        self.send_header('Content-Type', 'text/html')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def web_server() -> Iterator[str]:
    server = ThreadingHTTPServer(('127.0.0.1', 0), NotS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()


async def test_an_endpoint_that_is_not_s3_is_one_line(s3: S3Bucket) -> None:
    with web_server() as url:
        results = await together(
            run(s3, 'runs', 'list', AWS_ENDPOINT_URL_S3=url),
            run(s3, '--endpoint-url', url, 'runs', 'show', 'x'),
            run(s3, 'runs', 'stats', '--endpoint-url', url),
            run(s3, 'runs', 'recover', 'x', '--graph', GRAPH, '--endpoint-url', url),
            run(s3, 'check-endpoint', '--endpoint-url', url),
            run(s3, 'demo', '--bucket', s3.bucket, '--endpoint-url', url),
        )
    for result in results:
        assert result.code == ExitCode.UNREACHABLE, result.stderr
        assert f'{url} is not an S3 endpoint: it answered HTTP 404 Not Found (text/html)' in one_error_line(result)


async def test_data_is_changed_only_when_asked(s3: S3Bucket, tmp_path: Path) -> None:
    await ended_run(s3, 'old')
    page, export = tmp_path / 'page.html', tmp_path / 'old.json'
    page.write_text('mine')
    export.write_text('mine too')
    cutoff = '2999-01-01'

    html, exported, pruned, dry, slashed = await together(
        run(s3, 'runs', 'show', 'old', '--html', str(page)),
        run(s3, 'runs', 'export', 'old', str(export)),
        run(s3, 'runs', 'prune', '--ended-before', cutoff),
        run(s3, 'runs', 'prune', '--ended-before', cutoff, '--dry-run'),
        run(s3, 'runs', 'list', '--prefix', '/runs/'),
    )
    for refused in (html, exported):
        assert refused.code == ExitCode.CONFLICT
        assert '--overwrite' in one_error_line(refused)
    assert (page.read_text(), export.read_text()) == ('mine', 'mine too')
    assert pruned.code == ExitCode.DECLINED
    assert pruned.stderr == 'nothing pruned: no terminal to confirm on; pass --yes to confirm\n'
    assert dry.code == 0 and 'would delete: 1 of 1 runs' in dry.stdout
    assert slashed.code == ExitCode.USAGE
    assert 'pass --prefix runs/' in one_error_line(slashed)
    assert [run['run_id'] for run in (await cli(s3, 'runs', 'list', '--json')).json()] == ['old']

    replaced = await cli(s3, 'runs', 'show', 'old', '--html', str(page), '--overwrite')
    assert replaced.code == 0 and page.read_text().startswith('<!'), replaced.stderr
    declined = await cli_on_a_terminal(s3, b'n\n', 'runs', 'prune', '--ended-before', cutoff)
    assert declined.code == ExitCode.DECLINED and 'ended before 2999-01-01' in declined.stderr
    confirmed = await cli_on_a_terminal(s3, b'y\n', 'runs', 'prune', '--ended-before', cutoff)
    assert confirmed.code == 0 and 'deleted: 1 of 1 runs' in confirmed.stdout, confirmed.stderr


async def test_a_wait_shows_a_spinner_only_on_a_terminal(s3: S3Bucket) -> None:
    shown, demo = await together(
        lambda: stderr_on_a_terminal(s3, 'runs', 'show', 'x'),
        lambda: stderr_on_a_terminal(s3, 'demo', '--bucket', s3.bucket),
    )
    for result in (shown, demo):
        assert result.code == ExitCode.UNREACHABLE
        assert 'waiting for S3' in result.stderr and 'unreachable' in result.stderr, result.stderr
    assert 'waiting for S3' not in demo.stdout
    # Off a terminal, the error line alone (test_cli's test_an_unreachable_endpoint_is_one_message).


async def stderr_on_a_terminal(s3: S3Bucket, *args: str) -> Result:
    """The command against an unreachable endpoint, its stderr a terminal (what was drawn on it: `stderr`)."""
    controller, terminal = os.openpty()
    try:
        env = user_env(s3, AWS_ENDPOINT_URL_S3=UNREACHABLE, TERM='xterm')
        done = await anyio.run_process([COMMAND, *args], env=env, check=False, stderr=terminal)
        drawn = _read_available(controller)
    finally:
        os.close(terminal)
        os.close(controller)
    return Result(done.returncode, done.stdout.decode(), drawn)


def _read_available(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b''.join(chunks).decode(errors='replace')


async def test_the_demo_checks_its_arguments_before_it_starts(s3: S3Bucket, tmp_path: Path) -> None:
    no_moto = tmp_path / 'without-embedded'
    (no_moto / 'moto').mkdir(parents=True)
    (no_moto / 'moto' / '__init__.py').write_text('raise ImportError("No module named moto")\n')
    bad_id, bad_prefix, slashed, without_moto = await together(
        run(s3, 'demo', '--run-id', 'a/b'),
        run(s3, 'demo', '--prefix', 'nope'),
        run(s3, 'demo', '--prefix', '/graph-runs/'),
        run(s3, 'demo', PYTHONPATH=str(no_moto)),
    )
    for refused in (bad_id, bad_prefix, slashed, without_moto):
        assert refused.code == ExitCode.USAGE
        assert refused.stdout == ''  # nothing started, no key printed
        one_error_line(refused)
    assert 'invalid run id' in bad_id.stderr and 'invalid prefix' in bad_prefix.stderr
    assert "pip install 'pydantic-graph-s3[embedded]'" in without_moto.stderr
    assert 'pydantic-s3-cas' not in without_moto.stderr


async def test_snapshot_ids_can_be_pasted(s3: S3Bucket) -> None:
    await ended_run(s3, 'src', counter=2)
    ids = [row['id'] for row in (await cli(s3, 'runs', 'show', 'src', '--json')).json()['snapshots']]
    assert [snapshot.split(':')[0] for snapshot in ids] == ['CountDown'] * 3 + ['end']
    start = ids[1][: len('CountDown:') + 8]

    narrow, wide, one, forked, ambiguous = await together(
        run(s3, 'runs', 'show', 'src', COLUMNS='80'),
        run(s3, 'runs', 'show', 'src', '--wide', COLUMNS='80'),
        run(s3, 'runs', 'show', 'src', '--snapshot', start),
        run(s3, 'runs', 'fork', 'src', '--at', start, '--to', 'copy', '--graph', GRAPH),
        run(s3, 'runs', 'fork', 'src', '--at', 'CountDown:', '--to', 'never', '--graph', GRAPH),
    )
    assert narrow.code == 0, narrow.stderr
    rows = [line for line in narrow.stdout.splitlines() if line.startswith(('│ CountDown:', '│ end:'))]
    cells = [row.split('│')[1].strip() for row in rows]
    assert len(cells) == len(ids), narrow.stdout  # one line each: never folded
    for cell, snapshot in zip(cells, ids, strict=True):
        assert len(cell) <= 24 and cell.endswith('…') and snapshot.startswith(cell[:-1]), (cell, snapshot)
    assert all(snapshot in wide.stdout for snapshot in ids)
    assert json.loads(one.stdout)['id'] == ids[1]
    assert forked.code == 0 and f'forked src at {ids[1]} as copy' in forked.stdout, forked.stderr
    assert ambiguous.code == ExitCode.USAGE
    assert 'starts 3 snapshot ids of run src' in one_error_line(ambiguous) and 'give more of the id' in ambiguous.stderr
    assert 'never' not in [run['run_id'] for run in (await cli(s3, 'runs', 'list', '--json')).json()]
