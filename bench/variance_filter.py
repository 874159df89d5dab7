"""Variance filtering, measured: generated samples to the same held-out accuracy, GRPO on
arithmetic (`configs/grpo.yaml`) without and with `builder.variance_filter`, per seed.

Both arms of a seed share the supervised stage (deterministic by seed: the same weights and
the same held-out accuracy at its end), then spend `--minutes` in all on GRPO. Each arm's
figure is the number of samples generated in its RL stage (`task/samples`, everything the
generators sampled, held back or not) by the time its learning curve (held-out accuracy,
greedy, 400 problems, against samples; fitted, see below) reaches an accuracy, the same for
both arms of a seed: the goal's (`matched`), the one the plain arm's fitted curve ends its
minutes at; beside it, the supervised stage's plus `--gain` (`fitted`, and read at single
evaluations). The ratio without / with the filter is the saving (GOAL, issue 12). An arm
that never reaches the accuracy counts all it generated, as a bound: without the filter that
makes the ratio a lower bound, with it an upper one (said in the result).

    python -m bench.variance_filter --seeds 3 4 5 --eval-every 10 --eval-samples 1
    python -m bench.variance_filter --seeds 3 4 5 --eval-every 10 --eval-samples 1 --arms screen

Each arm of `--arms` (filter: the variance filter; screen: the filter after a screen of 4
samples a prompt, SPEED's selective prompting; learn: the filter with new problems drawn by
the learnability curriculum, task.curriculum) is compared with the plain arm. Runs are
kept under runs/bench-variance/ (seedS-plain, seedS-filter, seedS-learn; `-evalN-kM` where
`--eval-every`, `--eval-samples` are not the config's); a run that has ended (its summary.json
holds its steps) is read, not run again, if it ran with the settings asked (else the bench
stops, naming the fields that differ), and one cut off resumes from its newest checkpoint,
so an interrupted measurement goes on where it stopped.

The evaluation interval bounds what the figure can resolve: an arm that crosses the target
between two evaluations is credited at the later one. With the config's 50 steps the
filter's arm crossed at its first evaluation after the supervised stage in 2 of 3 seeds, so
its samples were a ceiling. `--eval-every 10 --eval-samples 1` evaluates both arms five
times as often (greedy accuracy on the same 400 problems; one sample each for pass@k, which
this figure does not read, to keep the evaluations cheap). Beside the first version that
reaches the target, each arm's figure is also read with the crossing confirmed by the next
evaluation (`confirmed`): one evaluation's standard error is about 0.02, and a slowly rising
arm evaluated often crosses early by chance.

Both readings rest on single evaluations, and the plain arm, evaluated every 10 steps of
about 130 samples each, has three to eight times the filter's chances per sample (by host)
of crossing early by luck. Since 2026-12-07 every figure is read on each arm's learning curve instead (`fitted`):
held-out accuracy against samples generated, from the supervised stage's accuracy at 0,
fitted non-decreasing (isotonic regression, which pools each evaluation with its neighbours
wherever the curve falls back) and crossed by linear interpolation between evaluations. The
first and confirmed crossings of the supervised stage + GAIN are reported beside it, and each
fitted saving with the accuracy one held-out problem lower and higher (`*_range`: how much of
a seed's figure hangs on a fraction of a problem). What the fit leaves: it reads "reached, and
held on average to the end of the run" (a real fall after a peak pools with it);
interpolation between sparse evaluations errs most for the arm evaluated least often per
sample, the filter; and the mean of per-seed ratios leans high (Jensen), so the geometric
mean is given too.

Which accuracy carries the goal, since the second reading of 2026-12-07: the one the plain
arm's fitted curve ends its minutes at (the accuracy reached without the filter; the mean
of its evaluations from where the fit last rises). It was chosen after seeing seeds 0-2's
runs, where it put every seed of the screen arm over 1.3 (1.74x, 1.72x, 1.53x, against
2.96x, 1.02x, 2.90x at the supervised stage + 0.07: a lower mean and a smaller spread) and
the filter arm at 1.41x, 1.18x, 1.31x (1.33x, 0.84x, 2.12x), so those seeds do not test it:
it was committed (7c07e0e) before seeds 3-5 ran, and only they do. It depends on the run's
minutes: the plain arm's samples to its own final accuracy are about all it generated,
while the filter's arm generates about 2.5x as many in the same minutes. A seed whose
plain arm ends no higher than its supervised stage gives no reading. Under noise
independent from one evaluation to the next it errs against the filter, whose curve must
reach through its own noise the plain arm's noise-lifted end: simulated (identical true
curves 0.16 + 0.25 (1 - exp(-s e / 250k)), evaluations every 1,300 samples to 330k and
every 8,000 to 800k, noise sd 0.022, 2,000 draws), an arm as good per sample (e = 1) reads
0.86x (median 0.87x), 1.3x better 1.12x, 1.5x better 1.30x, 2x better 1.71x
(tests/test_bench.py checks e = 1, 1.3 and 2 on 300 draws: 0.87x, 1.13x, 1.73x). Noise that persists within a
run (a run-long offset beside smaller noise at each evaluation) narrows that margin: an
arm as good reads about 0.96x (a reviewer's simulation).

Seeds 3-5 failed the test (screen 2.17x, 2.08x, 1.20x). Seeds 6-8 were added on 2026-12-07
(this paragraph's first two sentences committed before they ran; plain and screen arms, the
code and the reading unchanged) to narrow the estimate of the screen's saving, not to retest it: the rule stays
that every seed must meet GOAL, which seed 5 already fails, so no added seed can meet it.
They read 1.11x, 1.46x, 1.78x; seeds 3-8 together 1.63x (95% t interval 1.17-2.10), >= 1.3
in 4 of 6 (`--seeds 3 4 5 6 7 8 --eval-every 10 --eval-samples 1 --arms screen` reads the
finished runs)."""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import statistics
from pathlib import Path

