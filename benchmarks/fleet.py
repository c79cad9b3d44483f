"""Fleet throughput: N runs advanced by M worker processes, one fresh persistence per step, against what the
S3 server itself can take.

For each server (SeaweedFS and the embedded moto server) and each M, in one run:
- `--runs` count-down runs of `--steps` steps are created; then M worker processes advance them, each step with
  a fresh `S3StatePersistence` (claims on, as a deployed `GraphWorker` has them), as one Lambda invocation per
  step does. Runs are dealt out to the workers (run i to worker i mod M, each worker stepping its runs in
  turn), as one state machine execution per run gives each run one step in flight; `--shared` lets every
  worker step every run instead, so workers collide and the conflicts, retries and `busy` answers show;
- then the same request mix is sent bare by M processes to the same server: per step, the GET and the two
  conditional PUTs (`IfMatch`) of one step, of the bodies' measured mean sizes, and nothing else.

It prints aggregate steps per second and requests per step next to the bare mix's steps per second, and their
ratio, with conflicts, retries and busy answers per step and the client CPU per step. Requests are counted by a
botocore `before-send` hook on each worker's client. Times are wall times from a common start signal to the
last worker's end; ratios are taken within this one run.

    python -m benchmarks.fleet [--runs 200] [--steps 5] [--workers 1 2 4] [--servers seaweedfs moto] [--json]
"""

from __future__ import annotations as _annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aioboto3
from pydantic_graph import End
from pydantic_graph.exceptions import GraphRuntimeError
from pydantic_graph.persistence import EndSnapshot

from pydantic_graph_s3 import ClientSettings, S3StatePersistence
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_s3_cas import shared_client
from pydantic_s3_cas.child_process import popen_dying_with_parent
from tests.support.endpoints import S3Endpoint, moto_s3
from tests.support.seaweedfs import seaweedfs_s3

BUCKET = 'fleet'
RECLAIM_AFTER = timedelta(minutes=15)


@dataclass
class WorkerFigures:
    """What one worker process did, measured from the common start signal."""

    steps: int = 0
    busy: int = 0
    gets: int = 0
    puts: int = 0
    put_bytes: int = 0
    get_bytes: int = 0
    conflicts: int = 0
    retries: int = 0
    started: float = 0.0
    finished: float = 0.0
    cpu: float = 0.0


@dataclass(eq=False)  # botocore keys handlers by hash
class Traffic:
    """Requests and uploaded bytes, seen by a botocore `before-send` hook on a worker's client."""

    figures: WorkerFigures

    def __call__(self, request: Any, **_: Any) -> None:
        if request.method == 'GET':
            self.figures.gets += 1
        elif request.method == 'PUT':
            self.figures.puts += 1
            self.figures.put_bytes += int(request.headers.get('Content-Length', 0))


@dataclass(frozen=True)
class Job:
    """A worker process's task, passed as JSON on its command line."""

    kind: str
    """`fleet` (advance runs) or `bare` (send the request mix of their steps)."""
    endpoint: S3Endpoint
    prefix: str
    run_ids: list[str]
    shared: bool = False
    rounds: int = 0
    """`bare`: steps per run id (each a GET and two conditional PUTs)."""
    body_size: int = 0
    """`bare`: bytes of every PUT body and GET."""

    def bare_keys(self) -> list[str]:
        return self.run_ids if self.kind == 'bare' else []


# --- worker processes ------------------------------------------------------------------------------------------


def worker_main(raw: str) -> None:
    """A worker process: set up, say `ready`, wait for `go` on stdin, do its job, print its figures as JSON."""
    spec = json.loads(raw)
    job = Job(**{**spec, 'endpoint': S3Endpoint(**spec['endpoint'])})
    figures = asyncio.run(run_job(job))
    print(json.dumps(asdict(figures)), flush=True)


