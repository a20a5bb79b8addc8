"""An HTML report of ``metrics.json`` that people decide on: what was run on what, where
it wins and loses, and (on a scheduled run's page) how it moves from run to run.

One self-contained file (plots embedded as PNG, no external assets) so it can be mailed
or archived with a run; matplotlib draws off-screen. Images scale to the page, which
never scrolls sideways from 1280 px up; figures are small multiples, one panel per
system, rather than many lines sharing colours. A scheduled run fills the page's two
slots (``pipeline.history``): ``ALARM_SLOT``, first on the page, with what needs a person,
and ``HISTORY_SLOT``, after the headline, with the runs so far.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.schema import left_out

_METRICS_SHOWN = ("ndcg", "recall", "hit_rate", "precision", "mrr", "map", "coverage")
ALARM_SLOT = "<!-- alarm -->"
HISTORY_SLOT = "<!-- history -->"
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;color:#222;max-width:1180px;
padding:0 1em}
img{max-width:100%;height:auto}
.card{display:inline-block;padding:.7em 1.2em;margin:.3em;border-radius:8px;background:#eef3fb}
.v{font-size:1.5em;font-weight:600} table{border-collapse:collapse;margin:.6em 0}
td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}
th:first-child{text-align:left} .scroll{overflow-x:auto;max-width:100%}
.alarm{border:2px solid #b00020;background:#fdecee;padding:.8em 1.2em;border-radius:8px}
.ok{border:1px solid #2e7d32;background:#eef7ee;padding:.6em 1.2em;border-radius:8px}
.cols{display:flex;flex-wrap:wrap;gap:1.5em} .cols>div{flex:1 1 420px;min-width:0}
.cols table{font-size:.85em} .cols td,.cols th{padding:.2em .45em}
code{word-break:break-all} .muted{color:#666}"""


def png(fig: plt.Figure) -> str:
    """The figure as an ``<img>`` with its PNG inline (the page needs no other file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _e(value: Any) -> str:
    return html.escape(str(value))


def interval(value: list[float] | None, sign: bool = False) -> str:
    """``[mean, low, high]`` as text (``-`` for none); ``sign`` for a change or lift."""
    if not value:
        return "-"
    f = "{:+.4f}" if sign else "{:.4f}"
    return f"{f.format(value[0])} [{f.format(value[1])}, {f.format(value[2])}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(
        f"<th>{cells[0]}</th>" + "".join(f"<td>{c}</td>" for c in cells[1:])) + "</tr>"
        for cells in rows)
    return f'<div class=scroll><table><tr>{head}</tr>{body}</table></div>'


# --- header ------------------------------------------------------------------------
def _header(metrics: dict[str, Any], run: dict[str, Any]) -> str:
    facts = [("run", run.get("run_id")), ("as of", run.get("as_of")),
             ("commit", (run.get("commit") or "unknown")[:12]), ("written", run.get("date")),
             ("split", metrics["split"])]
    line = " · ".join(f"{name} <code>{_e(value)}</code>" for name, value in facts if value)
    data = metrics.get("data", {})
    parts = data.get("parts", {})
    rows = [[_e(part), f"{p['events']:,}", f"{p['searches']:,}", f"{p['users']:,}",
             f"{p['items']:,}", _e(p["first"] or "-"), _e(p["last"] or "-")]
            for part, p in parts.items()]
    cases = data.get("search_cases", {})
    case_text = ", ".join(f"{n:,} on {phase}" for phase, n in cases.items()) or "none"
    stages = run.get("stages", {})
    stage_rows = [[_e(name), f"{s.get('seconds', 0):.1f}", _e(s.get("status", "ok"))]
                  for name, s in stages.items()]
    total = sum(s.get("seconds", 0) for s in stages.values())
    diff = run.get("config_diff", [])
    diff_rows = [[f"<code>{_e(k)}</code>", f"<code>{_e(v)}</code>",
                  f"<code>{_e('unset' if d is None else d)}</code>"] for k, v, d in diff]
    return f"""<p>{line}</p>
<div class=cols><div><h3>Data</h3>
{_table(["part", "events", "searches", "users", "items", "first", "last"], rows)}
<p>{metrics['users']:,} test users evaluated by full ranking over {metrics['catalogue']:,}
items (their fitted items excluded); search cases: {case_text}.</p>{_tie_note(run)}
{_ingest_notes(run)}</div>
<div><h3>Wall time per stage ({total:.0f} s)</h3>
{_table(["stage", "seconds", "status"], stage_rows)}</div></div>
<div class=cols><div><h3>Config: what differs from the defaults</h3>
{_table(["setting", "value", "default"], diff_rows) if diff_rows
 else "<p>Every setting is the default.</p>"}</div>
