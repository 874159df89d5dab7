"""`selfplay report RUN_DIR`: PNG plots plus report.md / report.html in RUN_DIR/report/,
built from metrics.parquet (long format: step, wall_s, name, value), summary.json and
config.yaml."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

OPPONENTS = ("random", "minimax")
RATES = ("win", "draw", "loss", "illegal", "non_loss")
CURVES = [f"eval/{opp}/{m}" for opp in OPPONENTS
          for m in ("win", "non_loss", "first_non_loss", "second_non_loss")]
ILLEGAL = ["batch_illegal"] + [f"eval/{opp}/illegal" for opp in OPPONENTS]
# (file, title, x axis, [(panel title, metric names)]); panels and figures with no
# logged metric are left out.
FIGURES = [
    ("curves_steps.png", "Win and non-loss rate vs step", "step",
     [("rate", CURVES)]),
    ("curves_wall.png", "Win and non-loss rate vs wall time", "minutes",
     [("rate", CURVES)]),
    ("illegal.png", "Illegal-move rate (training batch and eval)", "step",
     [("illegal-move rate", ILLEGAL)]),
    ("throughput.png", "Throughput vs wall time", "minutes",
     [("tokens/s", ["tokens_per_s"]), ("trajectories/s", ["trajectories_per_s"])]),
    ("learner.png", "Learner diagnostics", "step",
     [(name, [name]) for name in ("loss", "entropy", "kl_behaviour", "clip_frac")]),
]
Series = dict[str, dict[str, list[float]]]  # name -> {"step", "minutes", "value"}


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927):
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def load_series(path: Path) -> Series:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics were logged yet (file missing); "
                                "train for at least one step first")
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


def plot(series: Series, out_dir: Path) -> list[tuple[str, str]]:
    """Write the FIGURES that have data; returns [(file, title)]."""
    written = []
    for file, title, x, panels in FIGURES:
        panels = [(t, [n for n in names if n in series]) for t, names in panels]
        panels = [(t, names) for t, names in panels if names]
        if not panels:
            continue
        ncols = min(2, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        size = (6 * ncols, 3.6 * nrows) if ncols > 1 else (9, 4.5)
        fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
        for ax, (panel_title, names) in zip(axes.flat, panels):
            for name in names:
                style = "--" if "/first_" in name or "/second_" in name else "-"
                ax.plot(series[name][x], series[name]["value"], style, marker=".", label=name)
            ax.set_title(panel_title)
            ax.set_xlabel("wall time (min)" if x == "minutes" else "step")
            if x == "step":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if len(names) > 1:
                ax.legend(fontsize="small")
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=100)
        plt.close(fig)
        written.append((file, title))
    return written


def _fmt(field: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    digits = 0 if field == "games" else 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(rates: dict) -> str:
    if rates.get("non_loss") is None or rates.get("games") is None:
        return "n/a"
    games = int(rates["games"])
    lo, hi = wilson_interval(rates["non_loss"] * games, games)
    return f"[{lo:.3f}, {hi:.3f}]"


def last_eval_table(series: Series) -> tuple[list[str], list[list[str]]]:
    """One row per opponent, at the last step where any eval/OPP/* metric was logged."""
    header = ["opponent", "step", "games", *(f.replace("_", "-") for f in RATES), "non-loss 95% CI"]
    rows = []
    for opp in OPPONENTS:
        names = {n.rsplit("/", 1)[1]: s for n, s in series.items() if n.startswith(f"eval/{opp}/")}
        if not names:
            continue
        step = max(s["step"][-1] for s in names.values())
        at = {f: dict(zip(s["step"], s["value"])).get(step) for f, s in names.items()}
        rows.append([opp, str(step), _fmt("games", at.get("games")),
                     *(_fmt(f, at.get(f)) for f in RATES), _ci(at)])
    return header, rows


def before_after_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    before, after = summary.get("before", {}), summary.get("after", {})
    rows = []
    for opp in dict.fromkeys([*before, *after]):
        b, a = before.get(opp, {}), after.get(opp, {})
        for field in (*RATES, "games"):
            vb, va = b.get(field), a.get(field)
            change = va - vb if vb is not None and va is not None else None
            rows.append([opp, field.replace("_", "-"), _fmt(field, vb), _fmt(field, va),
                         _fmt(field, change, signed=True)])
        rows.append([opp, "non-loss 95% CI", _ci(b), _ci(a), ""])
    return ["opponent", "measure", "before", "after", "change"], rows


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
            body.append("<table>\n<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>\n"
                        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>\n" for r in rows)
                        + "</table>")
        elif kind == "img":
            body.append(f'<p><img src="{e(args[0])}" alt="{e(args[1])}"></p>')
        elif kind == "pre":
            body.append(f"<pre>{e(args[0])}</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}"
             "img{max-width:100%}pre{background:#f4f4f4;padding:1em;overflow-x:auto}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/{*.png, report.md, report.html}; returns the report.md path."""
    run_dir = Path(run_dir)
    series = load_series(run_dir / "metrics.parquet")
    out_dir = run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    title = f"Run report: {run_dir.name}"
    last_step = max(s["step"][-1] for s in series.values())
    minutes = max(s["minutes"][-1] for s in series.values())
    blocks: list[tuple] = [("h1", title),
                           ("p", f"Last logged step {last_step}, {minutes:.1f} min wall time.")]
    header, rows = last_eval_table(series)
    if rows:
        blocks += [("h2", "Last evaluation"), ("table", header, rows)]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if "before" in summary or "after" in summary:
        blocks += [("h2", "Before and after training"), ("table", *before_after_table(summary))]
    blocks.append(("h2", "Plots"))
    blocks += [("img", file, alt) for file, alt in plot(series, out_dir)]
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        blocks += [("h2", "Config"), ("pre", config_path.read_text())]
    md_path = out_dir / "report.md"
    md_path.write_text(to_markdown(blocks))
    (out_dir / "report.html").write_text(to_html(title, blocks))
    return md_path
