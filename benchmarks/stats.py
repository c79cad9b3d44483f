"""The usage summary on many runs: requests and wall time of `RunStore.stats` (and, to compare, `list_runs`).

Creates `--runs` small count-down runs on the embedded S3 (moto's server on 127.0.0.1, which answers one request
at a time) or on SeaweedFS (`--server seaweedfs`, which answers many at once) with raw PUTs, many at
once (a run's bytes are those `S3StatePersistence` writes: one ended run, replayed under every run id, with a
status mix so that every summary path is taken), plus one history object (`{run_id}~...`) per tenth run. Then
it times, over the same prefix:
- `RunStore.stats()` cold: no memo yet, so every head is read (and the memo `{prefix}~usage.json` written);
- `stats()` warm: nothing changed since, so only the listing and the memo are read;
- `stats()` after 1 % of the runs changed: those heads are read again, and the memo rewritten;
- a decoding `list_runs()`, which reads every head.
Requests come from the stores' own counters, and are exact; times depend on the machine (moto answers one GET in
about 1 ms on an idle core).

    python -m benchmarks.stats [--runs 10000] [--page-size 1000] [--server moto|seaweedfs] [--json]
"""

from __future__ import annotations as _annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pydantic_core

from pydantic_graph_s3 import RunStore, S3StatePersistence
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.usage import UsageStats
from pydantic_s3_cas import ClientSettings, shared_client
from pydantic_s3_cas.embedded import embedded_s3
from tests.support.seaweedfs import seaweedfs_s3

BUCKET = 'bench-stats'
PREFIX = 'runs/'


@dataclass
class Figures:
    runs: int
    objects: int
    stats_seconds: float
    stats_client_cpu_seconds: float
    """CPU time of this process (the client side) during the cold `stats()`; the rest is the server's."""
    stats_requests: int
    stats_lists: int
    stats_gets: int
    warm_seconds: float
    warm_requests: int
    warm_gets: int
    changed_runs: int
    changed_seconds: float
    changed_requests: int
    changed_gets: int
    list_runs_seconds: float
    list_runs_requests: int
    by_status: dict[str, int]


@dataclass
class Timed:
    seconds: float
    cpu_seconds: float
    store: RunStore
    summary: UsageStats


async def timed_stats(settings: ClientSettings, page_size: int) -> Timed:
    store = RunStore(BUCKET, PREFIX, client_settings=settings, read_concurrency=32, page_size=page_size)
    started, cpu = time.perf_counter(), time.process_time()
    summary = await store.stats()
    return Timed(round(time.perf_counter() - started, 2), round(time.process_time() - cpu, 2), store, summary)


async def sample_bodies(settings: ClientSettings) -> list[bytes]:
    """The bytes of an ended run, a waiting run and a failed one, as the persistence writes them."""
    client = await shared_client(settings=settings)
    await client.create_bucket(Bucket=BUCKET)
    bodies: list[bytes] = []
    for run_id, counter in (('sample-ended', 3), ('sample-waiting', None)):
        persistence = S3StatePersistence.for_run(run_id, bucket=BUCKET, prefix='samples/', client_settings=settings)
        if counter is None:
            await count_down_graph.initialize(CountDown(), state=CountDownState(3), persistence=persistence)
        else:
            await count_down_graph.run(CountDown(), state=CountDownState(counter), persistence=persistence)
        response = await client.get_object(Bucket=BUCKET, Key=persistence.key)
        async with response['Body'] as stream:
            bodies.append(await stream.read())
    items = pydantic_core.from_json(bodies[0])
    items[-2]['status'] = 'error'
    bodies.append(pydantic_core.to_json(items[:-1], indent=2))
    return bodies


async def create_runs(settings: ClientSettings, runs: int, bodies: list[bytes]) -> int:
    """PUT `runs` heads (and a history object for every tenth run), 64 at once; returns the objects made."""
    client = await shared_client(settings=settings)
    limiter = anyio.CapacityLimiter(64)
    made = 0

    async def put(key: str, body: bytes) -> None:
        nonlocal made
        async with limiter:
            await client.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType='application/json')
            made += 1

    async with anyio.create_task_group() as group:
        for index in range(runs):
            group.start_soon(put, f'{PREFIX}run-{index:06d}.json', bodies[index % len(bodies)])
            if index % 10 == 0:
                group.start_soon(put, f'{PREFIX}run-{index:06d}~0123456789ab~00000001.json', bodies[0])
    return made


