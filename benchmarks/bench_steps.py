"""What a step costs: S3 requests, bytes uploaded, wall time and client CPU, against a floor and
FileStatePersistence.

Runs pydantic-graph's count-down on the embedded S3 (moto's server on 127.0.0.1), in one run:
- `Graph.run` in one process (one persistence object for the whole run, so its ETag cache is warm);
- one step per fresh persistence object (`iter_from_persistence`, as separate Lambda invocations do);
- the same two with `FileStatePersistence` on local disk;
- the floor: a bare loop of conditional PUTs (`IfMatch`) and GETs of the same body size, no pydantic-graph.

Requests and bytes are counted with botocore event hooks on the client that sends them. Times are medians of
per-step times; ratios are taken within this one run, since absolute times on a shared machine are noise.
Client CPU per step is `time.process_time` over the steps (the S3 server runs in another process), split into
layers by a cProfile pass of its own (see `LAYERS`); the split is scaled to the unprofiled CPU.

    python benchmarks/bench_steps.py [--steps 40] [--repeat 3]
"""

from __future__ import annotations as _annotations

import argparse
import cProfile
import os
import pstats
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
IN_PROCESS = 'S3, Graph.run in one process'
FRESH = 'S3, one fresh instance per step'


@dataclass(eq=False)  # botocore keys handlers by hash
class Traffic:
    """Requests and uploaded bytes seen by a botocore `before-send` hook."""

    requests: Counter[str] = field(default_factory=Counter)
    uploaded: int = 0

    def __call__(self, request: Any, **_: Any) -> None:
        self.requests[request.method] += 1
        if '~' in request.url:  # a segment's key (see `layout.segment_key`)
            self.requests['segment'] += 1
        if request.method == 'PUT':
            self.uploaded += int(request.headers.get('Content-Length', 0))

    def reset(self) -> None:
        self.requests.clear()
        self.uploaded = 0


@dataclass
class Result:
    name: str
    step_times: list[float]
    cpu: float = 0.0
    """Client CPU seconds (`time.process_time`) over all the steps."""
    requests: Counter[str] = field(default_factory=Counter)
    uploaded: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.step_times)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_times) * 1000


@dataclass
class Timed:
    """Each step's wall time, and the client CPU of all of them."""

    times: list[float]
    cpu: float


async def timed_steps(steps: int, step: Callable[[], Awaitable[bool]]) -> Timed:
    """Call `step` until it reports the end (or `steps` calls), timing each call."""
    times: list[float] = []
    cpu = time.process_time()
    for _ in range(steps):
        started = time.perf_counter()
        done = await step()
        times.append(time.perf_counter() - started)
        if done:
            break
    return Timed(times, time.process_time() - cpu)


async def s3_in_process(traffic: Traffic, run_id: str, steps: int) -> Result:
    """`GraphRun.next` in one process with one persistence object; the first step (create) is left out."""
    persistence = S3StatePersistence.for_run(run_id, bucket=BUCKET)
    async with count_down_graph.iter(CountDown(), state=CountDownState(steps), persistence=persistence) as run:
        await run.next()
        traffic.reset()

        async def step() -> bool:
            return isinstance(await run.next(), End)

        timed = await timed_steps(steps, step)
    stats = persistence.stats.as_dict()
    return Result(IN_PROCESS, timed.times, timed.cpu, Counter(traffic.requests), traffic.uploaded, stats)


async def s3_fresh_instances(traffic: Traffic, run_id: str, steps: int) -> Result:
    await count_down_graph.initialize(
        CountDown(), state=CountDownState(steps), persistence=S3StatePersistence.for_run(run_id, bucket=BUCKET)
    )
    traffic.reset()

    async def step() -> bool:
        async with count_down_graph.iter_from_persistence(S3StatePersistence.for_run(run_id, bucket=BUCKET)) as run:
            return isinstance(await run.next(), End)

    timed = await timed_steps(steps, step)
    return Result(FRESH, timed.times, timed.cpu, Counter(traffic.requests), traffic.uploaded)


async def file_in_process(path: Path, steps: int) -> Result:
    async with count_down_graph.iter(
        CountDown(), state=CountDownState(steps), persistence=FileStatePersistence(path)
    ) as run:
        await run.next()

        async def step() -> bool:
            return isinstance(await run.next(), End)

        timed = await timed_steps(steps, step)
    return Result('FileStatePersistence, Graph.run', timed.times, timed.cpu)


async def file_fresh_instances(path: Path, steps: int) -> Result:
    await count_down_graph.initialize(CountDown(), state=CountDownState(steps), persistence=FileStatePersistence(path))

    async def step() -> bool:
        async with count_down_graph.iter_from_persistence(FileStatePersistence(path)) as run:
            return isinstance(await run.next(), End)

    timed = await timed_steps(steps, step)
    return Result('FileStatePersistence, fresh instance per step', timed.times, timed.cpu)


