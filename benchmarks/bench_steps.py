"""What a step costs: S3 requests, bytes uploaded and wall time, against a floor and FileStatePersistence.

Runs pydantic-graph's count-down on the embedded S3 (moto's server on 127.0.0.1), in one run:
- `Graph.run` in one process (one persistence object for the whole run, so its ETag cache is warm);
- one step per fresh persistence object (`iter_from_persistence`, as separate Lambda invocations do);
- the same two with `FileStatePersistence` on local disk;
- the floor: a bare loop of conditional PUTs (`IfMatch`) and GETs of the same body size, no pydantic-graph.

Requests and bytes are counted with botocore event hooks on the client that sends them. Times are medians of
per-step times; ratios are taken within this one run, since absolute times on a shared machine are noise.

    python benchmarks/bench_steps.py [--steps 40] [--repeat 3]
"""

from __future__ import annotations as _annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from pydantic_graph import End
from pydantic_graph.persistence.file import FileStatePersistence

from pydantic_graph_s3 import S3StatePersistence
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_s3_cas import shared_client
from pydantic_s3_cas.embedded import embedded_s3

BUCKET = 'bench'


@dataclass(eq=False)  # botocore keys handlers by hash
class Traffic:
    """Requests and uploaded bytes seen by a botocore `before-send` hook."""

    requests: Counter[str] = field(default_factory=Counter)
    uploaded: int = 0

    def __call__(self, request: Any, **_: Any) -> None:
        self.requests[request.method] += 1
        if request.method == 'PUT':
            self.uploaded += int(request.headers.get('Content-Length', 0))

    def reset(self) -> None:
        self.requests.clear()
        self.uploaded = 0


@dataclass
class Result:
    name: str
    step_times: list[float]
    requests: Counter[str] = field(default_factory=Counter)
    uploaded: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.step_times)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_times) * 1000


async def timed_steps(steps: int, step: Callable[[], Awaitable[bool]]) -> list[float]:
    """Call `step` until it reports the end (or `steps` calls), returning each call's wall time."""
    times: list[float] = []
    for _ in range(steps):
        started = time.perf_counter()
        done = await step()
        times.append(time.perf_counter() - started)
        if done:
            break
    return times


async def s3_in_process(traffic: Traffic, run_id: str, steps: int) -> Result:
    """`GraphRun.next` in one process with one persistence object; the first step (create) is left out."""
    persistence = S3StatePersistence.for_run(run_id, bucket=BUCKET)
    async with count_down_graph.iter(CountDown(), state=CountDownState(steps), persistence=persistence) as run:
        await run.next()
        traffic.reset()

        async def step() -> bool:
            return isinstance(await run.next(), End)

        times = await timed_steps(steps, step)
    stats = persistence.stats.as_dict()
    return Result('S3, Graph.run in one process', times, Counter(traffic.requests), traffic.uploaded, stats)


async def s3_fresh_instances(traffic: Traffic, run_id: str, steps: int) -> Result:
    await count_down_graph.initialize(
        CountDown(), state=CountDownState(steps), persistence=S3StatePersistence.for_run(run_id, bucket=BUCKET)
    )
    traffic.reset()

    async def step() -> bool:
        async with count_down_graph.iter_from_persistence(S3StatePersistence.for_run(run_id, bucket=BUCKET)) as run:
            return isinstance(await run.next(), End)

    times = await timed_steps(steps, step)
    return Result('S3, one fresh instance per step', times, Counter(traffic.requests), traffic.uploaded)


async def file_in_process(path: Path, steps: int) -> Result:
    async with count_down_graph.iter(
        CountDown(), state=CountDownState(steps), persistence=FileStatePersistence(path)
    ) as run:
        await run.next()

        async def step() -> bool:
            return isinstance(await run.next(), End)

        times = await timed_steps(steps, step)
    return Result('FileStatePersistence, Graph.run', times)


async def file_fresh_instances(path: Path, steps: int) -> Result:
    await count_down_graph.initialize(CountDown(), state=CountDownState(steps), persistence=FileStatePersistence(path))

    async def step() -> bool:
        async with count_down_graph.iter_from_persistence(FileStatePersistence(path)) as run:
            return isinstance(await run.next(), End)

    return Result('FileStatePersistence, fresh instance per step', await timed_steps(steps, step))


