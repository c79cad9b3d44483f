"""The path a run took, as a picture: a Mermaid state diagram, and a self-contained HTML page.

The diagram is pydantic-graph's own (`Graph.mermaid_code`), annotated with the run's history: the nodes it
visited are highlighted, every edge it took says how many times, and a node whose snapshot failed or is stuck is
marked. The HTML page draws the same diagram as an inline SVG made here, so it opens anywhere with no network
(its Content-Security-Policy forbids fetching anything), followed by the run's snapshot table.
"""

from __future__ import annotations as _annotations

import html
import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_graph.graph import Graph

from .runs import RunHistory, SnapshotRow

__all__ = ('RunPath', 'run_path', 'run_mermaid', 'run_html', 'END')

END = '[*]'
"""The start and end of a diagram, as Mermaid names them: an edge from it starts the run, one to it ends it."""

VISITED_CSS = 'fill:#fdff32'
FAILED_CSS = 'fill:#ff8080,stroke:#b00000,stroke-width:2px'
STUCK_CSS = 'fill:#ffb347,stroke:#b05a00,stroke-width:2px,stroke-dasharray:4 2'


@dataclass(frozen=True)
class RunPath:
    """What a run's history says about its way through the graph."""

    edges: Counter[tuple[str, str]] = field(default_factory=Counter)
    """How many times each edge was taken; `END` is the source of the first edge and the target of the last."""
    visited: tuple[str, ...] = ()
    """The nodes the run has snapshots of, in the order first seen."""
    failed: dict[str, str] = field(default_factory=dict)
    """Nodes whose last snapshot failed (`error`), with that snapshot's id; since the last rollback, if any."""
    stuck: dict[str, str] = field(default_factory=dict)
    """Nodes whose last snapshot has been claimed (`pending`/`running`) for longer than `stuck_after`."""
    rolled_back: tuple[tuple[str, str], ...] = ()
    """(snapshot id, the snapshot it is a copy of) for each rollback in the history."""


def run_path(history: RunHistory, *, now: datetime | None = None, stuck_after: timedelta) -> RunPath:
    """The edges a run took, counted, and its failed and stuck nodes.

    An edge is taken when a node snapshot succeeded and the next snapshot is its successor; a snapshot that a
    rollback appended is not anyone's successor (the run jumped back to it), so it starts no edge count.
    """
    now = datetime.now(tz=UTC) if now is None else now
    rows = history.snapshots
    edges: Counter[tuple[str, str]] = Counter()
    if rows and rows[0].node is not None:
        edges[(END, rows[0].node)] += 1
    for row, successor in itertools.pairwise(rows):
        rolled_back = successor.copy_of is not None and successor.copy_of.reason == 'rollback'
        if row.node is not None and row.status == 'success' and not rolled_back:
            edges[(row.node, successor.node or END)] += 1
    # Failed and stuck are said of the run's current course: what a rollback left behind is not failing now.
    since = max(
        (i for i, row in enumerate(rows) if row.copy_of is not None and row.copy_of.reason == 'rollback'), default=0
    )
    latest: dict[str, SnapshotRow] = {row.node: row for row in rows[since:] if row.node is not None}
    return RunPath(
        edges=edges,
        visited=tuple(dict.fromkeys(row.node for row in rows if row.node is not None)),
        failed={node: row.id for node, row in latest.items() if row.status == 'error'},
        stuck={node: row.id for node, row in latest.items() if _is_stuck(row, now, stuck_after)},
        rolled_back=tuple(
            (row.id, row.copy_of.snapshot_id)
            for row in rows
            if row.copy_of is not None and row.copy_of.reason == 'rollback'
        ),
    )


def _is_stuck(row: SnapshotRow, now: datetime, stuck_after: timedelta) -> bool:
    if row.status not in ('pending', 'running'):
        return False
    claimed = row.claimed_at or row.start
    return claimed is not None and now - claimed > stuck_after


_EDGE = re.compile(r'^  (?P<source>\S+) --> (?P<target>\S+)(?:: (?P<label>.*))?$')


def run_mermaid(graph: Graph[Any, Any, Any], history: RunHistory, path: RunPath) -> str:
    """pydantic-graph's Mermaid state diagram of `graph`, with the path of the run in `history` drawn on it.

    Raises `ValueError` when the history has a node the graph does not (it is another graph's run).
    """
    _check_nodes(graph, path)
    first = next((node for source, node in path.edges if source == END), None)
    plain = [node for node in path.visited if node not in path.failed and node not in path.stuck]
    code = graph.mermaid_code(
        start_node=first,
        title=f'run {history.run_id}',
        highlighted_nodes=plain or None,
        highlight_css=VISITED_CSS,
        notes=False,
        infer_name=False,
    )
    lines = [_with_count(line, path.edges) for line in code.splitlines()]
    drawn = {(m['source'], m['target']) for line in code.splitlines() if (m := _EDGE.match(line))}
    # A node returning a bare BaseNode has edges to every node; anything else missing is an edge the run took
    # that the graph does not declare (its code changed since): drawn all the same, since it happened.
    lines += [f'  {source} --> {target}: taken {count}x' for (source, target), count in path.edges.items()
              if (source, target) not in drawn]  # fmt: skip
    for css_class, css, nodes in (('failed', FAILED_CSS, path.failed), ('stuck', STUCK_CSS, path.stuck)):
        if nodes:
            lines.append(f'classDef {css_class} {css}')
            lines += [f'class {node} {css_class}' for node in nodes]
            lines += [f'note left of {node} : {css_class} (snapshot {sid})' for node, sid in nodes.items()]
    return '\n'.join(lines)


