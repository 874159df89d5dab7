"""`selfplay report RUN_DIR`: PNG plots plus report.md / report.html in RUN_DIR/report/,
built from metrics.parquet (long format: step, wall_s, name, value), summary.json,
config.yaml and the newest complete checkpoint's league.json.

Metric names: eval/GAME/OPP/FIELD, eval/kuhn/{exploitability,illegal_mass},
eval/TASK/held_out/FIELD (a task's held-out evaluation: accuracy, pass_at_k, ...),
snapshot/MEMBER/... (the same evals when league member MEMBER was created), league/...,
and the learner's and generators' scalars."""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from selfplay.evals import RATES, TASK_FIELDS, task_fields  # noqa: E402
from selfplay.league import LeagueState  # noqa: E402
from selfplay.league_table import load_league, member_rows, score_matrix  # noqa: E402
from selfplay.stats import wilson_interval  # noqa: E402

OUTCOME = (*RATES, "return")
CURVE_FIELDS = ("win", "non_loss")  # plotted solid and dashed, one colour per opponent
TASK_CURVES = ("accuracy", "pass_at_k", "sample_accuracy")  # a task's held-out curves
# a judged task's instead: the judge trained against (the proxy) and the held-out gold judge,
# greedy replies and samples, and where the reward-hacking monitor raised its alarm (1)
JUDGED_CURVES = ("score", "sample_score", "gold_score", "sample_gold_score")
SELECTION_CURVES = ("selected_pass", "consensus_pass", "random_pass", "test_accuracy")  # solver + checker's
# OpenSpiel exploitability of Kuhn poker in chips: uniform random play, Nash equilibrium.
KUHN_REFERENCE = [(0.458, "uniform random (0.458)"), (0.0, "Nash (0)")]
KUHN_KEY = "kuhn/exploitability"  # its summary.json key and metric name (under eval/)
Series = dict[str, dict[str, list[float]]]  # name -> {"step", "minutes", "value"}


@dataclass
class Panel:
    title: str
    names: list[str]
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label) reference lines
    band: tuple[str, str] | None = None  # (lower, upper) series drawn as a shaded interval
    strip: str | None = None  # cut from the names for legend labels; None: their shared prefix


Figure = tuple[str, str, str, list[Panel]]  # (file, title, x axis, panels)


def load_series(path: Path) -> Series:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no metrics were logged yet (file missing); train for at least one step first"
        )
    cols = pq.read_table(path).to_pydict()
    if not cols.get("name"):
        raise ValueError(f"{path}: no metrics were logged yet (table is empty)")
    series: Series = {}
    rows = sorted(zip(cols["step"], cols["wall_s"], cols["name"], cols["value"]))
    for step, wall_s, name, value in rows:
        s = series.setdefault(name, {"step": [], "minutes": [], "value": []})
        s["step"].append(step)
        s["minutes"].append(wall_s / 60)
        s["value"].append(value)
    return series


