"""Insight: the path a run took as a Mermaid diagram and an HTML page, and the usage summary of a prefix."""

from __future__ import annotations as _annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import anyio
import pytest
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from pydantic_graph_s3 import RunStore
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.insight import END, run_html, run_mermaid, run_path

from .conftest import FAST_RETRY, S3Bucket
from .test_cli import GRAPH, cli

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def store(s3: S3Bucket, **options: Any) -> RunStore:
    return RunStore(s3.bucket, 'runs/', session=s3.session, client_settings=s3.settings, retry=FAST_RETRY, **options)


@dataclass
class Fragile:
    fail_at: int


@dataclass
class Step(BaseNode[Fragile, None, str]):
    """Counts down, and breaks at `fail_at`."""

    left: int

    async def run(self, ctx: GraphRunContext[Fragile]) -> Step | Break | End[str]:
        if self.left == ctx.state.fail_at:
            return Break()
        return End('done') if self.left == 0 else Step(self.left - 1)


@dataclass
class Break(BaseNode[Fragile, None, str]):
    async def run(self, ctx: GraphRunContext[Fragile]) -> End[str]:
        raise RuntimeError('broken on purpose')


fragile_graph: Graph[Fragile, None, str] = Graph(nodes=[Step, Break])


async def test_mermaid_highlights_the_path_and_counts_each_edge(s3: S3Bucket) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(3), persistence=s3.persistence('down'))

    shown = await cli(s3, 'runs', 'show', 'down', '--graph', GRAPH, '--mermaid')
    assert shown.code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert 'stateDiagram-v2' in lines
    # Four CountDown snapshots (3, 2, 1, 0), then the end: entered once, looped three times, ended once.
    assert '  [*] --> CountDown: taken 1x' in lines
    assert '  CountDown --> CountDown: taken 3x' in lines
    assert '  CountDown --> [*]: taken 1x' in lines
    assert 'class CountDown highlighted' in lines
    assert 'failed' not in shown.stdout

    no_graph = await cli(s3, 'runs', 'show', 'down', '--mermaid')
    assert no_graph.code == 2 and 'pass --graph' in no_graph.stderr


async def test_failed_and_stuck_nodes_are_marked(s3: S3Bucket) -> None:
    failed = s3.persistence('failed')
    with pytest.raises(RuntimeError, match='on purpose'):
        await fragile_graph.run(Step(2), state=Fragile(fail_at=1), persistence=failed)
    history = await store(s3).history('failed', fragile_graph)
    path = run_path(history, stuck_after=timedelta(minutes=15))
    assert path.edges == {(END, 'Step'): 1, ('Step', 'Step'): 1, ('Step', 'Break'): 1}
    assert path.failed == {'Break': history.snapshots[-1].id}
    code = run_mermaid(fragile_graph, history, path)
    assert 'class Break failed' in code.splitlines() and 'class Step highlighted' in code.splitlines()
    assert 'class Break highlighted' not in code
    assert '  Step --> Break: taken 1x' in code.splitlines()
    assert '  Break --> [*]' in code.splitlines(), 'an edge not taken stays, without a count'

    # A worker claims the next step and dies: stuck once its claim is older than stuck_after, not before.
    await count_down_graph.initialize(CountDown(), state=CountDownState(1), persistence=s3.persistence('stuck'))
    claimer = s3.persistence('stuck', reclaim_after=timedelta(minutes=5))
    claimer.set_graph_types(count_down_graph)
    claimed = await claimer.load_next()
    assert claimed is not None
    history = await store(s3).history('stuck', count_down_graph)
    later = datetime.now(tz=UTC) + timedelta(minutes=20)
    assert run_path(history, stuck_after=timedelta(minutes=15)).stuck == {}
    path = run_path(history, now=later, stuck_after=timedelta(minutes=15))
    assert path.stuck == {'CountDown': claimed.id}
    assert 'class CountDown stuck' in run_mermaid(count_down_graph, history, path).splitlines()


async def test_a_graph_that_is_not_the_runs_is_refused(s3: S3Bucket) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(1), persistence=s3.persistence('down'))
    history = await store(s3).history('down')
    with pytest.raises(ValueError, match=r'CountDown, which are not in this graph'):
        run_mermaid(fragile_graph, history, run_path(history, stuck_after=timedelta(minutes=1)))