def _with_count(line: str, edges: Counter[tuple[str, str]]) -> str:
    match = _EDGE.match(line)
    if match is None or (count := edges.get((match['source'], match['target']), 0)) == 0:
        return line
    label = f'{match["label"]}, taken {count}x' if match['label'] else f'taken {count}x'
    return f'  {match["source"]} --> {match["target"]}: {label}'


def _check_nodes(graph: Graph[Any, Any, Any], path: RunPath) -> None:
    unknown = sorted(set(path.visited) - set(graph.node_defs))
    if unknown:
        raise ValueError(
            f'the run has snapshots of node(s) {", ".join(unknown)}, which are not in this graph '
            f'(nodes: {", ".join(graph.node_defs)}): pass the graph the run was made with'
        )


# The HTML page. The layout is deliberately simple: the graph's nodes in one column in the graph's order, the
# start above and the end below; an edge to the next node down is a straight line, a self-loop a loop on the
# right, and any other edge an arc on the right (downwards) or the left (upwards).

_BOX_W, _BOX_H, _GAP, _MARGIN, _SIDE = 180, 40, 70, 30, 260


@dataclass(frozen=True)
class _Place:
    x: float
    y: float


def run_svg(graph: Graph[Any, Any, Any], path: RunPath) -> str:
    """An SVG of the graph with the run's path on it, as `run_mermaid` annotates it (no script, no fonts)."""
    _check_nodes(graph, path)
    nodes = list(graph.node_defs)
    edges = _graph_edges(graph) | set(path.edges)
    order = [END, *nodes, f'{END}end']
    centre_x = _MARGIN + _SIDE + _BOX_W / 2
    places = {name: _Place(centre_x, _MARGIN + 20 + i * (_BOX_H + _GAP)) for i, name in enumerate(order)}
    width = centre_x * 2
    height = places[order[-1]].y + _MARGIN + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="the path of the run">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" '
        'markerWidth="12" markerHeight="12" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker></defs>',
    ]
    for index, (source, target) in enumerate(sorted(edges)):
        end = places[f'{END}end' if target == END else target]
        parts.append(_edge_svg(source, target, places[source], end, path.edges.get((source, target), 0), index))
    for name in order:
        parts.append(_node_svg(name, places[name], path))
    parts.append('</svg>')
    return '\n'.join(parts)


def _graph_edges(graph: Graph[Any, Any, Any]) -> set[tuple[str, str]]:
    edges: set[tuple[str, str]] = set()
    for node_id, node_def in graph.node_defs.items():
        targets = graph.node_defs if node_def.returns_base_node else node_def.next_node_edges
        edges |= {(node_id, target) for target in targets}
        if node_def.end_edge is not None:
            edges.add((node_id, END))
    return edges


def _edge_svg(source: str, target: str, start: _Place, end: _Place, count: int, index: int) -> str:
    taken = count > 0
    style = 'stroke:#d62728;stroke-width:3' if taken else 'stroke:#999;stroke-width:1.2;stroke-dasharray:5 3'
    top, bottom = start.y + _BOX_H / 2, end.y - _BOX_H / 2
    if source == target:
        right = start.x + _BOX_W / 2
        d = f'M{right},{start.y - 10} C{right + 70},{start.y - 40} {right + 70},{start.y + 40} {right},{start.y + 10}'
        label_x, label_y = right + 62, start.y
    elif end.y > start.y and abs(end.y - start.y - (_BOX_H + _GAP)) < 1:
        d = f'M{start.x},{top} L{end.x},{bottom}'
        label_x, label_y = start.x + 8, (top + bottom) / 2
    else:
        side = 1 if end.y > start.y else -1
        edge_x = start.x + side * _BOX_W / 2
        bulge = edge_x + side * (40 + 18 * (index % 5))
        d = f'M{edge_x},{start.y} C{bulge},{start.y} {bulge},{end.y} {edge_x},{end.y}'
        label_x, label_y = bulge + (4 if side > 0 else -60), (start.y + end.y) / 2
    title = f'{_name(source)} to {_name(target)}: taken {count}x' if taken else f'{_name(source)} to {_name(target)}'
    label = f'<text x="{label_x:.0f}" y="{label_y:.0f}" font-size="12" fill="#d62728">{count}x</text>' if taken else ''
    classes = 'edge taken' if taken else 'edge'
    return (
        f'<g class="{classes}" data-source="{html.escape(source)}" data-target="{html.escape(target)}" '
        f'data-count="{count}"><title>{html.escape(title)}</title>'
        f'<path d="{d}" fill="none" style="{style}" marker-end="url(#arrow)"/>{label}</g>'
    )