def _natural(text: str) -> list:
    """Sort key that puts snap-2 before snap-10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def eval_results(series: Series, prefix: str = "eval") -> dict[tuple[str, str], dict]:
    """{(GAME, OPP): {FIELD: series}} for the names PREFIX/GAME/OPP/FIELD, sorted."""
    depth = prefix.count("/") + 4
    out: dict[tuple[str, str], dict] = {}
    for name, s in series.items():
        parts = name.split("/")
        if name.startswith(prefix + "/") and len(parts) == depth:
            out.setdefault((parts[-3], parts[-2]), {})[parts[-1]] = s
    return dict(sorted(out.items()))


def snapshot_members(series: Series) -> list[str]:
    return sorted({n.split("/")[1] for n in series if n.startswith("snapshot/")}, key=_natural)


def _starting(series: Series, prefix: str) -> list[str]:
    return sorted((n for n in series if n.startswith(prefix)), key=_natural)


def figures(series: Series, threshold: float | None) -> list[Figure]:
    """The figures, built from the metric names present; plot() drops what has no data."""
    results = eval_results(series)
    judged = {g: "score" in fields for (g, o), fields in results.items() if "accuracy" in fields}
    tasks = list(judged)
    keys = [k for k in results if k[0] not in tasks]
    games = {g: [o for gg, o in keys if gg == g] for g, _ in keys}
    task_panels = [
        Panel(t, [f"eval/{t}/held_out/{f}" for f in TASK_CURVES], strip=f"eval/{t}/held_out/")
        if not judged[t]
        else Panel(
            f"{t}: the judge trained against (score) and the gold judge",
            [*(f"eval/{t}/held_out/{f}" for f in JUDGED_CURVES), "monitor/alarm"],
            strip=f"eval/{t}/held_out/",
        )
        for t in tasks
    ] + [
        Panel(
            f"{t}: a solution picked by its own tests vs a uniform pick",
            [f"eval/{t}/held_out/{f}" for f in SELECTION_CURVES],
            strip=f"eval/{t}/held_out/",
        )
        for t in tasks
    ]
    curves = [
        Panel(g, [f"eval/{g}/{o}/{f}" for o in opps for f in CURVE_FIELDS], strip=f"eval/{g}/")
        for g, opps in games.items()
    ]
    illegal = ["batch_illegal", *(f"eval/{g}/{o}/illegal" for g, o in keys), "eval/kuhn/illegal_mass"]
    promotion = Panel(
        "learner's score (wins + draws/2)",
        ["league/vs_previous_score", *_starting(series, "league/vs_previous/")],
        [(threshold, f"promote threshold ({threshold})")] if threshold is not None else [],
        band=("league/vs_previous_lo", "league/vs_previous_hi"),
    )
    # the policy at each evaluation, and the average over the newest of them (selfplay/average.py)
    exploitability = Panel(
        "exploitability", [f"eval/{KUHN_KEY}", "eval/kuhn/average_exploitability"], KUHN_REFERENCE
    )
    return [
        ("curves_steps.png", "Win (solid) and non-loss (dashed) rate vs step", "step", curves),
        ("curves_wall.png", "Win (solid) and non-loss (dashed) rate vs wall time", "minutes", curves),
        ("task_steps.png", "Held-out figures: greedy (pass@1), pass@k, sampled", "step", task_panels),
        ("task_wall.png", "Held-out figures vs wall time", "minutes", task_panels),
        (
            "task_groups.png",
            "The builder's groups: share of samples accepted, groups held back, reserve fills",
            "step",
            [
                Panel("accepted share of samples", ["task/accepted_share", "batch_reward"]),
                Panel(
                    "groups",
                    ["task/groups_all_accepted", "task/groups_none_accepted", "task/groups_held_back"],
                ),
                Panel("rows filled from the reserve", ["task/filled_from_reserve"]),
                Panel(
                    "batch reward by role (solver, checker; or answer, critic, refiner)",
                    _starting(series, "batch_reward/role_"),
                ),
            ],
        ),
        (
            "exploitability.png",
            "Kuhn poker exploitability (chips; lower is better)",
            "step",
            [exploitability],
        ),
        ("exploitability_wall.png", "Kuhn poker exploitability vs wall time", "minutes", [exploitability]),
        (
            "illegal.png",
            "Illegal-move rate (training batch and eval)",
            "step",
            [Panel("illegal-move rate", illegal)],
        ),
        (
            "elo.png",
            "Elo ratings of the learner and the league members",
            "step",
            [Panel("Elo", ["league/learner_elo", *_starting(series, "league/elo/")])],
        ),
        ("promotion.png", "Promotion match vs the previous snapshot (95% Wilson CI)", "step", [promotion]),
        (
            "diversity.png",
            "Diversity of the policy's replies",
            "step",
            [
                Panel("distinct-n", ["distinct_1", "distinct_2"]),
                Panel("action entropy (nats)", _starting(series, "action_entropy/")),
            ],
        ),
        (
            "throughput.png",
            "Throughput vs wall time",
            "minutes",
            [
                Panel("tokens/s (training play; eval_: evaluations)", ["tokens_per_s", "eval_tokens_per_s"]),
                Panel("trajectories/s", ["trajectories_per_s", "eval_trajectories_per_s"]),
            ],
        ),
        (
            "learner.png",
            "Learner diagnostics",
            "step",
            [
                Panel(name, [name])
                for name in (
                    "loss",
                    "nll",
                    "entropy",
                    "kl_behaviour",
                    "clip_frac",
                    "mfu",
                    "value_loss",
                    "explained_variance",
                )
            ]
            # preference pairs (builder.rows spin): the loss, the implicit reward's margin
            # and how often it orders a pair right, each reply's log-ratio to the reference
            + [
                Panel("preference_loss", ["preference_loss"]),
                Panel("implicit reward", ["reward_margin", "reward_accuracy"]),
                Panel("log-ratio to the reference", ["chosen_logratio", "rejected_logratio"]),
            ],
        ),
    ]


def _labels(panel: Panel) -> list[str]:
    prefix = panel.strip
    if prefix is None:
        prefix = os.path.commonprefix(panel.names) if len(panel.names) > 1 else ""
        prefix = prefix[: prefix.rfind("/") + 1]
    return [n.removeprefix(prefix) for n in panel.names]


def _colour_group(name: str) -> str:
    """An opponent's win and non-loss curves share a colour."""
    prefix, last = name.rsplit("/", 1) if "/" in name else ("", name)
    return prefix if last in CURVE_FIELDS else name