async def run_job(job: Job) -> WorkerFigures:
    endpoint = job.endpoint
    session = aioboto3.Session(
        aws_access_key_id=endpoint.access_key, aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region
    )
    settings = ClientSettings(endpoint_url=endpoint.url)
    client = await shared_client(session, settings)
    figures = WorkerFigures()
    if job.kind == 'bare':
        etags = {
            key: (await client.put_object(Bucket=BUCKET, Key=key, Body=b'x' * job.body_size))['ETag']
            for key in job.run_ids
        }
    client.meta.events.register('before-send.s3', Traffic(figures))
    print('ready', flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    figures.started, cpu = time.time(), time.process_time()
    if job.kind == 'bare':
        await send_bare(client, job, etags, figures)
    else:
        await advance(job, session, settings, figures)
    figures.finished, figures.cpu = time.time(), time.process_time() - cpu
    return figures


async def advance(job: Job, session: aioboto3.Session, settings: ClientSettings, figures: WorkerFigures) -> None:
    """Step each unfinished run in turn, one fresh persistence per step, until every run has ended."""
    pending = list(job.run_ids)
    rng = random.Random(os.getpid())
    while pending:
        if job.shared:
            rng.shuffle(pending)
        for run_id in list(pending):
            persistence: S3StatePersistence[CountDownState, int] = S3StatePersistence.for_run(
                run_id,
                bucket=BUCKET,
                prefix=job.prefix,
                session=session,
                client_settings=settings,
                reclaim_after=RECLAIM_AFTER,
            )
            try:
                async with count_down_graph.iter_from_persistence(persistence, infer_name=False) as run:
                    ended = isinstance(await run.next(), End)
                figures.steps += 1
            except GraphRuntimeError:
                # Nothing to claim: another worker holds the step (`--shared`), or ended the run meanwhile.
                figures.busy += 1
                ended = isinstance((await persistence.load_tail()).snapshots[-1], EndSnapshot)
            stats = persistence.stats
            figures.conflicts += stats.conflicts
            figures.retries += stats.retries
            figures.get_bytes += stats.bytes_received
            if ended:
                pending.remove(run_id)


async def send_bare(client: Any, job: Job, etags: dict[str, str], figures: WorkerFigures) -> None:
    """The request mix of the same steps with nothing else: a GET, then two conditional PUTs, per step."""
    body = b'x' * job.body_size
    for _ in range(job.rounds):
        for key in job.run_ids:
            response = await client.get_object(Bucket=BUCKET, Key=key)
            async with response['Body'] as stream:
                figures.get_bytes += len(await stream.read())
            etag = (await client.put_object(Bucket=BUCKET, Key=key, Body=body, IfMatch=response['ETag']))['ETag']
            etags[key] = (await client.put_object(Bucket=BUCKET, Key=key, Body=body, IfMatch=etag))['ETag']
            figures.steps += 1


# --- the driver ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One server and worker count: the fleet's figures beside the bare mix's."""

    server: str
    workers: int
    shared: bool
    steps: int
    seconds: float
    requests_per_step: float
    gets_per_step: float
    puts_per_step: float
    conflicts_per_step: float
    retries_per_step: float
    busy_per_step: float
    cpu_ms_per_step: float
    bare_steps: int
    bare_seconds: float
    bare_requests_per_step: float
    bare_cpu_ms_per_step: float
    put_body_bytes: int
    get_body_bytes: int

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    @property
    def bare_steps_per_second(self) -> float:
        return self.bare_steps / self.bare_seconds

    @property
    def ratio(self) -> float:
        return self.steps_per_second / self.bare_steps_per_second


def run_workers(jobs: list[Job]) -> list[WorkerFigures]:
    """Start one process per job, start them all at once when all are ready, and collect their figures."""
    processes = [
        popen_dying_with_parent(
            [sys.executable, '-m', 'benchmarks.fleet', 'worker', json.dumps(asdict(job))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for job in jobs
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != 'ready':
                raise RuntimeError(f'a worker failed to start (exit code {process.wait()})')
        for process in processes:
            assert process.stdin is not None
            process.stdin.write('go\n')
            process.stdin.flush()
        results = []
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if process.wait() != 0 or not line:
                raise RuntimeError(f'a worker failed (exit code {process.returncode})')
            results.append(WorkerFigures(**json.loads(line)))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


async def create_runs(endpoint: S3Endpoint, prefix: str, run_ids: list[str], steps: int) -> None:
    session = aioboto3.Session(
        aws_access_key_id=endpoint.access_key, aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region
    )
    settings = ClientSettings(endpoint_url=endpoint.url)
    client = await shared_client(session, settings)
    if prefix == 'setup/':
        await client.create_bucket(Bucket=BUCKET)
        return
    for run_id in run_ids:
        persistence: S3StatePersistence[CountDownState, int] = S3StatePersistence.for_run(
            run_id, bucket=BUCKET, prefix=prefix, session=session, client_settings=settings
        )
        persistence.set_graph_types(count_down_graph)
        await persistence.initialize_run(CountDownState(steps - 1), CountDown())


def measure(server: str, endpoint: S3Endpoint, workers: int, runs: int, steps: int, shared: bool) -> Row:
    prefix = f'm{workers}{"-shared" if shared else ""}/'
    run_ids = [f'run-{i:05d}' for i in range(runs)]
    asyncio.run(create_runs(endpoint, prefix, run_ids, steps))
    deals = [run_ids] * workers if shared else [run_ids[i::workers] for i in range(workers)]
    fleet = run_workers([Job('fleet', endpoint, prefix, deal, shared) for deal in deals])
    total = _sum(fleet)
    put_size = total.put_bytes // max(total.puts, 1)
    get_size = total.get_bytes // max(total.gets, 1)
    # The bare mix: the same steps (a GET and two conditional PUTs each) on the same number of objects, dealt out
    # the same way, with bodies of the fleet's mean PUT size.
    bare_ids = [f'bare-{prefix.rstrip("/")}-{i:05d}' for i in range(runs)]
    bare_deals = [bare_ids[i::workers] for i in range(workers)]
    bare = run_workers([Job('bare', endpoint, prefix, deal, rounds=steps, body_size=put_size) for deal in bare_deals])
    bare_total = _sum(bare)
    done = total.steps
    return Row(
        server=server,
        workers=workers,
        shared=shared,
        steps=done,
        seconds=_span(fleet),
        requests_per_step=(total.gets + total.puts) / done,
        gets_per_step=total.gets / done,
        puts_per_step=total.puts / done,
        conflicts_per_step=total.conflicts / done,
        retries_per_step=total.retries / done,
        busy_per_step=total.busy / done,
        cpu_ms_per_step=total.cpu / done * 1000,
        bare_steps=bare_total.steps,
        bare_seconds=_span(bare),
        bare_requests_per_step=(bare_total.gets + bare_total.puts) / bare_total.steps,
        bare_cpu_ms_per_step=bare_total.cpu / bare_total.steps * 1000,
        put_body_bytes=put_size,
        get_body_bytes=get_size,
    )


def _sum(figures: list[WorkerFigures]) -> WorkerFigures:
    total = WorkerFigures()
    for one in figures:
        for name, value in asdict(one).items():
            setattr(total, name, getattr(total, name) + value)
    return total


def _span(figures: list[WorkerFigures]) -> float:
    return max(f.finished for f in figures) - min(f.started for f in figures)


@contextmanager
def server(name: str) -> Iterator[S3Endpoint]:
    if name == 'moto':
        with moto_s3() as endpoint:
            yield endpoint
        return
    with tempfile.TemporaryDirectory() as tmp, seaweedfs_s3(Path(tmp)) as endpoint:
        yield endpoint


def main(args: argparse.Namespace) -> list[Row]:
    rows = []
    for name in args.servers:
        with server(name) as endpoint:
            asyncio.run(create_runs(endpoint, 'setup/', [], 0))
            for workers in args.workers:
                for shared in (False, True) if args.shared else (False,):
                    rows.append(measure(name, endpoint, workers, args.runs, args.steps, shared))
                    if not args.json:
                        print(_line(rows[-1]), flush=True)
    return rows


HEADER = (
    f'{"server":10} {"M":>2} {"deal":7} {"steps":>6} {"steps/s":>8} {"req/step":>8} {"conf/step":>9} '
    f'{"retr/step":>9} {"busy/step":>9} {"cpu ms/step":>11} {"bare steps/s":>12} {"bare cpu ms":>11} {"ratio":>6}'
)


def _line(row: Row) -> str:
    deal = 'shared' if row.shared else 'dealt'
    return (
        f'{row.server:10} {row.workers:>2} {deal:7} {row.steps:>6} {row.steps_per_second:>8.1f} '
        f'{row.requests_per_step:>8.2f} {row.conflicts_per_step:>9.3f} {row.retries_per_step:>9.3f} '
        f'{row.busy_per_step:>9.3f} {row.cpu_ms_per_step:>11.2f} {row.bare_steps_per_second:>12.1f} '
        f'{row.bare_cpu_ms_per_step:>11.2f} {row.ratio:>6.2f}'
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.fleet', description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=200)
    parser.add_argument('--steps', type=int, default=5, help='steps per run (nodes, the last one ending it)')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2, 4])
    parser.add_argument('--servers', nargs='+', choices=['seaweedfs', 'moto'], default=['seaweedfs', 'moto'])
    parser.add_argument('--shared', action='store_true', help='also: every worker steps every run (collisions)')
    parser.add_argument('--json', action='store_true', help='print the rows as one JSON list')
    return parser.parse_args(argv)


if __name__ == '__main__':
    if sys.argv[1:2] == ['worker']:
        worker_main(sys.argv[2])
    else:
        options = parse()
        if not options.json:
            print(f'{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start')
            print(HEADER)
        result = main(options)
        if options.json:
            print(json.dumps([{**asdict(r), 'ratio': r.ratio} for r in result]))
        else:
            print(f"load average {os.getloadavg()[0]:.2f} at the end; ratio = steps/s over the bare mix's steps/s")