<div><h3>Choices made on valid</h3>{_choices(run)}</div></div>"""


def _tie_note(run: dict[str, Any]) -> str:
    """How much of the held-out data the split's seed chose: on a log stamped by the day
    most test events share their day with another of the user's events, and which of
    them are held out, and so what the models are fitted on, changes with the seed; the
    intervals, over users, take those fitted models as given."""
    ties = run.get("tied_held_out", {})
    if ties.get("test", 0) < 0.01:
        return ""
    return (f"<p>{ties['test']:.0%} of test events (valid: {ties.get('valid', 0):.0%}) share "
            "their time with an event of the same user in another part: the split placed "
            "them by its seeded order, not by time. Another <code>seed</code> holds out "
            "others and fits the models on the rest, a change the intervals below (over "
            "users, the models as fitted) do not cover.</p>")


def _ingest_notes(run: dict[str, Any]) -> str:
    """What ingest left out of the log or found odd in it: whoever decides from this page
    should not have to read the run's log to learn that a tenth of the rows went."""
    ingest = run.get("ingest", {})
    dropped = left_out(ingest.get("dropped", {}))
    items = ([f"interactions left out: {dropped}"] if dropped else []) + ingest.get("notes", [])
    if not items:
        return ""
    return "<p>Ingest noted:</p><ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _choices(run: dict[str, Any]) -> str:
    """Tuned quotas and the blend, with a sentence when it is one component alone."""
    out = []
    for kind, blend in run.get("blend", {}).items():
        weights = blend.get("weights", {})
        if len(weights) == 1:
            (name, _), = weights.items()
            out.append(f"<p>{_e(kind)}: the blend is <b>{_e(name)}</b> alone (out of fold "
                       "it beat the equal-weight fusion of every component by more than the "
                       "noise of the valid requests), so <code>final</code>, "
                       f"<code>blend</code> and <code>{_e(name)}</code> rank alike.</p>")
        else:
            parts = ", ".join(f"{_e(n)} × {w:g}" for n, w in weights.items())
            out.append(f"<p>{_e(kind)} blend: {parts} (reciprocal ranks; equal weights "
                       "unless one component alone clearly beats them).</p>")
    quotas = run.get("quotas", {})
    for kind, shares in quotas.items():
        shown = ", ".join(f"{_e(n)} {q}" for n, q in shares.items() if q)
        out.append(f"<p>{_e(kind)} quotas (candidates per channel): {shown or 'none'}.</p>")
    return "".join(out) or "<p class=muted>Nothing was tuned.</p>"


# --- headline, lifts, intervals ------------------------------------------------------
def _lifts(metrics: dict[str, Any], key: str) -> str:
    items = []
    for kind, lift in metrics.get(f"lift_{key}", {}).items():
        verdict = ("the interval excludes zero" if lift["excludes_zero"]
                   else "the interval includes zero: no lift is claimed")
        items.append(f"<li>{kind}: <b>{_e(lift['system'])}</b> over its best single "
                     f"component <b>{_e(lift['baseline'])}</b>: "
                     f"{lift['mean']:+.4f} [{lift['low']:+.4f}, {lift['high']:+.4f}], "
                     f"{verdict}</li>")
    return f"<ul>{''.join(items)}</ul>"


