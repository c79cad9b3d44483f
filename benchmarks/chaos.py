"""Chaos: worker processes advance many runs through S3 faults while being killed; no run is lost or forked.

The driver starts the embedded S3 (moto's server on 127.0.0.1) behind the fault-injecting proxy of the test
suite, creates `--runs` runs of `--steps` steps, and starts `--workers` worker processes that advance them with
`GraphWorker` (`reclaim_after` set). Then, until every run has ended:
- the proxy fails `--fault-rate` of the requests with 500, 503 or a timeout;
- the driver SIGKILLs a random worker about every `--kill-every` seconds (once a node ran since the last kill,
  so a busy machine slows the kills down with the work), and starts a new one in its place;
- on its first execution, every `--die-every`-th step kills its own worker in the middle of the node, and the
  step after it kills its worker after the node returned, before its successor snapshot is written.

Then it reads every run back and checks, and prints:
- runs finished: all of them ended (`End`);
- snapshots lost: steps with no node snapshot (each step `k` of a run has exactly one, in order);
- forks: node snapshots with more than one successor. A node snapshot's successor is the snapshot its node's
  execution appended: here the snapshot of the next step (or the end). A fork would show as two snapshots of one
  step (a second successor of the step before), or as a snapshot out of order;
- node executions minus steps, which may not exceed the reclaims (a node runs again only when its step is
  reclaimed; it can be less, when a worker died after its claim but before running the node);
- requests, conflicts (412/409) and faults (from the proxy), retries (reported by the workers that lived to report
  them) per step, and wall time.

    python -m benchmarks.chaos [--runs 20] [--steps 20] [--workers 8] [--fault-rate 0.05] [--seed 1]

The exit status is 1 when a check fails. `--json` prints the figures as one JSON object instead.

`python -m benchmarks.chaos bursts [--runs-per-write 2] [--steps 4] [--reclaim-after 10] [--json]` is another
scenario (`bursts`): workers with the default settings of a deployed worker (`GraphWorker(graph)`, configured
only by the environment the Terraform module gives the function, PYDANTIC_GRAPH_S3_RECLAIM_AFTER scaled down
from `lambda_timeout + 60`, and the default `RetryPolicy`) meet a burst of 503s on one kind of write of a run,
long enough to exhaust the retries: the start, the claim (which starts the node: `running`), or the success
with its successor. Then S3 heals. A driver plays the state machine (an invocation that raised is retried, `busy` waits)
and checks that every run finishes with no manual step, with no fork.
"""

from __future__ import annotations as _annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import aioboto3
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot

from pydantic_graph_s3 import ClientSettings, RetryPolicy, S3PersistenceError, S3StatePersistence
from pydantic_graph_s3.serverless import GraphWorker
from pydantic_s3_cas.child_process import popen_dying_with_parent
from pydantic_s3_cas.embedded import embedded_s3
from tests.support.fault_proxy import Fault, fault_proxy

BUCKET = 'chaos'
ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}


@dataclass
class ChaosState:
    run: str
    step: int
    steps: int


@dataclass
class Work(BaseNode[ChaosState, None, int]):
    """One step: logs its execution, works a little, and on its first execution may kill its own process."""

    async def run(self, ctx: GraphRunContext[ChaosState]) -> Work | End[int]:
        state = ctx.state
        first = _log_execution(state.run, state.step)
        await asyncio.sleep(random.uniform(0, 0.04))
        if first and _dies(state.step, 1):
            _die('mid-node')
        if first and _dies(state.step, 2):
            DEATH_BEFORE_SNAPSHOT.append(True)
        state.step += 1
        return End(state.step) if state.step == state.steps else Work()


chaos_graph = Graph(nodes=[Work])
DEATH_BEFORE_SNAPSHOT: list[bool] = []


def _dies(step: int, offset: int) -> bool:
    every = int(os.environ.get('CHAOS_DIE_EVERY', '0'))
    return every > 0 and step % every == offset


