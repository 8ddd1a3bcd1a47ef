"""`streamgate scan -o html`: the scan as one self-contained HTML page.

    html = render(report)        # a scan `Report` -> the whole page, as text

The page needs no network: its CSS and the few lines of JavaScript that sort the tables are
inline, the charts are inline SVG drawn here, and a Content-Security-Policy allows nothing but
that exact style and script (by hash): no request leaves the page, and markup that slipped
into it could not run. Everything from the cluster — image names, namespaces, reasons, labels
— is tenant-controlled, so every text goes through `_e` (HTML-escaped, control characters
written as escapes) and nothing is put in a script.

What it shows (docs/operations.md, "HTML report"): the share of pods and workloads that stream,
overall, by namespace and by node pool; the images to convert first (most pods first) with the
`az acr artifact-streaming create` command each; the pools that can't stream and why; the
workloads pinned by digest or pulling with imagePullSecrets; every workload.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from app.cli.scan import Report, Row
from app.core.evaluate import Severity
from app.core.images import ImageRef
from app.core.messages import conversion_helps, digest_pinned, fix_command, printable, pull_secrets
from app.core.pools import PoolFit, Streaming
from app.core.verdicts import ImageVerdict, Verdict


def _e(value: object) -> str:
    """Text for HTML (element content or a quoted attribute)."""
    return html.escape(printable(str(value)), quote=True)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


# ---- what the page counts ------------------------------------------------------------------


@dataclass
class Share:
    """Workloads and pods of one group (a namespace, a pool) and how many of them stream."""

    label: str
    workloads: int = 0
    streaming_workloads: int = 0
    pods: int = 0
    streaming_pods: int = 0

    def add(self, row: Row, streams: bool) -> None:
        self.workloads += 1
        self.pods += row.pods
        if streams:
            self.streaming_workloads += 1
            self.streaming_pods += row.pods


@dataclass
class PoolShare(Share):
    fit: PoolFit = field(default_factory=lambda: PoolFit("", Streaming.UNKNOWN))


@dataclass
class Conversion:
    """An image not streamable, what asks ACR for its artifact, and who would gain."""

    ref: ImageRef
    verdict: ImageVerdict
    command: str | None  # None while a conversion is under way, or when one can't help
    workloads: int = 0
    pods: int = 0


def overall(report: Report) -> Share:
    share = Share("all")
    for row in report.rows:
        share.add(row, row.will_stream)
    return share


def by_namespace(report: Report) -> list[Share]:
    shares: dict[str, Share] = {}
    for row in report.rows:
        shares.setdefault(row.namespace, Share(row.namespace)).add(row, row.will_stream)
    return sorted(shares.values(), key=lambda s: (-s.pods, s.label))


def streams_on(row: Row, fit: PoolFit) -> bool:
    """Would this workload's pods stream on that pool: every ACR image streamable, pulled by
    tag, without pull secrets, and the pool streams."""
    return (
        row.status == "streamable"
        and not row.digest_pinned
        and not row.pull_secrets
        and fit.streaming is Streaming.YES
    )


def by_pool(report: Report) -> list[PoolShare]:
    """Each pool with the workloads that may land on it (a workload that fits several pools
    counts in each; skipped workloads are not placed)."""
    shares = {fit.name: PoolShare(fit.name, fit=fit) for fit in report.pools}
    for row in report.rows:
        if not row.placement.known:
            continue
        for fit in row.placement.pools:
            share = shares.setdefault(fit.name, PoolShare(fit.name, fit=fit))
            share.add(row, streams_on(row, fit))
    return sorted(shares.values(), key=lambda s: (-s.pods, s.label))


def to_convert(report: Report) -> list[Conversion]:
    """Images not streamable, most pods first (then most workloads, then by name)."""
    found: dict[ImageRef, Conversion] = {}
    for row in report.rows:
        seen: set[ImageRef] = set()
        for r in row.judged:
            if r.ref is None or r.verdict.verdict is not Verdict.NOT_STREAMABLE or r.ref in seen:
                continue
            seen.add(r.ref)
            item = found.get(r.ref)
            if item is None:
                helps = conversion_helps(r.verdict.reason)
                command = fix_command(r.ref, report.registry_names) if helps else None
                item = found[r.ref] = Conversion(r.ref, r.verdict, command)
            item.workloads += 1
            item.pods += row.pods
    return sorted(found.values(), key=lambda c: (-c.pods, -c.workloads, c.ref.raw))


def _pins_and_secrets(row: Row) -> list[str]:
    fixes = [
        digest_pinned(r.container.label, r.ref)
        for r in row.judged
        if r.ref is not None and r.ref.digest_pinned
    ]
    if row.pull_secrets and row.uses_acr:
        fixes.append(pull_secrets())
    return fixes


def _problems(row: Row) -> list[str]:
    """What the webhook would say about the workload (or why it was skipped or failed)."""
    if row.error:
        return [f"error: {row.error}"]
    decision = row.decision
    if decision is None:
        return []
    if decision.skipped:
        return [f"skipped: {decision.skipped}"]
    shown = [p for p in decision.problems if p.severity is not Severity.RECORD]
    return [f"{p.severity.value}: {p.message}" for p in shown]


# ---- charts --------------------------------------------------------------------------------

_BAR_WIDTH = 360
_LABEL_WIDTH = 200
_ROW_HEIGHT = 26


def share_chart(title: str, shares: Sequence[Share], *, limit: int = 20) -> str:
    """Horizontal bars: per group, the share of its pods that stream."""
    shown = list(shares[:limit])
    if not shown:
        return ""
    height = _ROW_HEIGHT * len(shown) + 8
    width = _LABEL_WIDTH + _BAR_WIDTH + 150
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f"<title>{_e(title)}</title>",
    ]
    for i, share in enumerate(shown):
        y = 4 + i * _ROW_HEIGHT
        filled = round(_BAR_WIDTH * share.streaming_pods / share.pods) if share.pods else 0
        label = share.label if len(share.label) <= 28 else share.label[:27] + "…"
        part, whole = share.streaming_pods, share.pods
        text = f"{part:,}/{whole:,} pods ({_pct(part, whole)})"
        parts += [
            f'<text class="label" x="{_LABEL_WIDTH - 8}" y="{y + 17}" text-anchor="end">'
            f"{_e(label)}</text>",
            f'<rect class="track" x="{_LABEL_WIDTH}" y="{y + 4}" width="{_BAR_WIDTH}" '
            f'height="{_ROW_HEIGHT - 8}" rx="3"/>',
            f'<rect class="fill" x="{_LABEL_WIDTH}" y="{y + 4}" width="{filled}" '
            f'height="{_ROW_HEIGHT - 8}" rx="3">'
            f"<title>{_e(share.label)}: {_e(text)}</title></rect>",
            f'<text class="value" x="{_LABEL_WIDTH + _BAR_WIDTH + 8}" y="{y + 17}">'
            f"{_e(text)}</text>",
        ]
    parts.append("</svg>")
    more = len(shares) - len(shown)
    if more > 0:
        parts.append(f'<p class="muted">{_n(more, "more group")} in the table below.</p>')
    return "".join(parts)


_STATUS_TEXT = {
    "streams": "streams",
    "streamable": "streamable, but pinned, pull secrets or pools",
    "not-streamable": "not streamable",
    "unknown": "unknown",
    "not-acr": "no ACR image",
    "skipped": "skipped",
    "error": "error",
}


def status_chart(report: Report) -> str:
    """One stacked bar: every workload by what stands between it and streaming."""
    counts = {key: 0 for key in _STATUS_TEXT}
    for row in report.rows:
        counts["streams" if row.will_stream else row.status] += 1
    total = sum(counts.values())
    if not total:
        return ""
    width, height = _LABEL_WIDTH + _BAR_WIDTH + 150, 30 + 20 * len(counts)
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        "<title>Workloads by status</title>",
    ]
    x = 0.0
    full = _LABEL_WIDTH + _BAR_WIDTH
    for key, count in counts.items():
        if count:
            w = full * count / total
            parts.append(
                f'<rect class="s-{key}" x="{x:.1f}" y="2" width="{w:.1f}" height="20">'
                f"<title>{_e(_STATUS_TEXT[key])}: {count}</title></rect>"
            )
            x += w
    for i, (key, count) in enumerate(counts.items()):
        y = 32 + 20 * i
        parts += [
            f'<rect class="s-{key}" x="0" y="{y}" width="12" height="12"/>',
            f'<text class="label" x="18" y="{y + 11}">{_e(_STATUS_TEXT[key])}: '
            f"{count:,} ({_pct(count, total)})</text>",
        ]
    parts.append("</svg>")
    return "".join(parts)


# ---- tables ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    text: str
    sort: str | int | None = None  # sort key when the text is not it (numbers)
    code: bool = False


def _cell(value: str | int | Cell) -> Cell:
    if isinstance(value, Cell):
        return value
    if isinstance(value, int):
        return Cell(f"{value:,}", value)
    return Cell(value)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str | int | Cell]], *, numeric: Iterable[int]
) -> str:
    """A table the page's script sorts by any column (click or Enter on its header)."""
    nums = set(numeric)
    head = "".join(
        f'<th scope="col"{" data-type=num" if i in nums else ""}>{_e(h)}</th>'
        for i, h in enumerate(headers)
    )
    body: list[str] = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            cell = _cell(value)
            attrs = f' data-sort="{_e(cell.sort)}"' if cell.sort is not None else ""
            attrs += ' class="num"' if i in nums else ""
            text = f"<code>{_e(cell.text)}</code>" if cell.code else _e(cell.text)
            cells.append(f"<td{attrs}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        return '<p class="muted">None.</p>'
    return (
        f'<table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _share_cells(share: Share) -> list[str | int | Cell]:
    return [
        share.workloads,
        share.streaming_workloads,
        Cell(_pct(share.streaming_workloads, share.workloads), _ratio(share, pods=False)),
        share.pods,
        share.streaming_pods,
        Cell(_pct(share.streaming_pods, share.pods), _ratio(share, pods=True)),
    ]


def _ratio(share: Share, *, pods: bool) -> str:
    part, whole = (
        (share.streaming_pods, share.pods) if pods else (share.streaming_workloads, share.workloads)
    )
    return f"{part / whole:.6f}" if whole else "-1"


_SHARE_HEADERS = (
    "workloads",
    "streaming workloads",
    "workloads %",
    "pods",
    "streaming pods",
    "pods %",
)

# ---- the page -------------------------------------------------------------------------------

_STYLE = """
:root { color-scheme: light; --ok: #2e7d32; --bad: #c62828; --warn: #ef6c00; --muted: #666; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px;
  padding: 0 16px; color: #1a1a1a; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.muted { color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 16px; min-width: 180px; }
.card .big { font-size: 28px; font-weight: 600; } .card .big.ok { color: var(--ok); }
.card .big.bad { color: var(--bad); }
table { border-collapse: collapse; width: 100%; margin: 8px 0; }
th, td { border-bottom: 1px solid #eee; padding: 4px 8px; text-align: left;
  vertical-align: top; }
td.num, th[data-type=num] { text-align: right; }
th { background: #f5f5f5; cursor: pointer; user-select: none; white-space: nowrap; }
th:focus { outline: 2px solid #1565c0; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
code { font: 12px ui-monospace, monospace; background: #f5f5f5; padding: 1px 4px;
  border-radius: 3px; word-break: break-all; }
.chart { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.chart text { font: 12px system-ui, sans-serif; fill: #1a1a1a; }
.chart .track { fill: #eceff1; } .chart .fill { fill: var(--ok); }
.s-streams { fill: #2e7d32; } .s-streamable { fill: #9ccc65; }
.s-not-streamable { fill: #c62828; } .s-unknown { fill: #ef6c00; }
.s-not-acr { fill: #90a4ae; } .s-skipped { fill: #cfd8dc; } .s-error { fill: #6a1b9a; }
"""

# Sorts a table by the clicked column; numbers by their data-sort key. Marks the page when it
# has run, so a test can see the script was allowed by the page's Content-Security-Policy.
_SCRIPT = """
(function () {
  function key(row, i) {
    var cell = row.cells[i];
    var value = cell.getAttribute("data-sort");
    return value !== null ? value : cell.textContent.trim();
  }
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var up = th.getAttribute("aria-sort") !== "ascending";
    var num = th.getAttribute("data-type") === "num";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, i), y = key(b, i);
      var d = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return up ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); }
    });
  });
  document.documentElement.setAttribute("data-sortable", "ready");
})();
"""


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def _policy() -> str:
    """Nothing may load or run but the page's own style and script."""
    return (
        f"default-src 'none'; style-src {_hash(_STYLE)}; script-src {_hash(_SCRIPT)}; "
        "img-src 'none'; base-uri 'none'; form-action 'none'"
    )


def _card(title: str, big: str, small: str, tone: str = "") -> str:
    return (
        f'<div class="card"><div class="muted">{_e(title)}</div>'
        f'<div class="big {tone}">{_e(big)}</div><div class="muted">{_e(small)}</div></div>'
    )


def _scope(report: Report) -> str:
    return "namespaces " + ", ".join(report.scope) if report.scope else "all namespaces"


def render(report: Report, *, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    total = overall(report)
    namespaces = by_namespace(report)
    pools = by_pool(report)
    conversions = to_convert(report)
    blocked_pools = [p for p in report.pools if p.streaming is not Streaming.YES]
    pinned = [r for r in report.rows if _pins_and_secrets(r)]
    tone = "ok" if total.pods and total.streaming_pods == total.pods else "bad"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_policy()}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>streamgate readiness report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Artifact streaming readiness</h1>",
        f'<p class="muted">streamgate scan of {_e(_scope(report))}, '
        f"{_e(now.strftime('%Y-%m-%d %H:%M UTC'))}: "
        f"{_e(_n(len(report.rows), 'workload'))}, "
        f"{_e(_n(len(report.images), 'distinct ACR image'))}, "
        f"{_e(_n(len(report.pools), 'node pool'))}.</p>",
        '<div class="cards">',
        _card(
            "pods that stream",
            _pct(total.streaming_pods, total.pods),
            f"{total.streaming_pods:,} of {total.pods:,} pods",
            tone,
        ),
        _card(
            "workloads that stream",
            _pct(total.streaming_workloads, total.workloads),
            f"{total.streaming_workloads:,} of {total.workloads:,} workloads",
            tone,
        ),
        _card(
            "images to convert",
            f"{len(conversions):,}",
            f"used by {_n(sum(c.pods for c in conversions), 'pod')}",
            "bad" if conversions else "ok",
        ),
        _card(
            "pools that can't stream",
            f"{len(blocked_pools):,}",
            f"of {len(report.pools):,} node pools",
            "bad" if blocked_pools else "ok",
        ),
        "</div>",
        '<p class="muted">A workload streams when every ACR image it runs has a streaming '
        "artifact, is pulled by tag without imagePullSecrets, and every node pool it can land "
        "on streams. Pods: replicas as declared (DaemonSets: the nodes they are scheduled on; "
        "Jobs and CronJobs: their parallelism).</p>",
        status_chart(report),
        '<h2 id="namespaces">By namespace</h2>',
        share_chart("Share of pods that stream, by namespace", namespaces),
        table(
            ("namespace", *_SHARE_HEADERS),
            ([s.label, *_share_cells(s)] for s in namespaces),
            numeric=range(1, 7),
        ),
        '<h2 id="pools">By node pool</h2>',
    ]
    if not report.pools_known:
        out.append('<p class="muted">Node pools unknown: the nodes could not be read.</p>')
    else:
        out += [
            '<p class="muted">The workloads that may land on each pool (one that fits several '
            "pools counts in each; skipped workloads are not placed).</p>",
            share_chart("Share of pods that stream, by node pool", pools),
            table(
                ("pool", "pool streams", "why not", *_SHARE_HEADERS),
                (
                    [
                        p.label,
                        p.fit.streaming.value,
                        ", ".join(p.fit.reasons) or "-",
                        *_share_cells(p),
                    ]
                    for p in pools
                ),
                numeric=range(3, 9),
            ),
        ]
    out += [
        '<h2 id="convert">Images to convert first</h2>',
        '<p class="muted">Images without a streaming artifact, the most pods first. Each '
        "command asks ACR to make the artifact (new pushes to a repository with streaming "
        "enabled get one by themselves).</p>",
        table(
            ("image", "pods", "workloads", "why", "command"),
            (
                [
                    Cell(c.ref.raw, code=True),
                    c.pods,
                    c.workloads,
                    c.verdict.reason or "no streaming artifact",
                    Cell(c.command, code=True) if c.command else "- (nothing to run now)",
                ]
                for c in conversions
            ),
            numeric=(1, 2),
        ),
        '<h2 id="blocked-pools">Pools that can\'t stream</h2>',
        table(
            ("pool", "streams", "why"),
            ([p.name, p.streaming.value, ", ".join(p.reasons) or "-"] for p in blocked_pools),
            numeric=(),
        ),
        '<h2 id="pins">Digest pins and pull secrets</h2>',
        '<p class="muted">AKS streams tag pulls only, and pulls with imagePullSecrets don\'t '
        "stream.</p>",
        table(
            ("namespace", "kind", "name", "pods", "fix"),
            (
                [r.namespace, r.kind, r.name, r.pods, "; ".join(_pins_and_secrets(r))]
                for r in pinned
            ),
            numeric=(3,),
        ),
        '<h2 id="workloads">Every workload</h2>',
        table(
            (
                "namespace",
                "kind",
                "name",
                "mode",
                "verdict",
                "streams",
                "pods",
                "images",
                "pools",
                "problems",
            ),
            (
                [
                    r.namespace,
                    r.kind,
                    r.name,
                    r.mode,
                    r.status,
                    "yes" if r.will_stream else "no",
                    r.pods,
                    r.images_text,
                    r.pools_text,
                    "; ".join(_problems(r)) or "-",
                ]
                for r in report.rows
            ),
            numeric=(6,),
        ),
    ]
    notes = list(report.notes)
    if report.covered:
        parts = ", ".join(_n(n, kind) for kind, n in sorted(report.covered.items()))
        notes.append(f"left out, judged through their controllers: {parts}")
    if notes:
        out.append('<h2 id="notes">Notes</h2><ul>')
        out.extend(f"<li>{_e(note)}</li>" for note in notes)
        out.append("</ul>")
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out) + "\n"