def _intervals(metrics: dict[str, Any], key: str) -> str:
    """Each system's NDCG with its bootstrap interval, best on top, final in black:
    recommendation and search side by side."""
    groups = {"recommendation": [], "search": []}
    for name, row in metrics["systems"].items():
        if f"{key}_ci" in row:
            groups["search" if name.startswith("search:") else "recommendation"].append(
                (name, row))
    groups = {g: sorted(rows, key=lambda kv: kv[1][key]) for g, rows in groups.items() if rows}
    height = 0.26 * max(len(r) for r in groups.values()) + 1
    fig, axes = plt.subplots(1, len(groups), figsize=(11.5, height), squeeze=False)
    for ax, (title, rows) in zip(axes[0], groups.items(), strict=True):
        for y, (name, row) in enumerate(rows):
            low, high = row[f"{key}_ci"]
            colour = "black" if name in ("final", "search:final") else "C0"
            ax.errorbar(row[key], y, xerr=[[row[key] - low], [high - row[key]]], fmt="o",
                        color=colour, capsize=3)
        ax.set_yticks(range(len(rows)), [n.removeprefix("search:") for n, _ in rows],
                      fontsize=8)
        ax.set_title(f"{title}: {key}, 95% interval over users", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return png(fig)


# --- segments ----------------------------------------------------------------------
def _segments(metrics: dict[str, Any]) -> str:
    seg = metrics.get("segments")
    if not seg:
        return ""
    final, baseline = seg["systems"]
    k = seg["k"]
    users = seg["users"]
    rows = [[_e(s), f"{users['counts'].get(s, 0):,}",
             interval(users[f"ndcg@{k}"].get(s, {}).get(final)),
             interval(users[f"ndcg@{k}"].get(s, {}).get(baseline)),
             interval(users["lift"].get(s))] for s in ("cold", "middle", "heavy")]
    user_table = _table(["users", "count", f"{final} NDCG@{k}", f"{baseline} NDCG@{k}",
                         "lift (paired)"], rows)
    pop = seg["item_popularity"]
    deciles = list(pop["relevant"])
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.2))
    for i, name in enumerate((final, baseline)):
        values = [pop[f"recall@{k}"][d][name] for d in deciles]
        xs = [int(d) + (i - 0.5) * 0.35 for d in deciles]
        mean = [v[0] if v else math.nan for v in values]
        err = [[v[0] - v[1] if v else 0 for v in values], [v[2] - v[0] if v else 0
                                                          for v in values]]
        axes[0].bar(xs, mean, 0.35, yerr=err, capsize=2, label=name,
                    color="black" if i == 0 else "C0")
        axes[1].bar(xs, [pop[f"coverage@{k}"][d][name] for d in deciles], 0.35,
                    label=name, color="black" if i == 0 else "C0")
    axes[0].set_title(f"recall@{k} of the relevant items in each decile", fontsize=10)
    axes[1].set_title(f"share of each decile's items in anyone's top {k}", fontsize=10)
    for ax in axes:
        ax.set_xlabel("item popularity decile in the fitting data (1: most popular)")
        ax.set_xticks([int(d) for d in deciles])
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    new = seg["new_items"]
    new_text = (f"<p>Items new in the evaluated window (no fitting interaction): "
                f"{new['relevant']:,} relevant; recall@{k} " + ", ".join(
                    f"{_e(n)} {interval(v)}" for n, v in new[f"recall@{k}"].items()) + ".</p>"
                if new["relevant"] else
                "<p>No relevant item is new in the evaluated window.</p>")
    kinds = [(n, metrics["systems"][n]) for n in ("final", "search:final")
             if n in metrics["systems"]]
    kind_text = "; ".join(f"{_e(n)} NDCG@{k} {row[f'ndcg@{k}']:.4f} "
                          f"[{row[f'ndcg@{k}_ci'][0]:.4f}, {row[f'ndcg@{k}_ci'][1]:.4f}]"
                          for n, row in kinds if f"ndcg@{k}_ci" in row)
    return f"""<h2>Where it wins and loses</h2>
<p>Users by fitted history: cold at most {users['cold_max_events']} events, heavy at least
{users['heavy_min_events']}; the final ranking against its best single component,
<b>{_e(baseline)}</b>. Per-user values of every system are in
<code>eval/per_user.parquet</code>.</p>{user_table}
{png(fig)}{new_text}<p>Recommendation against search: {kind_text}.</p>"""


def _search(metrics: dict[str, Any], key: str) -> str:
    """Zero-result rate and head / tail NDCG of each search system, if the run had search."""
    search = metrics.get("search")
    if not search:
        return ""
    cases = search["cases"]
    rows = [[_e(name), f"{rate:.4f}", interval(search[key]["head"].get(name)),
             interval(search[key]["tail"].get(name))]
            for name, rate in search["zero_result_rate"].items()]
    return (f"<h2>Search: head and tail queries</h2><p>{cases['head']} head cases (a query "
            f"typed at least {search['head_min_searches']} times in the fitting data) and "
            f"{cases['tail']} tail cases.</p>"
            + _table(["system", "no result", f"head {key}", f"tail {key}"], rows))


# --- candidates, importance, curves ----------------------------------------------------
def _candidates(metrics: dict[str, Any]) -> str:
    """Candidate recall@N and unique hits per channel, for both phases and both kinds."""
    blocks = []
    for phase, kinds in metrics.get("phases", {}).items():
        for kind, block in kinds.items():
            recall = block["candidate_recall"]
            ns = list(next(iter(recall.values())))
            unique = block.get("unique_hits", {})
            rows = [[_e(name), *(f"{row[n]:.3f}" for n in ns),
                     f"{unique[name]:.3f}" if name in unique else "-"]
                    for name, row in recall.items()]
            blocks.append(f"<div><h3>{_e(kind)}, {_e(phase)} phase</h3>"
                          + _table(["channel", *ns, "unique"], rows) + "</div>")
    return ("<h2>Candidate recall</h2><p>Share of the relevant items among each channel's "
            "first N candidates, and the share that no other channel found (unique).</p>"
            f"<div class=cols>{''.join(blocks)}</div>")