def _draw(ax, series: Series, panel: Panel, x: str) -> None:
    groups = list(dict.fromkeys(map(_colour_group, panel.names)))
    for name, label in zip(panel.names, _labels(panel)):
        style = "--" if name.endswith("/non_loss") else "-"
        colour = f"C{groups.index(_colour_group(name)) % 10}"
        ax.plot(series[name][x], series[name]["value"], style, marker=".", color=colour, label=label)
    if panel.band and all(n in series for n in panel.band):
        lo, hi = (series[n] for n in panel.band)
        ax.fill_between(lo[x], lo["value"], hi["value"], color="C0", alpha=0.2, label="95% CI")
    for (y, label), style in zip(panel.hlines, (":", "-.", "--")):  # at most three
        ax.axhline(y, color="black", linestyle=style, linewidth=1, label=label)
    ax.set_title(panel.title)
    ax.set_xlabel("wall time (min)" if x == "minutes" else "step")
    if x == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(panel.names) > 1 or panel.hlines or panel.band:
        ax.legend(fontsize="small")


def plot(series: Series, out_dir: Path, threshold: float | None = None) -> list[tuple[str, str]]:
    """Write the figures that have data; returns [(file, title)]."""
    written = []
    for file, title, x, panels in figures(series, threshold):
        panels = [replace(p, names=[n for n in p.names if n in series]) for p in panels]
        panels = [p for p in panels if p.names]
        if not panels:
            continue
        ncols = min(2, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        size = (6 * ncols, 3.6 * nrows) if ncols > 1 else (9, 4.5)
        fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            _draw(ax, series, panel, x)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=100)
        plt.close(fig)
        written.append((file, title))
    return written


def plot_head_to_head(state: LeagueState, path: Path) -> None:
    """The score matrix as a heatmap: row's score against column; grey where never played."""
    ids, matrix = score_matrix(state)
    values = np.ma.masked_invalid([[np.nan if v is None else v for v in row] for row in matrix])
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    n = len(ids)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * n, 1.5 + 0.8 * n))
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=1)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center")
    ax.set_xticks(range(n), ids, rotation=45, ha="right")
    ax.set_yticks(range(n), ids)
    ax.set_xlabel("opponent")
    ax.set_ylabel("player")
    ax.set_title("Head-to-head score (wins + draws/2) / games")
    fig.colorbar(image, ax=ax, label="row player's score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(field: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    digits = 0 if field in ("games", "problems") else 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(rates: dict) -> str:
    if rates.get("non_loss") is None or rates.get("games") is None:
        return "n/a"
    games = int(rates["games"])
    lo, hi = wilson_interval(rates["non_loss"] * games, games)
    return f"[{lo:.3f}, {hi:.3f}]"


def last_eval_table(series: Series) -> tuple[list[str], list[list[str]]]:
    """One row per GAME/OPP, at the last step where any of its eval metrics was logged."""
    header = ["game", "opponent", "step", "games", *(f.replace("_", "-") for f in OUTCOME), "non-loss 95% CI"]
    rows = []
    for (game, opp), fields in eval_results(series).items():
        if "accuracy" in fields:  # a task: task_eval_table
            continue
        step = max(s["step"][-1] for s in fields.values())
        at = {f: dict(zip(s["step"], s["value"])).get(step) for f, s in fields.items()}
        rows.append(
            [
                game,
                opp,
                str(step),
                _fmt("games", at.get("games")),
                *(_fmt(f, at.get(f)) for f in OUTCOME),
                _ci(at),
            ]
        )
    return header, rows


def task_eval_table(series: Series) -> tuple[list[str], list[list[str]]]:
    """A task's held-out evaluations, one row per step evaluated."""
    rows, columns = [], TASK_FIELDS
    for (task, _), fields in eval_results(series).items():
        if "accuracy" not in fields:
            continue
        at = {f: dict(zip(s["step"], s["value"])) for f, s in fields.items()}
        columns = task_fields(at)
        for step in sorted(at["accuracy"]):
            rows.append([task, str(step), *(_fmt(f, at.get(f, {}).get(step)) for f in columns)])
    return (["task", "step", *(f.replace("_", "-") for f in columns)], rows) if rows else ([], [])


def _change_row(label: list[str], field: str, before: dict, after: dict) -> list[str]:
    vb, va = before.get(field), after.get(field)
    change = va - vb if vb is not None and va is not None else None
    return [
        *label,
        field.replace("_", "-"),
        _fmt(field, vb),
        _fmt(field, va),
        _fmt(field, change, signed=True),
    ]


def before_after_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Every GAME/OPP key of summary.json's before and after (Kuhn's exploitability apart)."""
    before, after = summary.get("before", {}), summary.get("after", {})
    rows = []
    for key in dict.fromkeys([*before, *after]):
        if key == KUHN_KEY:
            continue
        b, a = before.get(key, {}), after.get(key, {})
        label, both = key.rsplit("/", 1), {**b, **a}
        if "problems" in both:  # a task's evaluation
            rows += [_change_row(label, f, b, a) for f in task_fields(both)]
        elif "non_loss" in both:  # games played
            rows += [_change_row(label, f, b, a) for f in (*OUTCOME, "games")]
            rows.append([*label, "non-loss 95% CI", _ci(b), _ci(a), ""])
        else:  # the hacking monitor's, a reward model's, a final match's: the figures it has
            rows += [_change_row(label, f, b, a) for f, v in both.items() if isinstance(v, int | float)]
    return ["game", "opponent", "measure", "before", "after", "change"], rows


def kuhn_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    b, a = (summary.get(when, {}).get(KUHN_KEY) for when in ("before", "after"))
    if b is None and a is None:
        return [], []
    rows = [_change_row([], f, b or {}, a or {}) for f in ("exploitability", "illegal_mass")]
    return ["measure", "before", "after", "change"], rows


def acceptance_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """summary.json's acceptance figures: the final policy's, and the best checkpoint's."""
    rows = [
        [name, "n/a" if a["value"] is None else f"{a['value']:.3f}", a["target"], "yes" if a["met"] else "no"]
        for name, a in summary.get("acceptance", {}).items()
    ]
    return ["figure", "value", "target", "met"], rows