@dataclass
class Floor:
    """One bare conditional PUT and one bare GET of the steps' body size: median wall and CPU seconds."""

    put: float
    get: float
    put_cpu: float
    get_cpu: float

    def of(self, result: Result) -> tuple[float, float]:
        """The wall and CPU seconds of the requests of one step of `result`, sent bare."""
        gets, puts = round(result.requests['GET'] / result.steps), round(result.requests['PUT'] / result.steps)
        return puts * self.put + gets * self.get, puts * self.put_cpu + gets * self.get_cpu


async def bare_requests(body_size: int, count: int) -> Floor:
    """The floor: bare conditional PUTs and GETs of `body_size` bytes, `count` of each.

    The same client and connection pool as the persistence uses, so only what the library adds is measured.
    """
    client = await shared_client()
    body = b'x' * body_size
    key = f'floor-{body_size}'
    etag = (await client.put_object(Bucket=BUCKET, Key=key, Body=body))['ETag']
    puts, gets, put_cpu, get_cpu = [], [], [], []
    for _ in range(count):
        started, cpu = time.perf_counter(), time.process_time()
        etag = (await client.put_object(Bucket=BUCKET, Key=key, Body=body, IfMatch=etag))['ETag']
        puts.append(time.perf_counter() - started)
        put_cpu.append(time.process_time() - cpu)
        started, cpu = time.perf_counter(), time.process_time()
        response = await client.get_object(Bucket=BUCKET, Key=key)
        async with response['Body'] as stream:
            await stream.read()
        gets.append(time.perf_counter() - started)
        get_cpu.append(time.process_time() - cpu)
    median = statistics.median
    return Floor(median(puts), median(gets), median(put_cpu), median(get_cpu))


# Where client CPU goes, by the file of the function that spends it (its own time, not its callees').
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        'encoding',
        ('/pydantic/', '/pydantic_core/', 'pydantic_graph_s3/layout.py', 'pydantic_graph_s3/changes.py', '/copy.py'),
    ),
    (
        'CAS machinery',
        (
            '/pydantic_s3_cas/',
            'pydantic_graph_s3/persistence.py',
            '/tenacity/',
            '/logfire',
            '/opentelemetry/',
            '/logging/',
            '/warnings.py',
            '/uuid.py',
        ),
    ),
    (
        'botocore',
        (
            '/botocore/',
            '/aiobotocore/',
            '/aioboto3/',
            '/aiohttp/',
            '/yarl/',
            '/multidict/',
            '/urllib3/',
            '/http/',
            '/email/',
            '/urllib/',
            '/hmac.py',
            '/base64.py',
            '/socket.py',
            '/asyncio/selector_events.py',
            '/asyncio/streams.py',
            '/jmespath/',
            '/dateutil/',
        ),
    ),
)
REST = 'the rest (pydantic-graph, asyncio, ...)'


def layer_of(filename: str) -> str:
    for layer, markers in LAYERS:
        if any(marker in filename for marker in markers):
            return layer
    return REST


def cpu_by_layer(profile: cProfile.Profile) -> dict[str, float]:
    """Seconds of own time per layer; a built-in's time goes to the layers of its callers, pro rata."""
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]  # undocumented, stable
    layers: dict[str, float] = dict.fromkeys([*(name for name, _ in LAYERS), REST], 0.0)
    for (filename, _, _), (_, _, own, _, callers) in stats.items():
        if filename != '~':
            layers[layer_of(filename)] += own
            continue
        calls = {caller: edge[2] for caller, edge in callers.items()}
        total = sum(calls.values())
        if not total:
            layers[REST] += own
            continue
        for (caller_file, _, _), share in calls.items():
            layers[layer_of(caller_file)] += own * share / total
    return layers


