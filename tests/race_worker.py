"""A worker process for the race tests: advances one run step by step until it ends, racing its peers.

Each node execution appends `counter pid` to a log file (O_APPEND writes of one short line are atomic), so the
test can check that every step's node ran exactly once across all workers.

The race is made certain by construction, not left to scheduling luck (on a busy machine one worker may
otherwise win every step):
- a node does not return until another worker has been turned away from the run while it held it
  (`RACE_LOG.busy` gets a `pid` line per refusal), so every step is contended;
- a worker that ran a node does not try again until another worker has run one, so no worker runs them all.
Both waits need at least three workers: while one holds a node and one defers, a third must be trying.

Usage (credentials from the environment, as in a deployed worker):
    RACE_LOG=PATH python -m tests.race_worker ENDPOINT_URL BUCKET RUN_ID
"""

from __future__ import annotations as _annotations

import asyncio
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.exceptions import GraphNodeStatusError, GraphRuntimeError
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import EndSnapshot

from pydantic_graph_s3 import ClientSettings, RetryPolicy, S3StatePersistence

LOG_PATH = os.environ.get('RACE_LOG', '')
BUSY_LOG_PATH = f'{LOG_PATH}.busy'
POLL_SECONDS = 0.005


@dataclass
class RaceState:
    counter: int
    pad: str = ''
    """Bytes carried by every snapshot: with a few KB, the racing workers also race to seal segments."""


@dataclass
class Step(BaseNode[RaceState, None, int]):
    async def run(self, ctx: GraphRunContext[RaceState]) -> Step | End[int]:
        refusals_before = len(_lines(BUSY_LOG_PATH))
        _append(LOG_PATH, f'{ctx.state.counter} {os.getpid()}')
        await _until(lambda: _others(_lines(BUSY_LOG_PATH)[refusals_before:]))
        if ctx.state.counter <= 0:
            return End(ctx.state.counter)
        ctx.state.counter -= 1
        return Step()


race_graph = Graph(nodes=[Step])


async def advance_until_done(endpoint: str, bucket: str, run_id: str) -> int:
    """Advance the run with a fresh persistence per step until it has ended; return the steps this worker ran."""
    options: dict[str, Any] = {
        # Credentials and region come from the environment, as in a deployed worker.
        'client_settings': ClientSettings(endpoint_url=endpoint, read_timeout=60),
        'retry': RetryPolicy(max_attempts=50, max_elapsed=120, initial_backoff=0.005, max_backoff=0.2),
    }
    steps = 0
    while True:
        persistence = S3StatePersistence.for_run(run_id, bucket=bucket, **options)
        try:
            async with race_graph.iter_from_persistence(persistence) as run:
                await run.next()
                steps += 1
            await _until_another_worker_ran_a_node()
        except GraphNodeStatusError:
            raise  # two workers got the same claimed node: the very fork these races look for
        except GraphRuntimeError:
            # Another worker holds the only created snapshot: done if the run has ended, else try again soon.
            history = await persistence.load_all()
            if history and isinstance(history[-1], EndSnapshot):
                return steps
            _append(BUSY_LOG_PATH, str(os.getpid()))
            await asyncio.sleep(random.uniform(0, 0.01))


async def _until_another_worker_ran_a_node() -> None:
    """Wait until the last node execution logged is another worker's, or the run has ended."""

    def another_ran_or_ended() -> bool:
        counter, pid = _lines(LOG_PATH)[-1].split()
        return pid != str(os.getpid()) or counter == '0'  # counter 0 is the last node: it ended the run

    await _until(another_ran_or_ended)


async def _until(condition: Callable[[], bool]) -> None:
    """Poll the logs other processes write (no event crosses processes); bounded by the test's timeout."""
    while True:
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)


def _others(pids: list[str]) -> bool:
    return any(pid != str(os.getpid()) for pid in pids)


def _lines(path: str) -> list[str]:
    try:
        with open(path) as log:
            return log.read().splitlines()
    except FileNotFoundError:
        return []


def _append(path: str, line: str) -> None:
    with open(path, 'a') as log:  # one short O_APPEND write: atomic across processes
        log.write(f'{line}\n')


if __name__ == '__main__':
    endpoint_url, bucket_name, run = sys.argv[1:4]
    print(asyncio.run(advance_until_done(endpoint_url, bucket_name, run)))