def _log_execution(run: str, step: int) -> bool:
    """Append `run step pid` to the execution log; whether no execution of this step was logged before."""
    path = Path(os.environ['CHAOS_DIR']) / 'executions.log'
    line = f'{run} {step} '
    seen = path.exists() and any(entry.startswith(line) for entry in path.read_text().splitlines())
    with path.open('a') as log:  # one short O_APPEND write: atomic across processes
        log.write(f'{line}{os.getpid()}\n')
    return not seen


def _die(where: str) -> None:
    with (Path(os.environ['CHAOS_DIR']) / 'deaths.log').open('a') as log:
        log.write(f'{where} {os.getpid()}\n')
    os.kill(os.getpid(), signal.SIGKILL)


class ChaosPersistence(S3StatePersistence[ChaosState, int]):
    """Dies, when its node asked to, after the node returned and before the successor snapshot is written."""

    async def snapshot_node(self, state: ChaosState, next_node: BaseNode[ChaosState, Any, int]) -> None:
        if DEATH_BEFORE_SNAPSHOT:
            _die('before-snapshot')
        await super().snapshot_node(state, next_node)

    async def snapshot_end(self, state: ChaosState, end: End[int]) -> None:
        if DEATH_BEFORE_SNAPSHOT:
            _die('before-snapshot')
        await super().snapshot_end(state, end)


class ChaosWorker(GraphWorker[ChaosState, None, int]):
    """A `GraphWorker` with `ChaosPersistence`, which keeps the persistence objects it made to sum their stats."""

    made: ClassVar[list[S3StatePersistence[ChaosState, int]]] = []  # one worker per process

    def persistence(self, run_id: str) -> S3StatePersistence[ChaosState, int]:
        persistence = ChaosPersistence.for_run(run_id, bucket=BUCKET, **self.persistence_options)
        persistence.set_graph_types(self.graph)
        self.made.append(persistence)
        return persistence


async def work(endpoint: str, run_ids: list[str], reclaim_after: float, max_attempts: int) -> None:
    """A worker process: advance random unfinished runs until every run has ended."""
    worker = ChaosWorker(
        chaos_graph,
        bucket=BUCKET,
        reclaim_after=timedelta(seconds=reclaim_after),
        max_attempts=max_attempts,
        client_settings=ClientSettings(endpoint_url=endpoint, read_timeout=2.0, connect_timeout=2.0),
        retry=RetryPolicy(max_attempts=50, max_elapsed=120, initial_backoff=0.01, max_backoff=0.5),
    )
    stats = Path(os.environ['CHAOS_DIR']) / 'stats.log'
    unfinished = set(run_ids)
    while unfinished:
        run_id = random.choice(sorted(unfinished))
        try:
            result = await worker.advance(run_id, max_steps=3)
        except S3PersistenceError as e:
            print(f'worker {os.getpid()}: {e}', file=sys.stderr)
            continue
        finally:
            requests = sum(p.stats.requests for p in worker.made)
            retries = sum(p.stats.retries for p in worker.made)
            worker.made.clear()
            with stats.open('a') as log:
                log.write(f'{requests} {retries}\n')
        if result.status in ('done', 'failed'):
            unfinished.discard(run_id)
        elif result.status == 'busy':
            await asyncio.sleep(random.uniform(0.01, 0.1))


@dataclass
class Options:
    runs: int
    steps: int
    workers: int
    fault_rate: float
    kill_every: float
    die_every: int
    reclaim_after: float
    max_attempts: int
    seed: int
    stall_timeout: float