async def bare_requests(body_size: int, count: int) -> tuple[float, float]:
    """Median seconds of one bare conditional PUT and one bare GET of `body_size` bytes: the floor.

    The same client and connection pool as the persistence uses, so only what the library adds is measured.
    """
    client = await shared_client()
    body = b'x' * body_size
    key = f'floor-{body_size}'
    etag = (await client.put_object(Bucket=BUCKET, Key=key, Body=body))['ETag']
    puts, gets = [], []
    for _ in range(count):
        started = time.perf_counter()
        etag = (await client.put_object(Bucket=BUCKET, Key=key, Body=body, IfMatch=etag))['ETag']
        puts.append(time.perf_counter() - started)
        started = time.perf_counter()
        response = await client.get_object(Bucket=BUCKET, Key=key)
        async with response['Body'] as stream:
            await stream.read()
        gets.append(time.perf_counter() - started)
    return statistics.median(puts), statistics.median(gets)


async def benchmark(steps: int, repeat: int) -> None:
    client = await shared_client()
    await client.create_bucket(Bucket=BUCKET)
    traffic = Traffic()
    client.meta.events.register('before-send.s3', traffic)

    # A warm-up run, not counted, tells the size of the bodies the floor must send.
    warm_up = await s3_fresh_instances(traffic, 'warm-up', steps)
    body_size = warm_up.uploaded // max(warm_up.requests['PUT'], 1)

    results: dict[str, list[Result]] = {}
    ratios: dict[str, list[float]] = {}
    floors: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(repeat):
            # The floor is measured in every round, right beside what it is compared with: on a shared machine
            # the load changes between rounds, and a ratio is only fair within one.
            bare_put, bare_get = await bare_requests(body_size, count=steps)
            floors.append((bare_put, bare_get))
            for result in (
                await s3_in_process(traffic, f'in-process-{round_}', steps),
                await s3_fresh_instances(traffic, f'fresh-{round_}', steps),
                await file_in_process(Path(tmp) / f'in-process-{round_}.json', steps),
                await file_fresh_instances(Path(tmp) / f'fresh-{round_}.json', steps),
            ):
                results.setdefault(result.name, []).append(result)
                gets, puts = result.requests['GET'] / result.steps, result.requests['PUT'] / result.steps
                floor = round(puts) * bare_put + round(gets) * bare_get
                if floor:
                    ratios.setdefault(result.name, []).append(statistics.median(result.step_times) / floor)
                if result.name == 'S3, one fresh instance per step':
                    ratios.setdefault('writes only', []).append(
                        statistics.median(result.step_times) / (round(puts) * bare_put)
                    )

    bare_put = statistics.median(f[0] for f in floors)
    bare_get = statistics.median(f[1] for f in floors)
    print(f'count-down of {steps} steps, {repeat} rounds, embedded S3 at {os.environ["AWS_ENDPOINT_URL_S3"]}')
    print(f'floor (median of rounds): one bare conditional PUT of {body_size} B = {bare_put * 1000:.2f} ms, ', end='')
    print(f'one GET = {bare_get * 1000:.2f} ms')
    print()
    header = f'{"":48} {"GET/step":>8} {"PUT/step":>8} {"req/step":>8} {"KB up/step":>10} {"ms/step":>8} {"x floor":>8}'
    print(header)
    print('-' * len(header))
    for name, rounds in results.items():
        last = rounds[-1]
        median_ms = statistics.median(t for r in rounds for t in r.step_times) * 1000
        gets, puts = last.requests['GET'] / last.steps, last.requests['PUT'] / last.steps
        if name in ratios:
            cells = f'{gets:>8.2f} {puts:>8.2f} {gets + puts:>8.2f} {last.uploaded / last.steps / 1024:>10.2f}'
            ratio = f'{statistics.median(ratios[name]):.2f}'
        else:
            cells, ratio = f'{"":>8} {"":>8} {"":>8} {"":>10}', ''
        print(f'{name:48} {cells} {median_ms:>8.2f} {ratio:>8}')
    print()
    print('x floor: median over rounds of (median step time / the same requests sent bare in that round)')
    print(f'fresh instance per step against its 4 PUTs alone: {statistics.median(ratios["writes only"]):.2f}x')
    in_process, fresh = results['S3, Graph.run in one process'][-1], results['S3, one fresh instance per step'][-1]
    print(
        f'request targets: Graph.run <= 3/step: {_verdict(in_process, 3)}; '
        f'fresh instance <= 5/step: {_verdict(fresh, 5)}'
    )
    print(f'persistence.stats after the last Graph.run (whole run, create included): {in_process.stats}')


def _verdict(result: Result, target: int) -> str:
    per_step = sum(result.requests.values()) / result.steps
    return f'{per_step:.2f} {"met" if per_step <= target else "MISSED"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args()
    with embedded_s3() as endpoint:
        os.environ.update(
            AWS_ENDPOINT_URL_S3=endpoint,
            AWS_ACCESS_KEY_ID='bench',
            AWS_SECRET_ACCESS_KEY='bench',
            AWS_DEFAULT_REGION='us-east-1',
        )
        anyio.run(benchmark, args.steps, args.repeat)


if __name__ == '__main__':
    main()