from bench.suite import figure, machine, write, write_table
from selfplay.evals import compare, meets
from selfplay.files import run_ended
from selfplay.stats import isotonic, seeds_interval

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench-variance"
CONFIG = "configs/grpo.yaml"
GOAL = ">= 1.3"  # issue 12: the filter reaches the same accuracy on 1.3x fewer samples
CHOSEN_ON = {0, 1, 2}  # the seeds whose runs chose the goal's reading: they cannot test it
# each arm's overrides of the config. The hard-prompt pool (task.hard_fraction) is left out
# of the filter arm: with half of each wave drawn from it (seed 0, one run) it needed 2.1x
# the plain arm's samples, training on the same hard problems again and again
ARMS = {
    "plain": ["builder.variance_filter=false"],
    "filter": ["builder.variance_filter=true"],
    # selective prompting (SPEED): 4 screening samples a prompt, the other 4 only where they
    # disagree; the filter holds back the uniform screens (task.screen_samples)
    "screen": ["builder.variance_filter=true", "task.screen_samples=4"],
    # the learnability curriculum: new problems drawn by difficulty class in proportion to
    # the share of the class's recent groups whose rewards differed, behind the filter
    "learn": ["builder.variance_filter=true", "task.curriculum=learnability"],
}


def series(metrics: list[dict], name: str) -> list[tuple[int, float]]:
    """(step, value) of metric `name`, in step order."""
    return sorted((m["step"], m["value"]) for m in metrics if m["name"] == name)