class _Page(HTMLParser):
    """The parts of the page the test checks: tags, attributes that could fetch something, the table's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.fetching: list[tuple[str, str]] = []
        self.rows = 0
        self.csp = ''

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        self.fetching += [(tag, name) for name in ('src', 'href', 'srcset', 'data') if values.get(name)]
        if tag == 'tr':
            self.rows += 1
        if values.get('http-equiv') == 'Content-Security-Policy':
            self.csp = values.get('content') or ''


async def test_html_page_is_self_contained(s3: S3Bucket, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        await fragile_graph.run(Step(3), state=Fragile(fail_at=1), persistence=s3.persistence('failed'))
    page_file = tmp_path / 'run.html'
    shown = await cli(
        s3, 'runs', 'show', 'failed', '--graph', 'tests.test_insight:fragile_graph', '--html', str(page_file)
    )
    assert shown.code == 0, shown.stderr
    page = page_file.read_text()

    parsed = _Page()
    parsed.feed(page)
    assert parsed.fetching == [], 'nothing on the page may load anything'
    assert "default-src 'none'" in parsed.csp
    assert 'script' not in parsed.tags
    assert parsed.rows == 1 + 4, 'a header and one row per snapshot (Step 3, 2, 1, then Break)'
    svg = ElementTree.fromstring(page[page.index('<svg') : page.index('</svg>') + len('</svg>')])
    ns = '{http://www.w3.org/2000/svg}'
    groups = {(g.get('class'), g.get('data-node') or (g.get('data-source'), g.get('data-target'), g.get('data-count')))
              for g in svg.iter(f'{ns}g')}  # fmt: skip
    assert ('node failed', 'Break') in groups and ('node visited', 'Step') in groups
    assert ('edge taken', ('Step', 'Step', '2')) in groups
    assert ('edge', ('Break', END, '0')) in groups, 'the edge not taken is drawn, unmarked'


def _pixels(png: bytes) -> set[tuple[int, int, int]]:
    """The distinct colours of an 8-bit RGB(A) PNG (what headless Chromium writes), decoded with zlib alone."""
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    position, data, header = 8, b'', b''
    while position < len(png):
        (length,) = struct.unpack('>I', png[position : position + 4])
        kind, chunk = png[position + 4 : position + 8], png[position + 8 : position + 8 + length]
        header = chunk if kind == b'IHDR' else header
        data += chunk if kind == b'IDAT' else b''
        position += 12 + length
    width, height, depth, colour = struct.unpack('>IIBB', header[:10])
    assert depth == 8 and colour in (2, 6)
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw, previous = zlib.decompress(data), bytearray(stride)
    colours: set[tuple[int, int, int]] = set()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        colours |= {(line[x], line[x + 1], line[x + 2]) for x in range(0, stride, channels)}
        previous = line
    return colours


CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


@pytest.mark.skipif(CHROMIUM is None, reason='no headless Chromium on this machine')
async def test_html_page_renders_offline_in_a_real_browser(s3: S3Bucket, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        await fragile_graph.run(Step(2), state=Fragile(fail_at=1), persistence=s3.persistence('failed'))
    history = await store(s3).history('failed', fragile_graph)
    page = tmp_path / 'run.html'
    page.write_text(run_html(fragile_graph, history, run_path(history, stuck_after=timedelta(minutes=15))))
    shot = tmp_path / 'shot.png'
    assert CHROMIUM is not None
    # No network at all: a proxy that does not exist, so any fetch the page tried would fail to render.
    browser = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--proxy-server=127.0.0.1:9', '--no-first-run']
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [*browser, f'--screenshot={shot}', '--window-size=900,1400', page.as_uri()], check=False
        )
        dom = await anyio.run_process([*browser, '--dump-dom', page.as_uri()], check=False)
    assert done.returncode == 0 and shot.exists(), done.stderr.decode()[-2000:]
    colours = _pixels(shot.read_bytes())
    assert (0xFD, 0xFF, 0x32) in colours, 'the visited node is drawn highlighted'
    assert (0xFF, 0x80, 0x80) in colours, 'the failed node is drawn in red'
    assert b'<svg' in dom.stdout and b'status-error' in dom.stdout


async def test_stats_counts_runs_by_status_from_heads_only(s3: S3Bucket) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(2), persistence=s3.persistence('ended'))
    await count_down_graph.initialize(CountDown(), state=CountDownState(2), persistence=s3.persistence('waiting'))
    with pytest.raises(RuntimeError):
        await fragile_graph.run(Step(1), state=Fragile(fail_at=1), persistence=s3.persistence('failed'))
    for run_id in ('active', 'stuck'):
        await count_down_graph.initialize(CountDown(), state=CountDownState(2), persistence=s3.persistence(run_id))
        worker = s3.persistence(run_id, reclaim_after=timedelta(minutes=5))
        worker.set_graph_types(count_down_graph)
        assert await worker.load_next() is not None
    # The stuck run's worker claimed its step an hour ago and never came back.
    body, _, _ = await s3.get('runs/stuck.json')
    an_hour_ago = (datetime.now(tz=UTC) - timedelta(hours=1)).isoformat().encode()
    await s3.put('runs/stuck.json', re.sub(rb'"claimed_at": "[^"]+"', b'"claimed_at": "' + an_hour_ago + b'"', body))
    await s3.put('runs/junk.json', b'{"not": "a run"}')
    # Segments of a run's earlier history: counted to that run, never as runs of their own. Other keys with a `~`
    # are nobody's.
    await s3.put('runs/ended~abc123abc123~00000001.json', b'[]' + b' ' * 98)
    await s3.put('runs/gone~abc123abc123~00000001.json', b'[]' + b' ' * 48)
    await s3.put('runs/ended~notes.txt', b'not history')
    await s3.put('runs/nested/other.json', b'[]')

    runs = store(s3, page_size=3)
    summary = await runs.stats(stuck_after=timedelta(minutes=15), remember=False)

    assert summary.runs == 6
    assert dict(summary.by_status) == {
        'active': 1,
        'waiting': 1,
        'stuck': 1,
        'failed': 1,
        'ended': 1,
        'unreadable': 1,
    }
    listed = await _listing(s3)
    assert summary.bytes.max == listed['runs/ended.json'] + 100
    assert (summary.objects.max, summary.objects.total) == (2, 7)
    assert (summary.headless_objects, summary.headless_bytes) == (1, 50)
    assert summary.snapshots.total == 3 + 1 + 3 + 1 + 1, 'ended, waiting, failed, active, stuck (junk has none)'
    assert summary.oldest_active is not None and summary.oldest_active.run_id in ('waiting', 'active', 'stuck')
    # One listing pass (10 objects in pages of 3) and one GET per head, nothing else: nothing remembered.
    assert (runs.request_stats.lists, runs.request_stats.gets, runs.request_stats.puts) == (4, 6, 0)
    assert summary.requests == 10

    shown = await cli(s3, 'runs', 'stats', '--json')
    assert shown.code == 0, shown.stderr
    assert shown.json()['by_status'] == dict(summary.by_status)
    table = await cli(s3, 'runs', 'stats')
    assert table.code == 0, table.stderr
    assert '6 runs (1 active, 1 waiting, 1 stuck, 1 failed, 1 ended, 1 unreadable)' in table.stdout


async def _listing(s3: S3Bucket) -> dict[str, int]:
    response = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix='runs/')
    return {item['Key']: item['Size'] for item in response.get('Contents', [])}


@pytest.mark.timeout(600)
def test_stats_benchmark_reads_each_head_once_then_only_changed_ones() -> None:
    """`python -m benchmarks.stats`, scaled down: past one listing page (pages of 100), every head read once cold,
    none warm, and only the changed ones (every hundredth run) after a change."""
    runs = 250
    command = [sys.executable, '-m', 'benchmarks.stats', '--runs', str(runs), '--page-size', '100', '--json']
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures['runs'] == runs and figures['objects'] == runs + 25, 'a history object for every tenth run'
    pages = 3  # 275 objects and, from the warm summary on, the memo
    assert (figures['stats_lists'], figures['stats_gets']) == (pages, 1 + runs), 'the memo (missing), every head'
    assert figures['stats_requests'] == pages + 1 + runs + 1, 'and the memo written'
    assert (figures['warm_requests'], figures['warm_gets']) == (pages + 1, 1), 'the listing and the memo only'
    assert figures['changed_runs'] == 3
    assert (figures['changed_requests'], figures['changed_gets']) == (pages + 1 + 3 + 1, 1 + 3)
    assert sum(figures['by_status'].values()) == runs