@dataclass
class Figures:
    runs: int
    runs_finished: int = 0
    steps: int = 0
    snapshots_lost: int = 0
    forks: int = 0
    node_executions: int = 0
    reclaims: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    conflicts: int = 0
    faults: int = 0
    retries: int = 0
    wall_seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        checks = {
            f'runs finished: {self.runs_finished} of {self.runs}': self.runs_finished == self.runs,
            f'snapshots lost: {self.snapshots_lost}': self.snapshots_lost == 0,
            f'forks: {self.forks}': self.forks == 0,
            f'node executions - steps = {self.node_executions - self.steps} > reclaims = {self.reclaims}': (
                self.node_executions - self.steps <= self.reclaims
            ),
        }
        return [name for name, ok in checks.items() if not ok]

    def report(self) -> str:
        per_step = max(self.steps, 1)
        kills = ', '.join(f'{n} {kind}' for kind, n in sorted(self.kills.items())) or 'none'
        return '\n'.join(
            [
                f'runs finished:            {self.runs_finished} of {self.runs}',
                f'snapshots lost:           {self.snapshots_lost}',
                f'forks:                    {self.forks}',
                f'steps:                    {self.steps}',
                f'node executions:          {self.node_executions} (executions - steps = '
                f'{self.node_executions - self.steps}; reclaims = {self.reclaims})',
                f'kills:                    {sum(self.kills.values())} ({kills})',
                f'requests per step:        {self.requests / per_step:.2f} ({self.requests})',
                f'conflicts per step:       {self.conflicts / per_step:.2f} ({self.conflicts} answered 412/409)',
                f'faults per step:          {self.faults / per_step:.2f} ({self.faults} injected: 500, 503, timeout)',
                f'retries per step:         {self.retries / per_step:.2f} ({self.retries}, reported by workers '
                'that lived to report them)',
                f'wall time:                {self.wall_seconds:.1f} s',
                'result:                   ' + ('OK' if not self.failures else 'FAILED: ' + '; '.join(self.failures)),
            ]
        )

    def as_json(self) -> str:
        data = {k: v for k, v in vars(self).items() if k != 'kills'}
        return json.dumps({**data, 'kills': dict(self.kills), 'failures': self.failures})


def drive(options: Options) -> Figures:
    # The proxy logs every connection a SIGKILLed worker left half-open: expected here, and noise.
    logging.getLogger('aiohttp.server').setLevel(logging.CRITICAL)
    random.seed(options.seed)
    run_ids = [f'run-{i:03d}' for i in range(options.runs)]
    figures = Figures(runs=options.runs)
    with tempfile.TemporaryDirectory() as directory, embedded_s3() as url, fault_proxy(url) as proxy:
        asyncio.run(_create_runs(url, run_ids, options.steps))
        proxy.random_faults(options.fault_rate, seed=options.seed)
        env = {
            **os.environ,
            **CREDENTIALS,
            'CHAOS_DIR': directory,
            'CHAOS_DIE_EVERY': str(options.die_every),
            'PYTHONPATH': str(ROOT),
        }
        command = [
            sys.executable,
            '-m',
            'benchmarks.chaos',
            'worker',
            proxy.url,
            ','.join(run_ids),
            str(options.reclaim_after),
            str(options.max_attempts),
        ]
        started = time.perf_counter()
        figures.kills = _supervise(command, env, options)
        figures.wall_seconds = time.perf_counter() - started
        proxy.clear()
        for exchange in proxy.log:
            figures.requests += 1
            figures.faults += exchange.injected
            figures.conflicts += exchange.fault is None and exchange.status in (409, 412)
        asyncio.run(_check_runs(url, run_ids, options.steps, figures))
        executions = Path(directory, 'executions.log')
        figures.node_executions = len(executions.read_text().splitlines()) if executions.exists() else 0
        for kind, _ in (line.split() for line in _lines(Path(directory, 'deaths.log'))):
            figures.kills[kind] += 1
        figures.retries = sum(int(line.split()[1]) for line in _lines(Path(directory, 'stats.log')))
    return figures


def _supervise(command: list[str], env: dict[str, str], options: Options) -> Counter[str]:
    """Run the workers until they all exit by themselves, SIGKILLing one now and then and starting another.

    There is no limit on the total time, which depends on the machine's load; only a run that made no progress
    (no node executed) for `--stall-timeout` seconds is given up on. Every worker dies with the driver.
    """
    kills: Counter[str] = Counter()
    progress = _Progress(Path(env['CHAOS_DIR']) / 'executions.log', options.stall_timeout)
    workers = [_start_worker(command, env) for _ in range(options.workers)]
    next_kill = time.monotonic() + random.expovariate(1 / options.kill_every)
    executions_at_last_kill = 0
    try:
        while any(w.poll() is None for w in workers):
            progress.check()
            for index, process in enumerate(workers):
                if process.poll() == -signal.SIGKILL:  # it killed itself: start another
                    workers[index] = _start_worker(command, env)
                elif process.poll() not in (None, 0):
                    raise RuntimeError(f'worker {process.pid} failed with exit code {process.returncode}')
            # A kill is due by the clock, but waits for a node executed since the last one: on a busy machine a
            # worker may need longer to start than the mean time between kills, and would never get to work.
            if time.monotonic() >= next_kill and progress.executions > executions_at_last_kill:
                executions_at_last_kill = progress.executions
                live = [i for i, w in enumerate(workers) if w.poll() is None]
                if live:
                    victim = random.choice(live)
                    workers[victim].kill()
                    workers[victim].wait()
                    kills['driver SIGKILL'] += 1
                    workers[victim] = _start_worker(command, env)
                next_kill = time.monotonic() + random.expovariate(1 / options.kill_every)
            time.sleep(0.02)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
            process.wait()
    return kills


