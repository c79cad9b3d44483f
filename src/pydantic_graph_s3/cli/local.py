"""`local`: an S3 endpoint on 127.0.0.1 that keeps its runs in a directory, to try every command on runs that last."""

from __future__ import annotations as _annotations

import os
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from pydantic_s3_cas.local_s3 import LOCAL_CREDENTIALS, LocalS3Error, local_s3

from . import common
from .app import Command, ExitCode, app, console, errors

__all__ = ('local',)


def _default_data_dir() -> Path:
    base = os.environ.get('XDG_DATA_HOME') or Path.home() / '.local' / 'share'
    return Path(base) / 'pydantic-graph-s3' / 'local-s3'


DEFAULT_DATA_DIR = _default_data_dir()


@app.command(cls=Command)
def local(
    data: Annotated[
        Path,
        typer.Option(
            '--data', file_okay=False, help='Where the objects are kept, across restarts.', show_default=False
        ),
    ] = DEFAULT_DATA_DIR,
    port: Annotated[int, typer.Option('--port', min=1, max=65535, help='The S3 port on 127.0.0.1.')] = 8333,
    bucket: Annotated[str, typer.Option('--bucket', help='The bucket to create (kept if it exists).')] = 'local',
) -> None:
    """Serve S3 on 127.0.0.1, keeping objects in --data across restarts (SeaweedFS); Ctrl-C stops it.

    Default data directory: $XDG_DATA_HOME/pydantic-graph-s3/local-s3 (~/.local/share/...).
    """
    checked = common.checked_bucket(bucket)
    # SIGTERM stops it as Ctrl-C does: through the `finally` that stops the server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with ExitStack() as running:
            with common.spinner(f'starting SeaweedFS on 127.0.0.1:{port}'):
                endpoint = running.enter_context(local_s3(data, port=port, bucket=checked))
            _print_usage(endpoint, checked, data)
            while True:
                signal.pause()
    except LocalS3Error as e:
        common.fail(ExitCode.USAGE, str(e))
    except KeyboardInterrupt:
        errors.print(Text(f'stopped; the objects are kept in {data}'))


def _print_usage(endpoint: str, bucket: str, data: Path) -> None:
    """The endpoint, and the line that points every other command (and the library) at it."""
    variables = {'AWS_ENDPOINT_URL_S3': endpoint, **LOCAL_CREDENTIALS, 'PYDANTIC_GRAPH_S3_BUCKET': bucket}
    console.print(Text(f'local S3 at {endpoint}, bucket {bucket}, objects kept in {data} (Ctrl-C stops it)'))
    console.print('in another shell:')
    console.print(Text('export ' + ' '.join(f'{name}={value}' for name, value in variables.items())))
    console.print(Text('pydantic-graph-s3 demo --bucket ' + bucket))
    sys.stdout.flush()  # read at once by whoever waits for the endpoint on a pipe