@contextmanager
def server(name: str) -> Iterator[str]:
    """The endpoint URL of a fresh S3 server, with the AWS environment set to sign for it."""
    if name == 'moto':
        os.environ.update(AWS_ACCESS_KEY_ID='bench', AWS_SECRET_ACCESS_KEY='bench', AWS_DEFAULT_REGION='us-east-1')
        with embedded_s3() as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as directory, seaweedfs_s3(Path(directory)) as endpoint:
        os.environ.update(
            AWS_ACCESS_KEY_ID=endpoint.access_key,
            AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
            AWS_DEFAULT_REGION=endpoint.region,
        )
        yield endpoint.url


async def measure(runs: int, server_name: str, page_size: int) -> Figures:
    with server(server_name) as url:
        settings = ClientSettings(endpoint_url=url, read_timeout=60.0, max_pool_connections=64)
        bodies = await sample_bodies(settings)
        made = await create_runs(settings, runs, bodies)

        cold = await timed_stats(settings, page_size)
        warm = await timed_stats(settings, page_size)
        changed = await change_runs(settings, runs, bodies)
        after_change = await timed_stats(settings, page_size)

        listing = RunStore(BUCKET, PREFIX, client_settings=settings, read_concurrency=32, page_size=page_size)
        started = time.perf_counter()
        listed = sum([1 async for _ in listing.list_runs(decode=True)])
        list_runs_seconds = time.perf_counter() - started
        assert listed == cold.summary.runs == warm.summary.runs == runs, (listed, cold.summary.runs, runs)
        assert cold.summary.by_status == warm.summary.by_status, 'the memo answers as the heads do'

        return Figures(
            runs=cold.summary.runs,
            objects=made,
            stats_seconds=cold.seconds,
            stats_client_cpu_seconds=cold.cpu_seconds,
            stats_requests=cold.summary.requests,
            stats_lists=cold.store.request_stats.lists,
            stats_gets=cold.store.request_stats.gets,
            warm_seconds=warm.seconds,
            warm_requests=warm.summary.requests,
            warm_gets=warm.store.request_stats.gets,
            changed_runs=changed,
            changed_seconds=after_change.seconds,
            changed_requests=after_change.summary.requests,
            changed_gets=after_change.store.request_stats.gets,
            list_runs_seconds=round(list_runs_seconds, 2),
            list_runs_requests=listing.request_stats.requests,
            by_status={status: count for status, count in cold.summary.by_status.items()},
        )


async def change_runs(settings: ClientSettings, runs: int, bodies: list[bytes]) -> int:
    """Rewrite every hundredth run's head with another sample's bytes (a new ETag); returns how many."""
    client = await shared_client(settings=settings)
    changed = range(0, runs, 100)
    for index in changed:
        body = bodies[(index + 1) % len(bodies)]
        await client.put_object(Bucket=BUCKET, Key=f'{PREFIX}run-{index:06d}.json', Body=body)
    return len(changed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=10_000)
    parser.add_argument('--page-size', type=int, default=1000, help='keys per listing request (S3: at most 1000)')
    parser.add_argument('--server', choices=('moto', 'seaweedfs'), default='moto', help='the S3 server to run')
    parser.add_argument('--json', action='store_true', help='one JSON line on stdout')
    options = parser.parse_args(argv)
    figures = anyio.run(measure, options.runs, options.server, options.page_size)
    if options.json:
        print(json.dumps(figures.__dict__))
        return
    rows: list[tuple[str, Any]] = [
        ('runs (objects)', f'{figures.runs} ({figures.objects})'),
        ('stats() cold', f'{figures.stats_seconds} s ({figures.stats_client_cpu_seconds} s client CPU), '
                         f'{figures.stats_requests} requests '
                         f'({figures.stats_lists} LIST + {figures.stats_gets} GET + 1 PUT)'),
        ('stats() warm', f'{figures.warm_seconds} s, {figures.warm_requests} requests ({figures.warm_gets} GET)'),
        (f'after {figures.changed_runs} changed', f'{figures.changed_seconds} s, {figures.changed_requests} requests '
                                                  f'({figures.changed_gets} GET)'),
        ('list_runs(decode)', f'{figures.list_runs_seconds} s, {figures.list_runs_requests} requests'),
        ('by status', figures.by_status),
    ]  # fmt: skip
    for name, value in rows:
        print(f'{name:>20}: {value}')


if __name__ == '__main__':
    main()
