"""An HTML report of ``metrics.json``: headline numbers first, then curves and tables.

One self-contained file (plots embedded as PNG) so it can be mailed or archived with a
run; matplotlib draws off-screen.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_METRICS_SHOWN = ("ndcg", "recall", "hit_rate", "precision", "mrr", "map", "coverage")


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _curves(metrics: dict[str, Any]) -> str:
    """NDCG, recall and coverage against k: recommendation systems on one row, search
    systems on another; past ten systems the line style changes so colours stay apart."""
    ks = metrics["ks"]
    groups = {"recommendation": {}, "search": {}}
    for system, row in metrics["systems"].items():
        groups["search" if system.startswith("search:") else "recommendation"][system] = row
    groups = {name: rows for name, rows in groups.items() if rows}
    fig, axes = plt.subplots(len(groups), 3, figsize=(15, 3.8 * len(groups)), squeeze=False)
    for row_axes, (title, systems) in zip(axes, groups.items(), strict=True):
        for ax, name in zip(row_axes, ("ndcg", "recall", "coverage"), strict=True):
            for i, (system, row) in enumerate(systems.items()):
                final = system == "final"
                ax.plot(ks, [row[f"{name}@{k}"] for k in ks], marker="o",
                        color="black" if final else f"C{i % 10}",
                        linestyle=("-", "--", ":")[i // 10 % 3], linewidth=2.5 if final else 1.3,
                        label=system.removeprefix("search:"))
            ax.set_xscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_title(f"{title}: {name}@k")
            ax.grid(alpha=0.3)
        row_axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return _png(fig)


def _candidate_bars(metrics: dict[str, Any]) -> str:
    rows = metrics["candidate_recall"]
    ns = list(next(iter(rows.values())).keys())
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(rows)
    for i, (name, row) in enumerate(rows.items()):
        ax.bar([j + i * width for j in range(len(ns))], [row[n] for n in ns], width, label=name,
               color="black" if name == "merged" else f"C{i % 10}")
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(ns))], ns)
    ax.set_ylabel("share of test items")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _intervals(metrics: dict[str, Any], key: str) -> str:
    """Each system's NDCG with its bootstrap interval, best on top, final in black."""
    rows = sorted(((name, row) for name, row in metrics["systems"].items()
                   if f"{key}_ci" in row), key=lambda kv: kv[1][key])
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1))
    for y, (name, row) in enumerate(rows):
        low, high = row[f"{key}_ci"]
        colour = "black" if name in ("final", "search:final") else "C0"
        ax.errorbar(row[key], y, xerr=[[row[key] - low], [high - row[key]]], fmt="o",
                    color=colour, capsize=3)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax.set_xlabel(f"{key} (95% bootstrap interval over users)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _importance(metrics: dict[str, Any], top: int = 20) -> str:
    """Gain importance of the main recommendation ranker's strongest features."""
    rankers = metrics.get("importance", {}).get("recommendation", {})
    if not rankers:
        return "<p>No ranker was trained.</p>"
    name, gains = next(iter(rankers.items()))
    shown = list(gains.items())[:top][::-1]
    total = sum(gains.values()) or 1.0
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(shown) + 1))
    ax.barh([k for k, _ in shown], [v / total for _, v in shown], color="C2")
    ax.set_xlabel(f"share of total split gain ({name})")
    ax.tick_params(axis="y", labelsize=8)
    return f'<img src="data:image/png;base64,{_png(fig)}">'


def _lifts(metrics: dict[str, Any], key: str) -> str:
    items = []
    for kind, lift in metrics.get(f"lift_{key}", {}).items():
        verdict = ("the interval excludes zero" if lift["excludes_zero"]
                   else "the interval includes zero: no lift is claimed")
        items.append(f"<li>{kind}: <b>{html.escape(lift['system'])}</b> over its best single "
                     f"component <b>{html.escape(lift['baseline'])}</b>: "
                     f"{lift['mean']:+.4f} [{lift['low']:+.4f}, {lift['high']:+.4f}], "
                     f"{verdict}</li>")
    return f"<ul>{''.join(items)}</ul>"


def _search(metrics: dict[str, Any], key: str) -> str:
    """Zero-result rate and head / tail NDCG of each search system, if the run had search."""
    search = metrics.get("search")
    if not search:
        return ""
    cases = search["cases"]
    rows = []
    for name, rate in search["zero_result_rate"].items():
        cells = []
        for segment in ("head", "tail"):
            value = search[key][segment].get(name)
            cells.append(f"<td>{value[0]:.4f} [{value[1]:.4f}, {value[2]:.4f}]</td>" if value
                         else "<td>-</td>")
        rows.append(f"<tr><th>{html.escape(name)}</th><td>{rate:.4f}</td>{''.join(cells)}</tr>")
    return (f"<h2>Search: head and tail queries</h2><p>{cases['head']} head cases (a query "
            f"typed at least {search['head_min_searches']} times in the fitting data) and "
            f"{cases['tail']} tail cases.</p><table><tr><th>system</th><th>no result</th>"
            f"<th>head {html.escape(key)}</th><th>tail {html.escape(key)}</th></tr>"
            f"{''.join(rows)}</table>")


def _table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["system", *columns])
    body = []
    for name, row in rows.items():
        best = "".join(f"<td>{row[c]:.4f}</td>" for c in columns)
        body.append(f"<tr><th>{html.escape(name)}</th>{best}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(metrics: dict[str, Any], notes: list[str]) -> str:
    ks = metrics["ks"]
    final = metrics["systems"]["final"]
    k0 = ks[0]
    cards = "".join(
        f"<div class=card><div class=v>{final[f'{m}@{k0}']:.4f}</div><div>{m}@{k0}</div></div>"
        for m in ("ndcg", "recall", "hit_rate", "mrr", "coverage"))
    sections = [_table(metrics["systems"], [f"{m}@{k}" for k in ks for m in ("ndcg", "recall")])]
    for k in ks:
        sections.append(f"<h3>@{k}</h3>" + _table(
            metrics["systems"], [f"{m}@{k}" for m in _METRICS_SHOWN]))
    key_ci = next((k.removeprefix("lift_") for k in metrics if k.startswith("lift_")),
                  f"ndcg@{k0}")
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Offline evaluation: {html.escape(metrics['dataset'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}}
.card{{display:inline-block;padding:.8em 1.4em;margin:.3em;border-radius:8px;background:#eef3fb}}
.v{{font-size:1.6em;font-weight:600}} table{{border-collapse:collapse;margin:.6em 0}}
td,th{{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:right}}
th:first-child{{text-align:left}}
</style></head><body>
<h1>Offline evaluation: {html.escape(metrics['dataset'])}</h1>
<p>{metrics['users']} test users, full ranking over {metrics['catalogue']} items
(fitted items excluded), split <code>{html.escape(metrics['split'])}</code>.</p>
<h2>Final ranking</h2>{cards}
<h2>Which stage earns what: {key_ci} with 95% intervals</h2>{_lifts(metrics, key_ci)}
<img src="data:image/png;base64,{_intervals(metrics, key_ci)}">
{_search(metrics, key_ci)}
<h2>What the ranker looks at</h2>{_importance(metrics)}
<h2>Metrics by k</h2><img src="data:image/png;base64,{_curves(metrics)}">
<h2>Candidate recall</h2><img src="data:image/png;base64,{_candidate_bars(metrics)}">
{_table(metrics['candidate_recall'], list(next(iter(metrics['candidate_recall'].values()))))}
<h2>All metrics</h2>{''.join(sections)}
<h2>Notes from the run</h2><ul>{note_items}</ul>
</body></html>
"""