def work_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Where the generated turns went, and how busy learner and generators were."""
    turns, busy = summary.get("turns", {}), summary.get("busy", {})
    rows = [[name.replace("_", " "), f"{value:,}"] for name, value in turns.items() if isinstance(value, int)]
    if "never_trained_share" in turns:
        rows.append(["never trained / forwarded", f"{turns['never_trained_share']:.1%}"])
    rows += [[f"{part} busy", f"{value:.0%}"] for part, value in busy.items()]
    if "learner_mfu" in summary:
        rows.append(["learner MFU", f"{summary['learner_mfu']:.2%}"])
    return ["turns and time", "value"], rows


def retention_table(series: Series) -> tuple[list[str], list[list[str]]]:
    """One row per league member: the evals re-run when it was created (its last value)."""
    members = snapshot_members(series)
    keys = sorted({k for m in members for k in eval_results(series, f"snapshot/{m}")})

    def field(g: str, o: str) -> str:  # a game's non-loss; a task's score (judged) or accuracy
        logged = [
            f
            for f in ("non_loss", "score", "accuracy")
            if any(f"snapshot/{m}/{g}/{o}/{f}" in series for m in members)
        ]
        return logged[0] if logged else "non_loss"

    fields = {k: field(*k) for k in keys}
    header = ["member", "step", *(f"{g}/{o} {fields[g, o].replace('_', '-')}" for g, o in keys)]
    kuhn = any(f"snapshot/{m}/{KUHN_KEY}" in series for m in members)
    header += ["kuhn exploitability"] if kuhn else []
    rows = []
    for m in members:
        names = [f"snapshot/{m}/{g}/{o}/{fields[g, o]}" for g, o in keys]
        names += [f"snapshot/{m}/{KUHN_KEY}"] if kuhn else []
        step = max(s["step"][-1] for n, s in series.items() if n.startswith(f"snapshot/{m}/"))
        rows.append(
            [m, str(step), *(_fmt("value", series[n]["value"][-1] if n in series else None) for n in names)]
        )
    return header, rows


def league_blocks(run_dir: Path, out_dir: Path) -> list[tuple]:
    """The league table and head-to-head heatmap; none when no checkpoint holds a league."""
    try:
        state = load_league(run_dir)
    except FileNotFoundError:
        return []
    rows = [
        [r["id"], str(r["step"]), f"{r['elo']:.1f}", "/".join(map(str, r["learner_w_d_l"]))]
        for r in member_rows(state)
    ]
    plot_head_to_head(state, out_dir / "head_to_head.png")
    return [
        ("h2", "League"),
        (
            "p",
            f"Learner Elo {state.learner_rating:.1f}; {len(rows)} members; "
            f"{state.games_played} games recorded (newest complete checkpoint).",
        ),
        ("table", ["member", "step", "Elo", "learner W/D/L vs it"], rows),
        ("img", "head_to_head.png", "Head-to-head score matrix"),
    ]


def promote_threshold(config_text: str) -> float | None:
    league = (yaml.safe_load(config_text) or {}).get("league") or {}
    return league.get("promote_threshold")


def _table_section(title: str, table: tuple[list[str], list[list[str]]], note: str = "") -> list[tuple]:
    header, rows = table
    if not rows:
        return []
    return [("h2", title), *([("p", note)] if note else []), ("table", header, rows)]


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *args in blocks:
        if kind == "h1":
            out.append(f"# {args[0]}")
        elif kind == "h2":
            out.append(f"## {args[0]}")
        elif kind == "p":
            out.append(args[0])
        elif kind == "table":
            header, rows = args
            out += ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows]]
        elif kind == "img":
            out.append(f"![{args[1]}]({args[0]})")
        elif kind == "pre":
            out.append(f"```yaml\n{args[0].rstrip()}\n```")
        out.append("")
    return "\n".join(out)


def to_html(title: str, blocks: list[tuple]) -> str:
    e = html.escape
    body = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{e(args[0])}</{kind}>")
        elif kind == "table":
            header, rows = args
            body.append(
                "<table>\n<tr>"
                + "".join(f"<th>{e(h)}</th>" for h in header)
                + "</tr>\n"
                + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>\n" for r in rows)
                + "</table>"
            )
        elif kind == "img":
            body.append(f'<p><img src="{e(args[0])}" alt="{e(args[1])}"></p>')
        elif kind == "pre":
            body.append(f"<pre>{e(args[0])}</pre>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}"
        "img{max-width:100%}pre{background:#f4f4f4;padding:1em;overflow-x:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/{*.png, report.md, report.html}; returns the report.md path."""
    run_dir = Path(run_dir)
    series = load_series(run_dir / "metrics.parquet")
    out_dir = run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    config = config_path.read_text() if config_path.exists() else None
    title = f"Run report: {run_dir.name}"
    last_step = max(s["step"][-1] for s in series.values())
    minutes = max(s["minutes"][-1] for s in series.values())
    blocks: list[tuple] = [
        ("h1", title),
        ("p", f"Last logged step {last_step}, {minutes:.1f} min wall time."),
    ]
    blocks += _table_section("Last evaluation", last_eval_table(series))
    blocks += _table_section(
        "Kuhn poker exploitability",
        kuhn_table(summary),
        "OpenSpiel exploitability in chips: uniform random play 0.458, Nash 0.",
    )
    blocks += _table_section(
        "Held-out evaluations of the task", task_eval_table(series), "pass-at-k: one of k samples right."
    )
    blocks += _table_section("Before and after training", before_after_table(summary))
    if "after_sft" in summary:
        blocks += _table_section(
            "After the supervised stage",
            before_after_table({"before": summary["after_sft"], "after": summary.get("after", {})}),
            "before: the supervised stage's final evaluation; after: the run's.",
        )
    best = summary.get("best")
    blocks += _table_section(
        "Acceptance",
        acceptance_table(summary),
        f"best/: the best checkpoint (step {best['step']}, by {best['metric']}), evaluated afresh at the end."
        if best
        else "",
    )
    blocks += _table_section(
        "Work",
        work_table(summary),
        "Turns generated, forwarded to the buffer (the learner's), trained on (samples), dropped; "
        "busy fractions of this session; MFU against learner.peak_tflops.",
    )
    blocks += _table_section(
        "Capability retention",
        retention_table(series),
        "Each league member's evaluations, run when it was snapshotted.",
    )
    blocks += league_blocks(run_dir, out_dir)
    threshold = promote_threshold(config) if config is not None else None
    images = [("img", file, alt) for file, alt in plot(series, out_dir, threshold)]
    blocks += [("h2", "Plots"), *images] if images else []
    if config is not None:
        blocks += [("h2", "Config"), ("pre", config)]
    md_path = out_dir / "report.md"
    md_path.write_text(to_markdown(blocks))
    (out_dir / "report.html").write_text(to_html(title, blocks))
    return md_path
