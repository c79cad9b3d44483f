"""Long runs (issue #8): what step N costs, for N up to 10,000, with the head-and-segments layout.

A count-down whose state grows by `--grow` bytes per step (1 KB, 10 KB) or stays at 100 bytes, on the
embedded S3 (moto's server on 127.0.0.1):
- in-process: `Graph.iter` with one persistence for the whole run (warm ETag cache);
- fresh: one new `S3StatePersistence` per step (`iter_from_persistence`, as separate Lambda invocations do).

At each checkpoint step it prints requests, bytes up and bytes down (from `persistence.stats`, so segment
requests count) and ms, averaged over the `--window` steps that end there, next to the same run with sealing
switched off (`--compare`; the head then stays one File-format list: today's single-object layout, with this
version's write path). Times are only compared as ratios within one run (step N ms / step 100 ms).

    python -m benchmarks.long_runs                      # the scenarios of benchmarks/README.md
    python -m benchmarks.long_runs --grow 0 --steps 10000 --mode fresh
    python -m benchmarks.long_runs --quick              # small and fast: what tests/test_benchmarks runs
"""

from __future__ import annotations as _annotations

import argparse
import gzip
import json
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import aioboto3
import anyio
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from pydantic_graph_s3 import ClientSettings, S3StatePersistence, layout
from pydantic_s3_cas import CasStats
from pydantic_s3_cas.embedded import embedded_s3

WORDS = (
    *('the', 'of', 'run', 'state', 'step', 'graph', 'node', 'agent', 'message'),
    *('tool', 'call', 'result', 'reply', 'user', 'model', 'token', 'list', 'value'),
)


@dataclass
class LongState:
    counter: int
    notes: list[str] = field(default_factory=list)
    grow: int = 0


@dataclass
class Grow(BaseNode[LongState, None, int]):
    """Counts down; each step adds `grow` bytes of text to the state (a message history, say)."""

    async def run(self, ctx: GraphRunContext[LongState]) -> Grow | End[int]:
        if ctx.state.counter <= 0:
            return End(len(ctx.state.notes))
        ctx.state.counter -= 1
        if ctx.state.grow:
            ctx.state.notes.append(_text(ctx.state.grow, seed=ctx.state.counter))
        return Grow()


long_graph = Graph(nodes=[Grow])


