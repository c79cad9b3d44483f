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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
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
    validate_bucket_name,
)

from ..persistence import UnfencedClaimError
from ..runs import RunStore
from .app import ExitCode, errors

__all__ = (
    'add_row',
    'checked_bucket',
    'confirm_or_decline',
    'fail',
    'load_graph',
    'print_json',
    'progress',
    'run',
    'spinner',
    'store',
    'text',
    'time',
    'user_errors',
    'write_text',
)

T = TypeVar('T')


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` on a fresh event loop, turning the errors users cause into a message and an exit code."""
    with user_errors():
        return anyio.run(work)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except (ObjectNotFoundError, BucketNotFoundError) as e:
        fail(ExitCode.NOT_FOUND, str(e))
    except (CredentialsError, AccessDeniedError) as e:
        fail(ExitCode.ACCESS, str(e))
    except (ObjectChangedError, ObjectExistsError, FileExistsError, UnfencedClaimError) as e:
        fail(ExitCode.CONFLICT, str(e))
    except EndpointUnreachableError as e:
        fail(ExitCode.UNREACHABLE, str(e))
    except ConditionalWritesUnsupportedError as e:
        fail(ExitCode.UNSAFE_ENDPOINT, str(e))
    except S3PersistenceError as e:
        fail(ExitCode.S3_ERROR, str(e))
    except ValueError as e:  # an invalid run id or bucket name, or a file that is not a snapshot list
        fail(ExitCode.USAGE, str(e))
    except OSError as e:  # a local path that cannot be written or read: its message names it
        fail(ExitCode.USAGE, e.strerror if e.strerror and e.filename is None else str(e))


def store(bucket: str, prefix: str) -> RunStore:
    checked = checked_bucket(bucket)
    with user_errors():  # a prefix that is not a folder
        return RunStore(checked, prefix)


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


def write_text(path: Path, content: str) -> None:
    try:
        path.write_text(content, encoding='utf-8')
    except OSError as e:
        fail(ExitCode.USAGE, f'cannot write {path}: {e.strerror}')


def print_json(value: Any) -> None:
    sys.stdout.write(pydantic_core.to_json(value, indent=2).decode() + '\n')


def add_row(table: Table, *cells: str) -> None:
    """Cells are shown as they are: a run id, state or reason with brackets is not rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def text(value: object) -> str:
    return '' if value is None else str(value)


def time(value: datetime | None) -> str:
    return '' if value is None else value.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')