def learning_curve(
    metrics: list[dict], task: str, start: int
) -> tuple[list[tuple[int, float, float]], float]:
    """From a run's metrics rows ({step, wall_s, name, value}): its held-out evaluations of
    weight versions after step `start` (the supervised stage's end) as (version, accuracy,
    samples generated when the learner made that version: `task/samples` at the last step
    logged at or before it), in version order; and every sample the run generated."""
    accuracy = series(metrics, f"eval/{task}/held_out/accuracy")
    versions = dict(series(metrics, f"eval/{task}/held_out/version"))
    samples = series(metrics, "task/samples")
    steps = [s for s, _ in samples]
    curve = []
    for version, value in sorted((int(versions.get(step, step)), value) for step, value in accuracy):
        if version > start:
            i = bisect.bisect_right(steps, version)  # the last step logged at or before it
            curve.append((version, value, samples[i - 1][1] if i else 0.0))
    return curve, samples[-1][1] if samples else 0.0


def samples_to_reach(metrics: list[dict], task: str, target: float, start: int, confirm: int = 1) -> dict:
    """The earliest weight version after step `start` whose held-out evaluation reaches
    `target` (and, `confirm` > 1, so do the next `confirm` - 1 evaluations: the last
    evaluations of a run may confirm fewer), its accuracy, and the samples generated when
    the learner made it (`learning_curve`). Not reached: `reached` False, the best accuracy
    after `start` and every sample the run generated."""
    curve, total = learning_curve(metrics, task, start)
    for i, (version, value, samples) in enumerate(curve):
        # as acceptance figures are read: the target is a sum, which an accuracy may land on
        if all(compare(">=", v, target) for _, v, _ in curve[i : i + confirm]):
            return {"reached": True, "version": version, "accuracy": value, "samples": samples}
    return {
        "reached": False,
        "version": None,
        "accuracy": max((v for _, v, _ in curve), default=None),
        "samples": total,
    }


def fitted_curve(
    metrics: list[dict], task: str, start: int, after_sft: float
) -> tuple[list[tuple[int, float, float]], float]:
    """A run's learning curve (`learning_curve`) from the supervised stage's accuracy at 0
    samples (version `start`), its accuracies fitted non-decreasing (`isotonic`): (version,
    fitted accuracy, samples), and every sample the run generated."""
    curve, total = learning_curve(metrics, task, start)
    curve = [(start, after_sft, 0.0), *curve]
    fitted = isotonic([value for _, value, _ in curve])
    return [(version, f, samples) for (version, _, samples), f in zip(curve, fitted, strict=True)], total


def final_fitted(metrics: list[dict], task: str, start: int, after_sft: float) -> float:
    """The accuracy a run's fitted curve (`fitted_curve`) ends at: what it reached in its
    minutes, the mean of its evaluations from where the fit last rises."""
    return fitted_curve(metrics, task, start, after_sft)[0][-1][1]


def samples_to_fit(metrics: list[dict], task: str, target: float, start: int, after_sft: float) -> dict:
    """Where the run's learning curve, held-out accuracy against samples generated, fitted
    non-decreasing (`fitted_curve`) from the supervised stage's accuracy at 0 samples, first
    reaches `target`, interpolated linearly between the two evaluations around it; `version`
    is the first weight version whose fitted accuracy reaches it. The first crossing
    (`samples_to_reach`) credits one lucky evaluation, and an arm evaluated more often per
    sample gets more chances of one (the plain arm's 10 steps between evaluations generate
    about 1,300 samples, the filter's 3,600-10,000 by host); the fit pools each evaluation with its
    neighbours wherever the curve falls back. Not reached: `reached` False, the fit's best
    accuracy and every sample the run generated."""
    curve, total = fitted_curve(metrics, task, start, after_sft)
    for i in range(1, len(curve)):
        if compare(">=", curve[i][1], target):
            (_, f0, s0), (version, f1, s1) = curve[i - 1], curve[i]
            share = 1.0 if compare(">=", f0, target) else min((target - f0) / (f1 - f0), 1.0)
            return {"reached": True, "version": version, "accuracy": f1, "samples": s0 + share * (s1 - s0)}
    return {
        "reached": False,
        "version": None,
        "accuracy": max((f for _, f, _ in curve[1:]), default=None),
        "samples": total,
    }


