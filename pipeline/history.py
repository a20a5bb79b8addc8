"""Run history: each scheduled run's page, and one page across runs, from the ledger.

After a scheduled run writes its ledger line, ``write_pages`` copies the run's report
(``report/index.html``) to ``reports/<run id>.html`` with, at the top, an alarm box when
something needs a person (the gate refused or was forced, the run failed, or the final
NDCG@10 fell more than ``gate.max_drop`` below the last published run's even with the
gate off) and, after the headline, the history: the final NDCG@10 with its interval run
by run, the best single component beside it, the gate's decisions, and the change
against the last published run. ``reports/index.html`` is the history page across runs.
Both are written to a temporary file and renamed into place, so a reader never sees half
a page.

The change against the last published run is the difference of two runs' means over
different users (each run evaluates its own window), so its interval is the normal
approximation from the two runs' bootstrap intervals: half-width
1.96 * sqrt(se_1^2 + se_2^2), each se = interval width / (2 * 1.96).
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.catalogue import artifact_path
from pipeline.config import Config
from pipeline.evaluation.report import ALARM_SLOT, HISTORY_SLOT, STYLE, interval, png
from pipeline.release import ledger

REPORTS = "reports"
STATUS = {0: "ok", 1: "crashed", 2: "bad input", 3: "refused by the gate", 75: "locked out"}
Z = 1.959964


def change(now: dict[str, Any], before: dict[str, Any]) -> list[float] | None:
    """NDCG@10 of ``now`` minus ``before`` with its approximate 95% interval (module
    docstring); None without both runs' intervals."""
    if not now.get("ndcg@10_ci") or not before.get("ndcg@10_ci"):
        return None
    se = [(e["ndcg@10_ci"][1] - e["ndcg@10_ci"][0]) / (2 * Z) for e in (now, before)]
    diff = now["ndcg@10"] - before["ndcg@10"]
    half = Z * math.hypot(*se)
    return [diff, diff - half, diff + half]


def previous_published(entries: list[dict[str, Any]], entry: dict[str, Any]
                       ) -> dict[str, Any] | None:
    """The last run published before ``entry`` (ledger order)."""
    earlier = entries[:entries.index(entry)] if entry in entries else entries
    return next((e for e in reversed(earlier) if e.get("published")
                 and e.get("ndcg@10") is not None), None)


def alarms(cfg: Config, entry: dict[str, Any], last: dict[str, Any] | None) -> list[str]:
    """What a person must look at for this run, worst first; empty when nothing."""
    out = []
    status = entry.get("status")
    reason = entry.get("decision", {}).get("reason", "")
    if status == 3:
        out.append(f"The release gate refused this run: {reason}. The previous publication "
                   "stays live.")
    elif status not in (0, None):
        out.append(f"This run {STATUS.get(status, f'exited {status}')}: "
                   f"{entry.get('error', 'see the log')}.")
    if entry.get("forced"):
        out.append(f"Published with --force although the gate refused it: {reason}.")
    if last is not None and entry.get("ndcg@10") is not None and last["ndcg@10"] > 0:
        drop = (last["ndcg@10"] - entry["ndcg@10"]) / last["ndcg@10"]
        if drop > cfg.gate.max_drop and status != 3:
            out.append(f"Final NDCG@10 {entry['ndcg@10']:.4f} is {drop:.1%} below the last "
                       f"published run's {last['ndcg@10']:.4f} (tolerance "
                       f"{cfg.gate.max_drop:.1%}).")
    lift = entry.get("lift")
    if lift and lift[2] < 0:
        out.append(f"The final ranking is significantly below its best single component "
                   f"{entry.get('baseline')}: {lift[0]:+.4f} [{lift[1]:+.4f}, {lift[2]:+.4f}].")
    return out


