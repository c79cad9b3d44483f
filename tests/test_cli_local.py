"""`pydantic-graph-s3 local`, end to end: a run the demo stored is still listed after the server restarts."""

from __future__ import annotations as _annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic_graph_s3.cli import ExitCode
from pydantic_s3_cas.local_s3 import LOCAL_CREDENTIALS

COMMAND = str(Path(sys.executable).parent / 'pydantic-graph-s3')


def local_env() -> dict[str, str]:
    """A user's shell after the `export` line `local` prints (the endpoint comes from --endpoint-url here)."""
    return {
        'PATH': os.environ.get('PATH', ''),
        'HOME': os.environ.get('HOME', '/tmp'),
        'AWS_CONFIG_FILE': os.devnull,
        'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
        'AWS_EC2_METADATA_DISABLED': 'true',
        **LOCAL_CREDENTIALS,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def weed_processes(data: Path) -> list[int]:
    """The processes serving `data`, found by their command line."""
    found = []
    for entry in Path('/proc').iterdir():
        try:
            if entry.name.isdigit() and f'-dir={data}'.encode() in (entry / 'cmdline').read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


@contextmanager
def local_server(data: Path, stop: signal.Signals) -> Iterator[str]:
    """Run `local` until it prints its endpoint; yield it; stop it with `stop`, which must end it cleanly."""
    port = free_port()
    args = [COMMAND, 'local', '--data', str(data), '--port', str(port), '--bucket', 'try']
    process = subprocess.Popen(args, env=local_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        printed = [process.stdout.readline().decode() for _ in range(3)]
        assert f'local S3 at http://127.0.0.1:{port}, bucket try' in printed[0], printed
        assert f'export AWS_ENDPOINT_URL_S3=http://127.0.0.1:{port} ' in printed[2], printed
        assert weed_processes(data)
        yield f'http://127.0.0.1:{port}'
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=60)  # a safety net: stopping takes about a second
        assert (process.returncode, stderr.decode().strip()) == (0, f'stopped; the objects are kept in {data}')
        assert weed_processes(data) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([COMMAND, *args], env=local_env(), capture_output=True, text=True, check=False)
    assert 'Traceback' not in done.stderr, done.stderr
    return done


def test_a_run_on_the_local_s3_outlives_the_server(tmp_path: Path) -> None:
    data = tmp_path / 'data'
    with local_server(data, signal.SIGTERM) as endpoint:
        demo = cli('--endpoint-url', endpoint, 'demo', '--bucket', 'try', '--run-id', 'kept', '--counter', '1')
        assert demo.returncode == 0, demo.stderr
    with local_server(data, signal.SIGINT) as endpoint:  # Ctrl-C
        listed = cli('runs', 'list', '--bucket', 'try', '--prefix', 'graph-runs/', '--json', '--endpoint-url', endpoint)
        assert listed.returncode == 0, listed.stderr
        assert [(run['run_id'], run['ended']) for run in json.loads(listed.stdout)] == [('kept', True)]


def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        port = taken.getsockname()[1]
        result = cli('local', '--data', str(tmp_path), '--port', str(port))
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.startswith(f'error: port {port} on 127.0.0.1 is taken') and result.stderr.count('\n') == 1
    assert 'pass --port' in result.stderr
    assert list(tmp_path.iterdir()) == []