def saving(plain: dict, filtered: dict) -> dict:
    """Samples without / with the filter to the same target, and what kind of figure it is:
    exact when both reached it, a lower bound when only the filtered arm did, an upper bound
    when only the plain arm did (None when neither did)."""
    if not plain["reached"] and not filtered["reached"]:
        return {"ratio": None, "kind": "neither reached the target"}
    kind = {(True, True): "exact", (False, True): "lower bound", (True, False): "upper bound"}
    return {
        "ratio": plain["samples"] / max(filtered["samples"], 1.0),
        "kind": kind[(plain["reached"], filtered["reached"])],
    }


def run(seed: int, arm: str, minutes: float, evals: list[str]) -> Path:
    """One arm's run (or the finished one already there); `evals`: settings of its
    evaluations other than the config's, such as `eval.every_steps=10`."""
    short = {"eval.every_steps": "eval", "task.eval_samples": "k"}
    suffix = "".join(f"-{short[key]}{value}" for key, value in (e.split("=", 1) for e in evals))
    run_dir = WORK / f"seed{seed}-{arm}{suffix}"
    from selfplay import driver
    from selfplay.config import load_config

    sets = [f"out_dir={WORK}", f"time_limit_min={minutes}", f"seed={seed}", *evals]
    cfg = load_config(ROOT / CONFIG, [*sets, *ARMS[arm]])
    if run_ended(run_dir):  # reused only if it ran as asked (minutes, seed, arm, evaluations, dtype)
        ran = dataclasses.asdict(load_config(run_dir / "config.yaml", []))
        differ = [
            k for k, v in dataclasses.asdict(cfg).items() if k not in ("name", "out_dir") and ran.get(k) != v
        ]
        if differ:
            raise SystemExit(
                f"{run_dir}: a finished run with other settings ({', '.join(differ)}); move it aside or remove it"
            )
        return run_dir
    return driver.train(cfg, name=run_dir.name)


def measure(seed: int, minutes: float, gain: float, compared: list[str], evals: list[str]) -> dict:
    """The plain arm and each `compared` arm of one seed, and each one's saving: where the
    fitted learning curve reaches the plain arm's final fitted accuracy (`matched`, the
    goal's), and the supervised stage's + `gain` (`fitted`), each also with the accuracy one
    problem of the held-out set lower and higher (`matched_range`, `fitted_range`); and
    where the first evaluation reaches the latter (`saving`) and the first that the next
    evaluation confirms (`confirmed`)."""
    import pyarrow.parquet as pq

    from selfplay.config import load_config

    arms = {}
    for arm in ["plain", *compared]:
        run_dir = run(seed, arm, minutes, evals)
        cfg = load_config(run_dir / "config.yaml", [])
        summary = json.loads((run_dir / "summary.json").read_text())
        arms[arm] = {
            "run_dir": str(run_dir),
            "metrics": pq.read_table(run_dir / "metrics.parquet").to_pylist(),
            "after_sft": summary["after_sft"][f"{cfg.task.name}/held_out"]["accuracy"],
            "final": summary["after"][f"{cfg.task.name}/held_out"]["accuracy"],
            "task": cfg.task.name,
            "start": cfg.sft.steps,
            "held_out": cfg.task.held_out,
        }
    start = {a["after_sft"] for a in arms.values()}
    if len(start) != 1:
        raise SystemExit(f"seed {seed}: the arms' supervised stages differ ({sorted(start)}): not comparable")
    target = start.pop() + gain
    result = {"seed": seed, "target": target}
    for arm, a in arms.items():
        reached = samples_to_reach(a["metrics"], a["task"], target, a["start"])
        generated = series(a["metrics"], "task/samples")
        result[arm] = {
            **reached,
            "confirmed": samples_to_reach(a["metrics"], a["task"], target, a["start"], confirm=2),
            "fitted": samples_to_fit(a["metrics"], a["task"], target, a["start"], a["after_sft"]),
            "after_sft": a["after_sft"],
            "final": a["final"],
            "generated": generated[-1][1] if generated else 0.0,
            "run_dir": a["run_dir"],
        }
    result["saving"] = {arm: saving(result["plain"], result[arm]) for arm in compared}
    result["confirmed_saving"] = {
        arm: saving(result["plain"]["confirmed"], result[arm]["confirmed"]) for arm in compared
    }
    result["fitted_saving"] = {
        arm: saving(result["plain"]["fitted"], result[arm]["fitted"]) for arm in compared
    }
    # the goal's reading since 2026-12-07 (below): the accuracy the plain arm's fitted curve
    # ends its minutes at, and the samples each arm's fitted curve needs to reach it
    p = arms["plain"]
    matched = final_fitted(p["metrics"], p["task"], p["start"], p["after_sft"])
    result["matched_target"] = matched
    for arm, a in arms.items():
        result[arm]["matched"] = samples_to_fit(a["metrics"], a["task"], matched, a["start"], a["after_sft"])
    # a plain arm that ends no higher than its supervised stage reached nothing to match:
    # every arm would be credited with 0 samples (or the plain arm with all it generated)
    rose = not compare("<=", matched, p["after_sft"])
    result["matched_saving"] = {
        arm: saving(result["plain"]["matched"], result[arm]["matched"])
        if rose
        else {"ratio": None, "kind": "the plain arm ended no higher than its supervised stage"}
        for arm in compared
    }
    problem = 1 / p["held_out"]  # one problem of the held-out set

    def shifted(arm: str, accuracy: float) -> list[float | None]:
        """`arm`'s fitted saving at `accuracy` one problem lower and higher."""
        a = arms[arm]
        return [
            saving(
                samples_to_fit(p["metrics"], p["task"], accuracy + shift, p["start"], p["after_sft"]),
                samples_to_fit(a["metrics"], a["task"], accuracy + shift, a["start"], a["after_sft"]),
            )["ratio"]
            for shift in (-problem, problem)
        ]

    result["fitted_range"] = {arm: shifted(arm, target) for arm in compared}
    result["matched_range"] = {arm: shifted(arm, matched) if rose else [None, None] for arm in compared}
    return result


