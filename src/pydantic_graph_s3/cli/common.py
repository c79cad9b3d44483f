"""What the commands share: running async work with user errors turned into one line and an exit code,
the run store, graph loading, confirmation, progress, and the small formatting helpers of tables and JSON.

User mistakes (a missing or invalid bucket, missing or rejected credentials, an unknown run, a run changed
meanwhile, a path that cannot be written, a `--graph` that cannot be imported) end with one line on stderr and an
exit code from `ExitCode`, never a traceback. Error text is never read as rich markup: it may hold brackets.
"""

from __future__ import annotations as _annotations

import importlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import anyio
import pydantic_core
import typer
from pydantic_graph.graph import Graph
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pydantic_s3_cas import (
    AccessDeniedError,
    BucketNotFoundError,
    ConditionalWritesUnsupportedError,
    CredentialsError,
    EndpointUnreachableError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    S3PersistenceError,
    shortened,
    validate_bucket_name,
)

from .._messages import listed
from ..persistence import UnfencedClaimError
from ..runs import RunStore
from .app import ExitCode, errors

__all__ = (
    'add_row',
    'checked_bucket',
    'checked_prefix',
    'confirm_or_decline',
    'fail',
    'load_graph',
    'print_json',
    'progress',
    'run',
    'snapshot_id',
    'spinner',
    'store',
    'text',
    'time',
    'user_errors',
)

T = TypeVar('T')


def run(work: Callable[[], Awaitable[T]], *, waiting: str | None = 'waiting for S3') -> T:
    """Run `work` on a fresh event loop, turning the errors users cause into a message and an exit code.

    On a terminal, a spinner says what it waits for (`waiting`; `None` for work that shows a progress of its own).
    Work done by concurrent tasks fails with an exception group: its first error is the one reported.
    """
    with user_errors(), spinner(waiting) if waiting is not None else nullcontext():
        try:
            return anyio.run(work)
        except ExceptionGroup as group:
            raise _first_error(group) from group


def _first_error(group: ExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, ExceptionGroup) else first


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except (ObjectNotFoundError, BucketNotFoundError) as e:
        _fail_if_not_s3()
        fail(ExitCode.NOT_FOUND, str(e))
    except (CredentialsError, AccessDeniedError) as e:
        fail(ExitCode.ACCESS, str(e))
    except (ObjectChangedError, ObjectExistsError, FileExistsError, UnfencedClaimError) as e:
        fail(ExitCode.CONFLICT, str(e))
    except EndpointUnreachableError as e:
        fail(ExitCode.UNREACHABLE, str(e))
    except ConditionalWritesUnsupportedError as e:
        _fail_if_not_s3()
        fail(ExitCode.UNSAFE_ENDPOINT, str(e))
    except S3PersistenceError as e:
        _fail_if_not_s3()
        fail(ExitCode.S3_ERROR, str(e))
    except ValueError as e:  # an invalid run id or bucket name, or a file that is not a snapshot list
        fail(ExitCode.USAGE, str(e))
    except OSError as e:  # a local path that cannot be written or read: its message names it
        fail(ExitCode.USAGE, e.strerror if e.strerror and e.filename is None else str(e))


def _fail_if_not_s3() -> None:
    """An error that may be an endpoint which is not S3 at all (a web server answers 404 to any key): say so.

    Only a configured endpoint is asked (AWS itself is S3), and only once something failed: one GET of its root,
    whose answer an S3 server writes in XML (a bucket listing or an error).
    """
    endpoint = os.environ.get('AWS_ENDPOINT_URL_S3') or os.environ.get('AWS_ENDPOINT_URL')
    if endpoint is None:
        return
    answer = _answer_if_not_s3(endpoint)
    if answer is not None:
        fail(
            ExitCode.UNREACHABLE,
            f'{endpoint} is not an S3 endpoint: it answered {answer}. Check --endpoint-url or AWS_ENDPOINT_URL_S3',
        )


def _answer_if_not_s3(endpoint: str) -> str | None:
    """How `endpoint` answered a GET of its root, when that is not S3's XML; `None` for S3, or no answer at all."""
    request = urllib.request.Request(endpoint.rstrip('/') + '/', method='GET')
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, reason, headers, body = response.status, response.reason, response.headers, response.read(4096)
    except urllib.error.HTTPError as e:
        status, reason, headers, body = e.code, e.reason, e.headers, e.read(4096)
    except (OSError, ValueError):  # unreachable now, or not a URL: the error at hand says what it says
        return None
    if b'<?xml' in body[:100] or 'x-amz-request-id' in headers:
        return None
    kind = headers.get('Content-Type') or 'no content type'
    return shortened(f'HTTP {status} {reason} ({kind})')