def _node_svg(name: str, place: _Place, path: RunPath) -> str:
    if name.startswith(END):
        filled = '#000' if name == END else '#fff'
        inner = '' if name == END else f'<circle cx="{place.x}" cy="{place.y}" r="7" fill="#000"/>'
        what = 'start' if name == END else 'end'
        return (
            f'<g class="terminal" data-node="{what}"><title>{what}</title><circle cx="{place.x}" cy="{place.y}" '
            f'r="12" fill="{filled}" stroke="#000" stroke-width="2"/>{inner}</g>'
        )
    if name in path.failed:
        kind, fill, note = 'failed', '#ff8080', f'failed: snapshot {path.failed[name]}'
    elif name in path.stuck:
        kind, fill, note = 'stuck', '#ffb347', f'stuck: snapshot {path.stuck[name]}'
    elif name in path.visited:
        kind, fill, note = 'visited', '#fdff32', 'visited'
    else:
        kind, fill, note = 'unvisited', '#ececff', 'not visited'
    x, y = place.x - _BOX_W / 2, place.y - _BOX_H / 2
    text = html.escape(name)
    return (
        f'<g class="node {kind}" data-node="{text}"><title>{text}: {html.escape(note)}</title>'
        f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="10" fill="{fill}" stroke="#333"/>'
        f'<text x="{place.x}" y="{place.y + 5}" text-anchor="middle" font-size="14">{text}</text></g>'
    )


def _name(node: str) -> str:
    return node if node != END else 'start/end'


def run_html(
    graph: Graph[Any, Any, Any] | None, history: RunHistory, path: RunPath, *, generated: datetime | None = None
) -> str:
    """One self-contained HTML page: the diagram (with `graph`), its Mermaid source, and the snapshot table."""
    generated = datetime.now(tz=UTC) if generated is None else generated
    title = f'run {history.run_id}'
    body: list[str] = [f'<h1>{html.escape(title)}</h1>', _summary(history, path)]
    if graph is not None:
        body += [
            '<h2>Path taken</h2>',
            f'<figure id="diagram">{run_svg(graph, path)}</figure>',
            '<details><summary>Mermaid source</summary>',
            f'<pre id="mermaid">{html.escape(run_mermaid(graph, history, path))}</pre></details>',
        ]
    body += ['<h2>Snapshots</h2>', _table(history.snapshots)]
    return _PAGE.format(
        title=html.escape(title),
        body='\n'.join(body),
        generated=html.escape(generated.strftime('%Y-%m-%d %H:%M:%S UTC')),
    )


def _summary(history: RunHistory, path: RunPath) -> str:
    facts = [
        f'{len(history.snapshots)} snapshots',
        'ended'
        if history.ended
        else f'not ended (last status: {history.snapshots[-1].status})'
        if history.snapshots
        else 'empty',
        f'decoded with {history.decoded_with}' if history.decoded_with else 'raw JSON',
    ]
    facts += [f'rolled back: snapshot {new} is a copy of {old}' for new, old in path.rolled_back]
    facts += [f'failed: {node} (snapshot {sid})' for node, sid in path.failed.items()]
    facts += [f'stuck: {node} (snapshot {sid})' for node, sid in path.stuck.items()]
    return '<ul id="summary">' + ''.join(f'<li>{html.escape(fact)}</li>' for fact in facts) + '</ul>'


def _table(rows: Sequence[SnapshotRow]) -> str:
    head = ''.join(
        f'<th>{column}</th>' for column in ('#', 'snapshot id', 'node', 'status', 'start', 'duration', 'origin')
    )
    lines = [f'<table id="snapshots"><thead><tr>{head}</tr></thead><tbody>']
    for index, row in enumerate(rows):
        cells = (
            str(index),
            row.id,
            row.node or 'End',
            row.status,
            '' if row.start is None else row.start.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f UTC'),
            '' if row.duration is None else f'{row.duration * 1000:.1f} ms',
            '' if row.copy_of is None else f'{row.copy_of.reason} of {row.copy_of.run_id}/{row.copy_of.snapshot_id}',
        )
        tds = ''.join(f'<td>{html.escape(cell)}</td>' for cell in cells)
        lines.append(f'<tr class="status-{html.escape(row.status)}">{tds}</tr>')
    lines.append('</tbody></table>')
    return '\n'.join(lines)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 13px; }}
tr.status-error td {{ background: #ffe0e0; }}
tr.status-pending td, tr.status-running td {{ background: #fff3d6; }}
figure {{ margin: 0; }}
footer {{ margin-top: 2em; color: #777; font-size: 12px; }}
</style>
</head>
<body>
{body}
<footer>made by pydantic-graph-s3 at {generated}</footer>
</body>
</html>
"""