def _importance(metrics: dict[str, Any], top: int = 15) -> str:
    """Gain importance of the main ranker's strongest features, per request kind."""
    kinds = {kind: rankers for kind, rankers in metrics.get("importance", {}).items()
             if rankers}
    if not kinds:
        return "<p>No ranker was trained.</p>"
    fig, axes = plt.subplots(1, len(kinds), figsize=(11.5, 0.25 * top + 1), squeeze=False)
    for ax, (kind, rankers) in zip(axes[0], kinds.items(), strict=True):
        name, gains = next(iter(rankers.items()))
        shown = list(gains.items())[:top][::-1]
        total = sum(gains.values()) or 1.0
        ax.barh([k for k, _ in shown], [v / total for _, v in shown], color="C2")
        ax.set_title(f"{kind}: share of split gain ({name})", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return png(fig)


def _curves(metrics: dict[str, Any]) -> str:
    """Small multiples: one panel per system with its NDCG and recall against k, the
    final ranking's NDCG in grey behind each for reference."""
    ks = metrics["ks"]
    systems = list(metrics["systems"].items())
    cols = 6
    rows = -(-len(systems) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11.5, 1.9 * rows), sharex=True,
                             sharey=True, squeeze=False)
    reference = {kind: metrics["systems"][name] for kind, name in
                 (("", "final"), ("search:", "search:final")) if name in metrics["systems"]}
    for ax, (name, row) in zip(axes.flat, systems, strict=False):
        ref = reference.get("search:" if name.startswith("search:") else "")
        if ref is not None:
            ax.plot(ks, [ref[f"ndcg@{k}"] for k in ks], color="0.8", linewidth=3)
        ax.plot(ks, [row[f"ndcg@{k}"] for k in ks], color="black", marker="o", markersize=3)
        ax.plot(ks, [row[f"recall@{k}"] for k in ks], color="C0", linestyle="--")
        ax.set_title(name, fontsize=7)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(systems):]:
        ax.axis("off")
    fig.suptitle("NDCG@k (black), recall@k (blue, dashed); grey: the final ranking's NDCG@k",
                 fontsize=9)
    fig.tight_layout()
    return png(fig)


def render(metrics: dict[str, Any], run: dict[str, Any], notes: list[str]) -> str:
    """The page. ``run``: what the report stage knows of the run (``run_id``, ``as_of``,
    ``commit``, ``date``, ``stages``, ``config_diff``, ``quotas``, ``blend``)."""
    ks = metrics["ks"]
    final = metrics["systems"]["final"]
    k0 = ks[0]
    cards = "".join(
        f"<div class=card><div class=v>{final[f'{m}@{k0}']:.4f}</div><div>{m}@{k0}</div></div>"
        for m in ("ndcg", "recall", "hit_rate", "mrr", "coverage"))
    tables = [_table(["system", *(f"{m}@{k}" for m in _METRICS_SHOWN)],
                     [[_e(name), *(f"{row[f'{m}@{k}']:.4f}" for m in _METRICS_SHOWN)]
                      for name, row in metrics["systems"].items()]) for k in ks]
    key_ci = next((k.removeprefix("lift_") for k in metrics if k.startswith("lift_")),
                  f"ndcg@{k0}")
    note_items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    all_metrics = "".join(f"<h3>@{k}</h3>{t}" for k, t in zip(ks, tables, strict=True))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Offline evaluation: {_e(metrics['dataset'])}</title>
<style>{STYLE}</style></head><body>
{ALARM_SLOT}
<h1>Offline evaluation: {_e(metrics['dataset'])}</h1>
{_header(metrics, run)}
<h2>Final ranking</h2>{cards}
<h2>Which stage earns what: {key_ci} with 95% intervals</h2>{_lifts(metrics, key_ci)}
{_intervals(metrics, key_ci)}
{HISTORY_SLOT}
{_segments(metrics)}
{_search(metrics, key_ci)}
{_candidates(metrics)}
<h2>What the rankers look at</h2>{_importance(metrics)}
<h2>Metrics by k</h2>{_curves(metrics)}
<h2>All metrics</h2>{all_metrics}
<h2>Notes from the run</h2><ul>{note_items}</ul>
</body></html>
"""
