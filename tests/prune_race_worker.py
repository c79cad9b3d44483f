"""A process for the prune race test: it creates runs (an import and a fork at once) or prunes, and may be killed.

The process SIGKILLs itself at its `KILL_AT`-th S3 request (`before` it is sent, or `after` its answer came; 0:
never), so a sweep of kill points stops it at every storage call of what it does. A creator also stops just
before sending each new run's head, when its segments are written and its head is not: it says so by creating
`DIR/at-head-RUN_ID`, and goes on once `DIR/go` exists. The driver runs a prune in that gap, the very window
where a prune used to take a new run's history for a leftover.

Usage (credentials from the environment):
    python -m tests.prune_race_worker ENDPOINT BUCKET DIR create IMPORT_FILE IMPORT_ID SOURCE AT FORK_ID KILL_AT WHEN
    python -m tests.prune_race_worker ENDPOINT BUCKET DIR prune KILL_AT WHEN
A creator writes `DIR/ok-RUN_ID` once a creation returned; a pruner prints one line per run it deleted.
"""

from __future__ import annotations as _annotations

import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio

from pydantic_graph_s3 import ClientSettings, RetryPolicy, RunStore
from pydantic_s3_cas import shared_client

from .test_long_runs import pad_graph

PREFIX = 'p/'
POLL_SECONDS = 0.01


class Killer:
    """Counts this process's S3 requests and SIGKILLs it at the chosen one; pauses a creator before each head."""

    def __init__(self, kill_at: int, when: str, directory: Path, heads: dict[str, str]) -> None:
        self.kill_at, self.when, self.directory, self.heads = kill_at, when, directory, heads
        self.sent = self.answered = 0

    async def before_send(self, request: Any, **_: Any) -> None:
        self.sent += 1
        if self.when == 'before' and self.sent == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        run_id = self.heads.get(unquote(urlsplit(request.url).path).rsplit('/', 2)[-1])
        if request.method == 'PUT' and run_id is not None:
            (self.directory / f'at-head-{run_id}').touch()
            while not (self.directory / 'go').exists():  # noqa: ASYNC110 (written by another process)
                await anyio.sleep(POLL_SECONDS)

    def after_call(self, **_: Any) -> None:
        self.answered += 1
        if self.when == 'after' and self.answered == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


async def main(endpoint: str, bucket: str, directory: Path, role: str, args: list[str]) -> None:
    settings = ClientSettings(endpoint_url=endpoint, read_timeout=60)
    store = RunStore(
        bucket,
        PREFIX,
        client_settings=settings,
        retry=RetryPolicy(max_attempts=20, max_elapsed=120, initial_backoff=0.005, max_backoff=0.2),
    )
    kill_at, when = int(args[-2]), args[-1]
    heads = {f'{args[1]}.json': args[1], f'{args[4]}.json': args[4]} if role == 'create' else {}
    killer = Killer(kill_at, when, directory, heads)
    client = await shared_client(None, settings)
    client.meta.events.register('before-send.s3', killer.before_send)  # type: ignore[arg-type]  # awaited
    client.meta.events.register('after-call.s3', killer.after_call)
    if role == 'prune':
        cutoff = datetime.now(tz=UTC) + timedelta(days=1)  # every ended run qualifies
        async for outcome in store.prune(ended_before=cutoff):
            if outcome.deleted:
                print(f'deleted {outcome.run.run_id}', flush=True)
        return
    import_file, import_id, source, at, fork_id = args[:5]

    async def import_one() -> None:
        await store.import_run(import_file, import_id, pad_graph)
        (directory / f'ok-{import_id}').touch()

    async def fork_one() -> None:
        await store.fork_run(source, at=at, new_run_id=fork_id, graph=pad_graph)
        (directory / f'ok-{fork_id}').touch()

    async with anyio.create_task_group() as group:
        group.start_soon(import_one)
        group.start_soon(fork_one)


if __name__ == '__main__':
    endpoint_url, bucket_name, folder, role_name, *rest = sys.argv[1:]
    anyio.run(main, endpoint_url, bucket_name, Path(folder), role_name, rest)