def store(bucket: str, prefix: str) -> RunStore:
    checked = checked_bucket(bucket)
    checked_prefix(prefix)
    with user_errors():  # a prefix that is not a folder
        return RunStore(checked, prefix)


def snapshot_id(ids: list[str], run_id: str, given: str) -> str:
    """The one of run `run_id`'s snapshot `ids` that `given` names: itself, or the only id it is a start of.

    An ambiguous start is a usage error (exit 2) listing the ids it starts; one that starts none is passed on as
    it is, for the command to say the run has no such snapshot.
    """
    if given in ids:
        return given
    matches = [snapshot for snapshot in ids if snapshot.startswith(given)]
    if len(matches) > 1:
        fail(
            ExitCode.USAGE,
            f'{shortened(given)} starts {len(matches)} snapshot ids of run {run_id} ({listed(matches, limit=3)}): '
            'give more of the id',
        )
    return matches[0] if matches else given


def checked_prefix(prefix: str) -> str:
    """Refuse a prefix with a leading `/`: S3 keys do not start with one, so it would find no run, silently."""
    if prefix.startswith('/'):
        shown, meant = shortened(prefix), shortened(prefix.lstrip('/'))
        fail(ExitCode.USAGE, f'prefix {shown} starts with "/", as S3 keys do not: pass --prefix {meant}')
    return prefix


def checked_bucket(bucket: str) -> str:
    """The bucket name, checked before any request (the same rules as the library's)."""
    if not bucket:
        fail(ExitCode.USAGE, 'no bucket: pass --bucket or set PYDANTIC_GRAPH_S3_BUCKET')
    with user_errors():
        return validate_bucket_name(bucket)


def fail(code: ExitCode, message: str) -> NoReturn:
    """One line on stderr, then exit with `code`; `message` is shown as it is, never parsed as markup."""
    errors.print(Text.assemble(('error:', 'red'), ' ', ' '.join(message.split('\n'))))
    raise typer.Exit(code)


def confirm_or_decline(question: str, *, declined: str) -> None:
    """Ask on the terminal; a no, or no terminal to ask on, ends the command with `ExitCode.DECLINED`."""
    if not sys.stdin.isatty():
        _declined(f'{declined}: no terminal to confirm on; pass --yes to confirm')
    try:
        confirmed = typer.confirm(question, default=False, err=True)
    except typer.Abort:  # end of input (Ctrl-D) or Ctrl-C at the prompt
        confirmed = False
    if not confirmed:
        _declined(declined)


def _declined(message: str) -> NoReturn:
    errors.print(Text(message))
    raise typer.Exit(ExitCode.DECLINED)


def load_graph(spec: str | None) -> Graph[Any, Any, Any] | None:
    """The graph named by `module:attribute`; the module is found on the path, then in the current directory.

    The current directory comes last on `sys.path`, so a file there named like a library the command uses
    (`s3transfer.py`) does not replace it. Whatever importing the module raises, even `SystemExit`, is a usage
    error with one line on stderr.
    """
    if spec is None:
        return None
    module_name, _, attribute = spec.partition(':')
    if not module_name or not attribute:
        fail(ExitCode.USAGE, f'--graph {spec!r} is not module:attribute')
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        graph = getattr(importlib.import_module(module_name), attribute)
    except (Exception, SystemExit) as e:
        first_line = str(e).splitlines()[0] if str(e) else ''
        fail(ExitCode.USAGE, f'--graph: cannot load {spec}: {type(e).__name__}: {first_line}')
    if not isinstance(graph, Graph):
        fail(ExitCode.USAGE, f'--graph: {spec} is a {type(graph).__name__}, not a pydantic_graph.Graph')
    return graph


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """A spinner saying what the command waits for, on stderr, only on a terminal (nothing is left behind)."""
    if not errors.is_terminal:
        yield
        return
    with errors.status(f'{description}...'):
        yield


@contextmanager
def progress(description: str) -> Iterator[Callable[[], None]]:
    """A spinner with a count on stderr (drawn only on a terminal), advanced once per run."""
    columns = (SpinnerColumn(), TextColumn('{task.description}: {task.completed} runs'), TimeElapsedColumn())
    # Off a terminal it would draw nothing but leave a blank line on stderr.
    with Progress(*columns, console=errors, transient=True, disable=not errors.is_terminal) as shown:
        task = shown.add_task(description, total=None)
        yield lambda: shown.advance(task)


def print_json(value: Any) -> None:
    sys.stdout.write(pydantic_core.to_json(value, indent=2).decode() + '\n')


def add_row(table: Table, *cells: str) -> None:
    """Cells are shown as they are: a run id, state or reason with brackets is not rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def text(value: object) -> str:
    return '' if value is None else str(value)


def time(value: datetime | None) -> str:
    return '' if value is None else value.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')