def _text(size: int, seed: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return ' '.join(words)[:size]


@dataclass
class Row:
    scenario: str
    layout: str
    step: int
    requests: float
    kb_up: float
    kb_down: float
    ms: float


@dataclass
class Meter:
    """Per-step costs of one run: requests, bytes and seconds, from the persistences' own counters."""

    costs: list[tuple[int, int, int, float]] = field(default_factory=list)

    def add(self, before: CasStats, after: CasStats, seconds: float) -> None:
        self.costs.append(
            (
                after.requests - before.requests,
                after.bytes_sent - before.bytes_sent,
                after.bytes_received - before.bytes_received,
                seconds,
            )
        )

    def at(self, step: int, window: int) -> tuple[float, float, float, float]:
        chosen = self.costs[max(0, step - window) : step]
        n = len(chosen)
        return (
            sum(c[0] for c in chosen) / n,
            sum(c[1] for c in chosen) / n / 1024,
            sum(c[2] for c in chosen) / n / 1024,
            sum(c[3] for c in chosen) / n * 1000,
        )


def _copy(stats: CasStats) -> CasStats:
    return CasStats(**{k: v for k, v in asdict(stats).items()})


async def run_in_process(options: dict[str, Any], run_id: str, steps: int, grow: int, start_notes: list[str]) -> Meter:
    meter = Meter()
    persistence: S3StatePersistence[Any, Any] = S3StatePersistence.for_run(run_id, **options)
    state = LongState(steps + 5, list(start_notes), grow)
    async with long_graph.iter(Grow(), state=state, persistence=persistence) as run:
        node: Any = run.next_node
        for _ in range(steps):
            before, started = _copy(persistence.stats), time.perf_counter()
            node = await run.next(node)
            meter.add(before, persistence.stats, time.perf_counter() - started)
    return meter


async def run_fresh(options: dict[str, Any], run_id: str, steps: int, grow: int, start_notes: list[str]) -> Meter:
    meter = Meter()
    first: S3StatePersistence[Any, Any] = S3StatePersistence.for_run(run_id, **options)
    await long_graph.initialize(Grow(), state=LongState(steps + 5, list(start_notes), grow), persistence=first)
    for _ in range(steps):
        persistence: S3StatePersistence[Any, Any] = S3StatePersistence.for_run(run_id, **options)
        started = time.perf_counter()
        async with long_graph.iter_from_persistence(persistence) as run:
            await run.next()
        meter.add(CasStats(), persistence.stats, time.perf_counter() - started)
    return meter


@contextmanager
def sealing(enabled: bool) -> Iterator[None]:
    """Sealing off makes the head one File-format list for ever: today's single-object layout."""
    saved = layout.SEAL_THRESHOLD
    layout.SEAL_THRESHOLD = saved if enabled else 1 << 62
    try:
        yield
    finally:
        layout.SEAL_THRESHOLD = saved


async def gzip_ratio(session: aioboto3.Session, url: str, bucket: str) -> tuple[int, int]:
    """Bytes of every segment in the bucket, raw and gzipped."""
    raw = packed = 0
    async with session.client('s3', endpoint_url=url) as s3:
        paginator = s3.get_paginator('list_objects_v2')
        async for page in paginator.paginate(Bucket=bucket):
            for item in page.get('Contents', []):
                if '~' not in item['Key']:
                    continue
                body = await (await s3.get_object(Bucket=bucket, Key=item['Key']))['Body'].read()
                raw += len(body)
                packed += len(gzip.compress(body, 6))
    return raw, packed


async def main(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    session = aioboto3.Session(aws_access_key_id='bench', aws_secret_access_key='bench', region_name='us-east-1')
    with embedded_s3() as url:
        bucket = f'bench-{uuid.uuid4().hex[:8]}'
        async with session.client('s3', endpoint_url=url) as s3:
            await s3.create_bucket(Bucket=bucket)
        options: dict[str, Any] = {
            'bucket': bucket,
            'prefix': 'runs/',
            'session': session,
            'client_settings': ClientSettings(endpoint_url=url, read_timeout=120),
        }
        checkpoints = [c for c in args.checkpoints if c <= args.steps]
        start_notes = [] if args.grow else [_text(100, seed=0)]
        layouts = ['segmented', 'single'] if args.compare else ['segmented']
        for mode in args.mode:
            runner = run_in_process if mode == 'in-process' else run_fresh
            scenario = f'{mode}, +{args.grow} B/step' if args.grow else f'{mode}, constant 100 B state'
            for name in layouts:
                steps = args.steps if name == 'segmented' else min(args.steps, args.compare_steps)
                with sealing(name == 'segmented'):
                    run_id = f'{name}-{mode}-{uuid.uuid4().hex[:6]}'
                    meter = await runner(options, run_id, steps, args.grow, start_notes)
                for step in checkpoints:
                    if step <= steps:
                        requests, up, down, ms = meter.at(step, args.window)
                        rows.append(Row(scenario, name, step, requests, up, down, ms))
                total = sum(c[0] for c in meter.costs) / len(meter.costs)
                rows.append(Row(scenario, name, -steps, total, 0, 0, 0))  # the run's average requests per step
        raw, packed = await gzip_ratio(session, url, bucket)
        if raw:
            print(f'gzip -6 of every segment: {raw / 1024:.0f} KiB -> {packed / 1024:.0f} KiB ({packed / raw:.0%})')
    return rows


def report(rows: list[Row]) -> None:
    print('| scenario | layout | step | requests | KiB up | KiB down | ms |')
    print('|---|---|---|---|---|---|---|')
    for row in rows:
        if row.step < 0:
            print(f'| {row.scenario} | {row.layout} | avg of {-row.step} | {row.requests:.2f} | | | |')
        else:
            print(
                f'| {row.scenario} | {row.layout} | {row.step:,} | {row.requests:.2f} | {row.kb_up:,.1f} | '
                f'{row.kb_down:,.1f} | {row.ms:.1f} |'
            )
    by_key = {(r.scenario, r.layout, r.step): r.ms for r in rows if r.step > 0}
    for (scenario, name, step), ms in by_key.items():
        base = by_key.get((scenario, name, 100))
        if step > 100 and base:
            print(f'{scenario}, {name}: ms at step {step:,} / ms at step 100 = {ms / base:.2f}')


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--grow', type=int, default=1024, help='bytes added to the state per step (0: constant)')
    parser.add_argument('--steps', type=int, default=1000)
    parser.add_argument('--mode', nargs='+', default=['in-process', 'fresh'], choices=['in-process', 'fresh'])
    parser.add_argument('--checkpoints', type=int, nargs='+', default=[10, 100, 1000, 10000])
    parser.add_argument('--window', type=int, default=5, help='steps averaged at each checkpoint')
    parser.add_argument('--compare', action='store_true', help='also run with sealing off (single object)')
    parser.add_argument('--compare-steps', type=int, default=300, help='steps of the single-object run')
    parser.add_argument('--json', action='store_true', help='print the rows as one JSON line at the end')
    parser.add_argument('--quick', action='store_true', help='a small run for tests: 2 KB/step, 60 steps')
    args = parser.parse_args(argv)
    if args.quick:
        args.grow, args.steps, args.checkpoints, args.compare, args.compare_steps = 2048, 60, [10, 60], True, 60
    return args


if __name__ == '__main__':
    arguments = parse()
    result = anyio.run(main, arguments)
    report(result)
    if arguments.json:
        print(json.dumps([asdict(r) for r in result]))