def _start_worker(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return popen_dying_with_parent(command, env=env, cwd=ROOT)


@dataclass
class _Progress:
    """Fails when the workers executed no node for `stall_timeout` seconds: a hang, however slow the machine."""

    log: Path
    stall_timeout: float
    executions: int = 0
    """Node executions logged so far."""
    _since: float = field(default_factory=time.monotonic)

    def check(self) -> None:
        executions = len(_lines(self.log))
        if executions != self.executions:
            self.executions, self._since = executions, time.monotonic()
        elif time.monotonic() - self._since > self.stall_timeout:
            raise TimeoutError(f'no node executed for {self.stall_timeout:.0f}s ({executions} executions so far)')


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _session() -> aioboto3.Session:
    return aioboto3.Session(
        aws_access_key_id=CREDENTIALS['AWS_ACCESS_KEY_ID'],
        aws_secret_access_key=CREDENTIALS['AWS_SECRET_ACCESS_KEY'],
        region_name=CREDENTIALS['AWS_DEFAULT_REGION'],
    )


def _persistence(url: str, session: aioboto3.Session, run_id: str) -> S3StatePersistence[ChaosState, int]:
    settings = ClientSettings(endpoint_url=url)
    persistence: S3StatePersistence[ChaosState, int] = S3StatePersistence.for_run(
        run_id, bucket=BUCKET, session=session, client_settings=settings
    )
    persistence.set_graph_types(chaos_graph)
    return persistence


async def _create_runs(url: str, run_ids: list[str], steps: int) -> None:
    session = _session()
    async with session.client('s3', endpoint_url=url) as client:
        await client.create_bucket(Bucket=BUCKET)
    for run_id in run_ids:
        state = ChaosState(run=run_id, step=0, steps=steps)
        await chaos_graph.initialize(Work(), state=state, persistence=_persistence(url, session, run_id))


async def _check_runs(url: str, run_ids: list[str], steps: int, figures: Figures) -> None:
    session = _session()
    for run_id in run_ids:
        record = await _persistence(url, session, run_id).load_record()
        nodes = [s for s in record.snapshots if isinstance(s, NodeSnapshot)]
        ends = [s for s in record.snapshots if isinstance(s, EndSnapshot)]
        figures.steps += steps
        figures.runs_finished += len(ends) == 1 and isinstance(record.snapshots[-1], EndSnapshot)
        seen = Counter(s.state.step for s in nodes)
        figures.snapshots_lost += sum(1 for step in range(steps) if step not in seen)
        # A second snapshot of a step is a second successor of the step before; so is a second end.
        figures.forks += sum(n - 1 for n in seen.values()) + max(len(ends) - 1, 0)
        figures.forks += [s.state.step for s in nodes] != sorted(seen)
        figures.reclaims += sum(claim.attempt - 1 for claim in record.claims.values())


# --- the bursts scenario -------------------------------------------------------------------------------------------

BURST_PREFIX = 'bursts/'
# The PUTs of one run, in order, when a worker with reclaim_after runs it: which one each kind of write is.
BURST_WRITES = {'start': 0, 'claim+running': 1, 'success+successor': 2}


@dataclass
class Tick(BaseNode[ChaosState, None, int]):
    """One step of a bursts run: counts up, logs nothing, never dies."""

    async def run(self, ctx: GraphRunContext[ChaosState]) -> Tick | End[int]:
        ctx.state.step += 1
        return End(ctx.state.step) if ctx.state.step >= ctx.state.steps else Tick()


burst_graph = Graph(nodes=[Tick])


@dataclass
class BurstFigures:
    runs: int
    steps: int
    runs_finished: int = 0
    forks: int = 0
    bursts: int = 0
    faults: int = 0
    invocations: int = 0
    invocation_errors: int = 0
    busy_answers: int = 0
    reclaims: int = 0
    manual_steps: int = 0
    wall_seconds: float = 0.0
    by_write: dict[str, int] = field(default_factory=dict)
    """Per kind of write: the invocations that raised because its burst exhausted the retries."""

    @property
    def failures(self) -> list[str]:
        checks = {
            f'runs finished: {self.runs_finished} of {self.runs}': self.runs_finished == self.runs,
            f'forks: {self.forks}': self.forks == 0,
            f'manual steps: {self.manual_steps}': self.manual_steps == 0,
            # Every burst must have been long enough to make an invocation give up: else it proved nothing.
            f'bursts that exhausted retries: {sum(self.by_write.values())} of {self.bursts}': (
                all(n >= 1 for n in self.by_write.values()) and len(self.by_write) == len(BURST_WRITES)
            ),
        }
        return [name for name, ok in checks.items() if not ok]

    def report(self) -> str:
        lines = [f'{name + ":":26}{value}' for name, value in vars(self).items()]
        return '\n'.join(
            [*lines, 'result:                   ' + ('OK' if not self.failures else '; '.join(self.failures))]
        )

    def as_json(self) -> str:
        return json.dumps({**vars(self), 'failures': self.failures})


def drive_bursts(runs_per_write: int, steps: int, reclaim_after: float, max_invocations: int) -> BurstFigures:
    """Every kind of write of `runs_per_write` runs each meets a burst of 503s that exhausts the default retries."""
    logging.getLogger('aiohttp.server').setLevel(logging.CRITICAL)
    figures = BurstFigures(runs=runs_per_write * len(BURST_WRITES), steps=steps)
    burst_length = RetryPolicy().max_attempts  # the default policy gives up after this many attempts
    with embedded_s3() as url, fault_proxy(url) as proxy:
        asyncio.run(_create_bucket(url))
        # What the Terraform module sets, and the AWS environment of the function; nothing else is configured.
        os.environ.update(
            {
                **CREDENTIALS,
                'AWS_ENDPOINT_URL_S3': proxy.url,
                'PYDANTIC_GRAPH_S3_BUCKET': BUCKET,
                'PYDANTIC_GRAPH_S3_PREFIX': BURST_PREFIX,
                'PYDANTIC_GRAPH_S3_RECLAIM_AFTER': str(reclaim_after),
            }
        )
        runs: list[tuple[str, str]] = []
        for write, index in BURST_WRITES.items():
            for n in range(runs_per_write):
                run_id = f'burst-{write.replace("+", "-")}-{n}'
                key = re.escape(f'/{BUCKET}/{BURST_PREFIX}{run_id}.json')
                proxy.inject(Fault(status=503, method='PUT', path=key, after=index, times=burst_length))
                runs.append((write, run_id))
                figures.bursts += 1
        started = time.perf_counter()
        asyncio.run(_drive_burst_runs(runs, figures, max_invocations))
        figures.wall_seconds = time.perf_counter() - started
        figures.faults = proxy.counters['injected']
        proxy.clear()
        asyncio.run(_check_burst_runs(url, [run_id for _, run_id in runs], figures))
    return figures


async def _drive_burst_runs(runs: list[tuple[str, str]], figures: BurstFigures, max_invocations: int) -> None:
    worker = GraphWorker(burst_graph)  # the default settings: everything from the environment

    async def invoke(write: str, event: dict[str, Any]) -> dict[str, Any] | None:
        figures.invocations += 1
        try:
            return await worker.handle(event)
        except S3PersistenceError:
            # Lambda reports the error; the state machine's Retry invokes again after a pause.
            figures.invocation_errors += 1
            figures.by_write[write] = figures.by_write.get(write, 0) + 1
            await asyncio.sleep(0.2)
            return None

    async def drive(write: str, run_id: str) -> None:
        start = {'action': 'start', 'run_id': run_id, 'node': {'node_id': 'Tick'}}
        start['state'] = {'run': run_id, 'step': 0, 'steps': figures.steps}
        for _ in range(max_invocations):
            if await invoke(write, start) is not None:
                break
        for _ in range(max_invocations):
            result = await invoke(write, {'action': 'advance', 'run_id': run_id})
            if result is None:
                continue
            if result['status'] in ('done', 'failed'):
                return
            if result['status'] == 'busy':  # the state machine's WaitWhileBusy
                figures.busy_answers += 1
                await asyncio.sleep(0.25)
        figures.manual_steps += 1  # the run did not finish by itself within the bound

    await asyncio.gather(*(drive(write, run_id) for write, run_id in runs))
    await worker.persistence(runs[0][1]).load_all()  # keeps the shared client's loop alive to here


async def _create_bucket(url: str) -> None:
    async with _session().client('s3', endpoint_url=url) as client:
        await client.create_bucket(Bucket=BUCKET)


async def _check_burst_runs(url: str, run_ids: list[str], figures: BurstFigures) -> None:
    session = _session()
    for run_id in run_ids:
        persistence: S3StatePersistence[ChaosState, int] = S3StatePersistence.for_run(
            run_id,
            bucket=BUCKET,
            prefix=BURST_PREFIX,
            session=session,
            client_settings=ClientSettings(endpoint_url=url),
        )
        persistence.set_graph_types(burst_graph)
        record = await persistence.load_record()
        ends = [s for s in record.snapshots if isinstance(s, EndSnapshot)]
        steps = [s.state.step for s in record.snapshots if isinstance(s, NodeSnapshot)]
        figures.runs_finished += len(ends) == 1 and isinstance(record.snapshots[-1], EndSnapshot)
        # A second snapshot of a step is a second successor of the step before; so is a second end.
        figures.forks += len(steps) - len(set(steps)) + (steps != sorted(steps)) + max(len(ends) - 1, 0)
        figures.reclaims += sum(claim.attempt - 1 for claim in record.claims.values())


def bursts_main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.chaos bursts', description=__doc__)
    parser.add_argument('--runs-per-write', type=int, default=2)
    parser.add_argument('--steps', type=int, default=4)
    parser.add_argument('--reclaim-after', type=float, default=10.0, help='seconds (the module: lambda_timeout + 60)')
    parser.add_argument('--max-invocations', type=int, default=200, help='per run: the bound on the driver')
    parser.add_argument('--json', action='store_true', help='print the figures as one JSON object')
    parsed = parser.parse_args(args)
    figures = drive_bursts(parsed.runs_per_write, parsed.steps, parsed.reclaim_after, parsed.max_invocations)
    print(figures.as_json() if parsed.json else figures.report())
    return 1 if figures.failures else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ['bursts']:
        return bursts_main(args[1:])
    if args[:1] == ['worker']:
        endpoint, run_ids, reclaim_after, max_attempts = args[1:5]
        asyncio.run(work(endpoint, run_ids.split(','), float(reclaim_after), int(max_attempts)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--workers', type=int, default=8)
    parser.add_argument('--fault-rate', type=float, default=0.05, help='fraction of S3 requests that fail')
    parser.add_argument('--kill-every', type=float, default=2.0, help='mean seconds between driver SIGKILLs')
    parser.add_argument('--die-every', type=int, default=10, help='every N-th step dies on first execution (0: none)')
    parser.add_argument('--reclaim-after', type=float, default=1.5, help='seconds')
    parser.add_argument('--max-attempts', type=int, default=10)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument(
        '--stall-timeout', type=float, default=300.0, help='give up after this many seconds without a node executed'
    )
    parser.add_argument('--json', action='store_true', help='print the figures as one JSON object')
    parsed = parser.parse_args(args)
    options = Options(**{k: v for k, v in vars(parsed).items() if k != 'json'})
    figures = drive(options)
    print(figures.as_json() if parsed.json else figures.report())
    return 1 if figures.failures else 0


if __name__ == '__main__':
    sys.exit(main())