def _chart(entries: list[dict[str, Any]]) -> str:
    scored = [e for e in entries if e.get("ndcg@10") is not None]
    if not scored:
        return "<p>No run has been evaluated yet.</p>"
    fig, ax = plt.subplots(figsize=(11.5, 3.0))
    xs = range(len(scored))
    for x, e in zip(xs, scored, strict=True):
        low, high = e.get("ndcg@10_ci") or (e["ndcg@10"], e["ndcg@10"])
        colour = "black" if e.get("published") else ("#b00020" if e.get("status") == 3
                                                      else "0.5")
        ax.errorbar(x, e["ndcg@10"], yerr=[[e["ndcg@10"] - low], [high - e["ndcg@10"]]],
                    fmt="o", color=colour, capsize=3)
        if e.get("baseline_ndcg@10") is not None:
            ax.plot(x, e["baseline_ndcg@10"], marker="_", markersize=14, color="C0")
    ax.set_xticks(list(xs), [str(e.get("as_of", "?"))[:16] for e in scored], fontsize=7,
                  rotation=20)
    ax.set_ylabel("NDCG@10")
    ax.set_title("final NDCG@10 with its 95% interval (black: published, red: refused); "
                 "blue bar: best single component", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def alarm_html(cfg: Config, entries: list[dict[str, Any]], entry: dict[str, Any]) -> str:
    """The alarm box for ``entry``, or an all-clear line."""
    found = alarms(cfg, entry, previous_published(entries, entry))
    if found:
        return "<div class=alarm><b>Needs attention</b><ul>" + "".join(
            f"<li>{html.escape(a)}</li>" for a in found) + "</ul></div>"
    return (f"<div class=ok>Run {html.escape(str(entry.get('run_id')))}: "
            f"{html.escape(STATUS.get(entry.get('status'), '?'))}, "
            f"{'published' if entry.get('published') else 'not published'}.</div>")


def history_html(entries: list[dict[str, Any]], entry: dict[str, Any] | None) -> str:
    """The change of ``entry`` against the last published run, and the runs so far,
    newest first."""
    parts = ["<h2>History</h2>"]
    last = previous_published(entries, entry) if entry is not None else None
    delta = change(entry, last) if last else None
    if delta:
        parts.append(f"<p>Change in final NDCG@10 against the last published run "
                     f"({html.escape(str(last.get('publication')))}): "
                     f"{interval(delta, sign=True)} (approximate: the runs evaluate "
                     "different windows).</p>")
    rows = []
    for e in reversed(entries):
        run = html.escape(str(e.get("run_id", "-")))
        page = e.get("report")
        best = (f"{html.escape(str(e.get('baseline')))} {e['baseline_ndcg@10']:.4f}"
                if e.get("baseline_ndcg@10") is not None else "-")
        final = [e["ndcg@10"], *e["ndcg@10_ci"]] if e.get("ndcg@10_ci") else None
        cells = [html.escape(str(e.get("as_of", "-"))),
                 html.escape(STATUS.get(e.get("status"), str(e.get("status")))),
                 "yes" if e.get("published") else "no", interval(final), best,
                 interval(e.get("lift"), sign=True),
                 html.escape(str(e.get("decision", {}).get("reason", e.get("error", "")))),
                 f"{e.get('seconds', 0):.0f}"]
        link = f'<a href="{html.escape(Path(page).name)}">{run}</a>' if page else run
        rows.append(f"<tr><th>{link}</th>" + "".join(f"<td>{c}</td>" for c in cells)
                    + "</tr>")
    parts.append(_chart(entries) + "<div class=scroll><table><tr>"
                 "<th>run</th><th>as of</th><th>status</th><th>published</th>"
                 "<th>final NDCG@10</th><th>best single</th><th>lift</th><th>gate</th>"
                 "<th>seconds</th></tr>" + "".join(rows) + "</table></div>")
    return "\n".join(parts)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_page(cfg: Config, entry: dict[str, Any]) -> Path:
    """Where ``entry``'s page goes: ``reports/<run id>.html``, or ``<run id>.<n>.html``
    for the n-th run of one id with a page, so no run's page replaces another's (a log
    without time has the as-of 1970 every night; new code reruns the same data). A run
    that found its publication already live keeps that publication's page."""
    if entry.get("report"):
        return cfg.root / entry["report"]
    same = [e for e in ledger(cfg) if e.get("run_id") == entry["run_id"] and e.get("report")]
    if entry.get("decision", {}).get("reason") == "already up to date":
        live = [e for e in same if e.get("publication") == entry.get("publication")]
        if live:
            return cfg.root / live[-1]["report"]
    name = entry["run_id"] + (f".{len(same) + 1}" if same else "")
    return cfg.root / REPORTS / f"{name}.html"


def write_pages(cfg: Config, entry: dict[str, Any]) -> Path | None:
    """The run's page (when it has a report and a run id) and the history page; returns
    the run's page. ``entry`` is the ledger's last line."""
    entries = ledger(cfg)
    page = None
    report = artifact_path(cfg, "report")
    if entry.get("run_id") and report.is_file():
        page = run_page(cfg, entry)
        text = report.read_text(encoding="utf-8")
        text = text.replace(ALARM_SLOT, alarm_html(cfg, entries, entry), 1)
        _write(page, text.replace(HISTORY_SLOT, history_html(entries, entry), 1))
    latest = entries[-1] if entries else None
    _write(cfg.root / REPORTS / "index.html", f"""<!doctype html><html><head>
<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Runs: {html.escape(cfg.dataset)}</title><style>{STYLE}</style></head><body>
{alarm_html(cfg, entries, latest) if latest else ""}
<h1>Runs: {html.escape(cfg.dataset)}</h1>
{history_html(entries, latest)}
</body></html>
""")
    return page