def ratio_figure(seeds: list[dict], arm: str, key: str, seed_ids: list[int], goal: str | None) -> dict:
    """The mean over seeds of `arm`'s saving (`key`: "matched_saving", "fitted_saving",
    "saving" or "confirmed_saving"), its 95% interval over seeds, the geometric mean, and how many seeds
    meet GOAL (a bound that could hide a miss does not).
    The figure is met only where every seed meets GOAL: a mean carried over it by one lucky
    seed, with another below 1, is not a saving."""
    ratios = [s[key][arm]["ratio"] for s in seeds if s[key][arm]["ratio"] is not None]
    mean = statistics.fmean(ratios) if ratios else None
    geomean = statistics.geometric_mean(ratios) if ratios and min(ratios) > 0 else None
    lo, hi = seeds_interval(ratios) if len(ratios) >= 2 else (None, None)
    met = sum(1 for s in seeds if meets(s[key][arm]["ratio"], GOAL) and s[key][arm]["kind"] != "upper bound")
    note = (
        f"seeds {seed_ids}, 95% CI {lo and round(lo, 2)}-{hi and round(hi, 2)}, "
        f"geometric mean {geomean and round(geomean, 2)}, {GOAL} in {met}/{len(seeds)}"
    )
    result = figure(mean, goal, note=note)
    if goal is not None:
        result["met"] = result["met"] and met == len(seeds)
    return {"figure": result, "mean": mean, "lo": lo, "hi": hi, "geomean": geomean}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--minutes", type=float, default=10.0, help="each run's time, its supervised stage included"
    )
    p.add_argument(
        "--gain",
        type=float,
        default=0.07,
        help="the second accuracy read (not the goal's): the supervised stage's + GAIN",
    )
    p.add_argument("--arms", nargs="+", default=["filter"], choices=[a for a in ARMS if a != "plain"])
    p.add_argument("--eval-every", type=int, default=0, help="steps between evaluations; 0: the config's")
    p.add_argument(
        "--eval-samples",
        type=int,
        default=0,
        help="samples a problem for pass@k in evaluations; 0: the config's",
    )
    args = p.parse_args(argv)
    evals = [f"eval.every_steps={args.eval_every}"] if args.eval_every else []
    evals += [f"task.eval_samples={args.eval_samples}"] if args.eval_samples else []
    facts = machine()
    seeds = []
    for seed in args.seeds:
        seeds.append(measure(seed, args.minutes, args.gain, args.arms, evals))
        s = seeds[-1]
        print(f"seed {seed}: target {s['target']:.3f}: plain {s['plain']['samples']:.0f} samples", end="")
        print(
            "".join(
                f", {a} {s[a]['samples']:.0f}: {s['saving'][a]['ratio']} ({s['saving'][a]['kind']}; "
                f"confirmed {s['confirmed_saving'][a]['ratio']}; fitted {s['fitted_saving'][a]['ratio']}, "
                f"{s['fitted_range'][a]} at the target one problem lower, higher; "
                f"to the plain arm's final {s['matched_target']:.3f}: {s['matched_saving'][a]['ratio']} "
                f"({s['matched_saving'][a]['kind']}; {s['matched_range'][a]} one problem lower, higher))"
                for a in args.arms
            )
        )
    figures, summary = {}, {}
    for arm in args.arms:
        # the plain arm's final accuracy carries the goal (`matched`, since 2026-12-07); the
        # supervised stage's + GAIN read on the fitted curves and at the first and confirmed
        # crossings, from single evaluations, are kept beside it
        # seeds that chose the reading give its figure without the goal (a result, not a test)
        chose = sorted(CHOSEN_ON & set(args.seeds))
        matched = ratio_figure(seeds, arm, "matched_saving", args.seeds, None if chose else GOAL)
        if chose:
            matched["figure"]["note"] += f"; seeds {chose} chose this reading: not a test of it"
        fitted = ratio_figure(seeds, arm, "fitted_saving", args.seeds, None)
        first = ratio_figure(seeds, arm, "saving", args.seeds, None)
        confirmed = ratio_figure(seeds, arm, "confirmed_saving", args.seeds, None)
        # beside it, what the same minutes bought each arm: held-out accuracy at the end
        gains = [s[arm]["final"] - s["plain"]["final"] for s in seeds]
        figures[f"samples_to_plain_final_accuracy_plain_vs_{arm}"] = matched["figure"]
        figures[f"samples_to_fitted_target_plain_vs_{arm}"] = fitted["figure"]
        figures[f"samples_to_target_plain_vs_{arm}"] = first["figure"]
        figures[f"samples_to_confirmed_target_plain_vs_{arm}"] = confirmed["figure"]
        figures[f"final_accuracy_{arm}_minus_plain"] = figure(
            statistics.fmean(gains),
            None,
            note=f"same {args.minutes:g} min a run; per seed {[round(g, 3) for g in gains]}",
        )
        summary[arm] = {k: matched[k] for k in ("mean", "lo", "hi")}
        print(
            f"{arm}: to the plain arm's final accuracy, mean {matched['mean']} ({matched['figure']['note']}); "
            f"to the target, fitted {fitted['mean']} ({fitted['figure']['note']}); first {first['mean']}; "
            f"confirmed {confirmed['mean']}"
        )
    name = "variance_filter" if args.arms == ["filter"] else "variance_" + "_".join(args.arms)
    name += f"_eval{args.eval_every}" if args.eval_every else ""
    name += f"_k{args.eval_samples}" if args.eval_samples else ""
    name += "" if args.seeds == [0, 1, 2] else "_seeds" + "_".join(map(str, args.seeds))
    write(name, figures, facts, minutes=args.minutes, gain=args.gain, evals=evals, seeds=seeds)
    write_table()
    return {"arms": summary, "seeds": seeds}


if __name__ == "__main__":
    main()
