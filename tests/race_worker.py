"""A worker process for the race tests: advances one run step by step until it ends, racing its peers.

Each node execution appends `counter pid` to a log file (O_APPEND writes of one short line are atomic), so the
test can check that every step's node ran exactly once across all workers.

Usage (credentials from the environment, as in a deployed worker):
    RACE_LOG=PATH python -m tests.race_worker ENDPOINT_URL BUCKET RUN_ID
"""

from __future__ import annotations as _annotations

import asyncio
import os
import random
import sys
from dataclasses import dataclass
from typing import Any

from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.exceptions import GraphNodeStatusError, GraphRuntimeError
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import EndSnapshot

from pydantic_graph_s3 import ClientSettings, RetryPolicy, S3StatePersistence

LOG_PATH = os.environ.get('RACE_LOG', '')


@dataclass
class RaceState:
    counter: int
    pad: str = ''
    """Bytes carried by every snapshot: with a few KB, the racing workers also race to seal segments."""


@dataclass
class Step(BaseNode[RaceState, None, int]):
    async def run(self, ctx: GraphRunContext[RaceState]) -> Step | End[int]:
        with open(LOG_PATH, 'a') as log:  # noqa: ASYNC230 (one short O_APPEND write: atomic across processes)
            log.write(f'{ctx.state.counter} {os.getpid()}\n')
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
        except GraphNodeStatusError:
            raise  # two workers got the same claimed node: the very fork these races look for
        except GraphRuntimeError:
            # Another worker holds the only created snapshot: done if the run has ended, else try again soon.
            history = await persistence.load_all()
            if history and isinstance(history[-1], EndSnapshot):
                return steps
            await asyncio.sleep(random.uniform(0, 0.01))


if __name__ == '__main__':
    endpoint_url, bucket_name, run = sys.argv[1:4]
    print(asyncio.run(advance_until_done(endpoint_url, bucket_name, run)))