async def profiled(run: Callable[[], Awaitable[object]]) -> dict[str, float]:
    """CPU seconds by layer while `run` runs, from a cProfile pass on the CPU clock (`time.process_time`)."""
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    try:
        await run()
    finally:
        profile.disable()
    return cpu_by_layer(profile)


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
    floors: list[Floor] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(repeat):
            # The floor is measured in every round, right beside what it is compared with: on a shared machine
            # the load changes between rounds, and a ratio is only fair within one.
            floor = await bare_requests(body_size, count=steps)
            floors.append(floor)
            for result in (
                await s3_in_process(traffic, f'in-process-{round_}', steps),
                await s3_fresh_instances(traffic, f'fresh-{round_}', steps),
                await file_in_process(Path(tmp) / f'in-process-{round_}.json', steps),
                await file_fresh_instances(Path(tmp) / f'fresh-{round_}.json', steps),
            ):
                results.setdefault(result.name, []).append(result)
                wall, _ = floor.of(result)
                if wall:
                    ratios.setdefault(result.name, []).append(statistics.median(result.step_times) / wall)
        # The CPU split: one more run of each S3 pattern, and of the bare requests of a fresh step, under cProfile
        # (which slows them several times over: only their shares are used).
        in_process_layers = await profiled(lambda: s3_in_process(traffic, 'profiled-in-process', steps))
        fresh_layers = await profiled(lambda: s3_fresh_instances(traffic, 'profiled-fresh', steps))
        bare_layers = await profiled(lambda: bare_requests(body_size, count=steps))

    median = statistics.median
    floor = Floor(*(median(getattr(f, name) for f in floors) for name in ('put', 'get', 'put_cpu', 'get_cpu')))
    print(f'count-down of {steps} steps, {repeat} rounds, embedded S3 at {os.environ["AWS_ENDPOINT_URL_S3"]}')
    print(f'load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)')
    print(f'floor (median of rounds): one bare conditional PUT of {body_size} B = {floor.put * 1000:.2f} ms ', end='')
    print(
        f'({floor.put_cpu * 1000:.2f} ms CPU), one GET = {floor.get * 1000:.2f} ms ({floor.get_cpu * 1000:.2f} ms CPU)'
    )
    print()
    header = (
        f'{"":46} {"GET/step":>8} {"PUT/step":>8} {"req/step":>8} {"KB up/step":>10} {"ms/step":>8} '
        f'{"x floor":>7} {"CPU ms/step":>11} {"floor CPU":>9}'
    )
    print(header)
    print('-' * len(header))
    for name, rounds in results.items():
        last = rounds[-1]
        median_ms = median(t for r in rounds for t in r.step_times) * 1000
        cpu_ms = median(r.cpu / r.steps for r in rounds) * 1000
        gets, puts = last.requests['GET'] / last.steps, last.requests['PUT'] / last.steps
        if name in ratios:
            cells = f'{gets:>8.2f} {puts:>8.2f} {gets + puts:>8.2f} {last.uploaded / last.steps / 1024:>10.2f}'
            ratio = f'{median(ratios[name]):.2f}'
            floor_cpu = f'{floor.of(last)[1] * 1000:.2f}'
        else:
            cells, ratio, floor_cpu = f'{"":>8} {"":>8} {"":>8} {"":>10}', '', ''
        print(f'{name:46} {cells} {median_ms:>8.2f} {ratio:>7} {cpu_ms:>11.2f} {floor_cpu:>9}')
    print()
    print('x floor: median over rounds of (median step time / the same requests sent bare in that round)')
    print('CPU ms/step: client CPU (time.process_time) per step; floor CPU: that of the same requests sent bare')
    print()
    print('client CPU ms per step by layer (cProfile own time on the CPU clock, scaled to the unprofiled CPU):')
    print(f'{"":42} {"in-process":>10} {"fresh":>10} {"bare PUT+GET":>12}')
    bare_cpu_ms = (floor.put_cpu + floor.get_cpu) * 1000
    for layers, cpu_ms in (
        (in_process_layers, median(r.cpu / r.steps for r in results[IN_PROCESS]) * 1000),
        (fresh_layers, median(r.cpu / r.steps for r in results[FRESH]) * 1000),
        (bare_layers, bare_cpu_ms),
    ):
        total = sum(layers.values())
        for layer, seconds in layers.items():
            layers[layer] = cpu_ms * seconds / total
    for layer in in_process_layers:
        cells = f'{in_process_layers[layer]:>10.2f} {fresh_layers[layer]:>10.2f} {bare_layers[layer]:>12.2f}'
        print(f'{layer:42} {cells}')
    print()
    in_process, fresh = results[IN_PROCESS][-1], results[FRESH][-1]
    print(
        f'request targets, sealing aside: Graph.run 2/step: {_verdict(in_process, 2)}; '
        f'fresh instance 3/step: {_verdict(fresh, 3)}'
    )
    print(f'persistence.stats after the last Graph.run (whole run, create included): {in_process.stats}')


def _verdict(result: Result, target: int) -> str:
    """Requests per step against `target`, sealing aside (the segment PUTs, one per 8 KiB of finished history)."""
    head = (result.requests['GET'] + result.requests['PUT'] - result.requests['segment']) / result.steps
    segments = result.requests['segment'] / result.steps
    return f'{head:.2f} {"met" if head <= target else "MISSED"} (+{segments:.2f} segment PUTs)'


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
