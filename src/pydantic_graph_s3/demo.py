"""The demo: pydantic-graph's count-down, one step per simulated serverless invocation, stored in S3.

Each step builds a fresh `S3StatePersistence`, as a separate Lambda invocation would, and the run's history is
shown at the end. With no bucket given it runs against the embedded S3 (moto's server on 127.0.0.1).
"""

from __future__ import annotations as _annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic_core import to_json
from pydantic_graph import End
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pydantic_s3_cas import ObjectExistsError, shared_client
from pydantic_s3_cas.embedded import embedded_s3

from .examples.count_down import count_down_graph, run_node, start_run
from .persistence import S3StatePersistence
from .runs import format_duration

__all__ = ('DemoOptions', 'run_demo')

EMBEDDED_BUCKET = 'pydantic-graph-s3-demo'
_WAITING = Console(stderr=True)
"""Spinners while the demo waits go to stderr, drawn only on a terminal: the output stays the demo's."""


@dataclass(frozen=True)
class DemoOptions:
    bucket: str | None = None
    """A real bucket (through the standard AWS configuration); `None` runs on the embedded S3."""
    prefix: str = 'graph-runs/'
    counter: int = 5
    run_id: str | None = None


def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo to the end and print its history; return the run's output."""
    run_id = options.run_id or f'demo-{time.strftime("%Y%m%dT%H%M%S")}-{secrets.token_hex(3)}'
    if options.bucket is not None:
        return anyio.run(_advance_to_end, options.bucket, options.prefix, run_id, options.counter, console)
    with _embedded_environment(console) as bucket:
        return anyio.run(_advance_to_end, bucket, options.prefix, run_id, options.counter, console)


@contextmanager
def _embedded_environment(console: Console) -> Iterator[str]:
    with ExitStack() as stack:
        with _WAITING.status('starting the embedded S3 (moto server on 127.0.0.1)...'):
            endpoint = stack.enter_context(embedded_s3())
        # The demo then configures nothing in code: the library finds the endpoint as it would find AWS.
        stack.enter_context(
            _environment(
                AWS_ENDPOINT_URL_S3=endpoint,
                AWS_ACCESS_KEY_ID='demo',
                AWS_SECRET_ACCESS_KEY='demo',
                AWS_DEFAULT_REGION='us-east-1',
            )
        )
        console.print(Text.assemble('embedded S3 at ', (endpoint, 'bold'), ', bucket ', (EMBEDDED_BUCKET, 'bold')))
        anyio.run(_create_bucket, EMBEDDED_BUCKET)
        yield EMBEDDED_BUCKET


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _create_bucket(bucket: str) -> None:
    client = await shared_client()
    await client.create_bucket(Bucket=bucket)


async def _advance_to_end(bucket: str, prefix: str, run_id: str, counter: int, console: Console) -> int:
    requests = await _count_requests()
    console.print(Text.assemble('run ', (run_id, 'bold'), f' at s3://{bucket}/{prefix}{run_id}.json'))
    with _WAITING.status('waiting for S3...'):
        created = await start_run(run_id, bucket=bucket, prefix=prefix, counter=counter)
    if not created:
        # Left as it was: the demo starts runs, it does not add a second start to one.
        raise ObjectExistsError(bucket, f'{prefix}{run_id}.json')
    console.print(f'  started: CountDown, counter={counter} ({requests.pop()} requests)')

    step = 0
    while True:
        step += 1
        started = time.perf_counter()
        node = await run_node(run_id, bucket=bucket, prefix=prefix)
        elapsed = (time.perf_counter() - started) * 1000
        shown = f'End({node.data})' if isinstance(node, End) else f'{type(node).__name__}()'
        console.print(f'  step {step}: fresh persistence -> next {shown}  {elapsed:.0f} ms, {requests.pop()} requests')
        if isinstance(node, End):
            break

    persistence: S3StatePersistence[Any, int] = S3StatePersistence.for_run(run_id, bucket=bucket, prefix=prefix)
    persistence.set_graph_types(count_down_graph)
    console.print(_history_table(await persistence.load_all()))
    return node.data


@dataclass(eq=False)  # botocore keys handlers by hash
class _RequestCounter:
    count: int = 0

    def __call__(self, **_: Any) -> None:
        self.count += 1

    def pop(self) -> int:
        count, self.count = self.count, 0
        return count


async def _count_requests() -> _RequestCounter:
    counter = _RequestCounter()
    (await shared_client()).meta.events.register('before-send.s3', counter)
    return counter


def _history_table(history: list[Any]) -> Table:
    table = Table(title='run history (from S3)')
    table.add_column('snapshot id', overflow='fold')
    for column in ('node', 'state', 'status', 'duration'):
        table.add_column(column)
    for snapshot in history:
        if isinstance(snapshot, NodeSnapshot):
            node = type(snapshot.node).__name__
            state = to_json(snapshot.state).decode()
            table.add_row(*map(Text, (snapshot.id, node, state, snapshot.status, format_duration(snapshot.duration))))
        elif isinstance(snapshot, EndSnapshot):
            end = f'End({snapshot.result.data!r})'
            table.add_row(*map(Text, (snapshot.id, end, to_json(snapshot.state).decode(), 'end', '')))
    return table
