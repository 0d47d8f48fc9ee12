"""B2: pureml's from-scratch recipe vs spaCy's CPU NER pipeline on NCBI-disease: dev F1 against wall time.

Both train from nothing (no download) for the same wall-time budget, each in its own process
(spaCy in benchmarks/.work/spacy-venv, pureml in benchmarks/.work/venv), and both are scored at
each of their evaluations by benchmarks/ncbi.py (exact-match micro F1 over character spans); the
time spent in that extra scoring is left out of their clocks.

    python3 benchmarks/vs_spacy.py                  # 8 minutes each, ~17 min in all
    python3 benchmarks/vs_spacy.py --budget 300 --reps 2
    python3 benchmarks/vs_spacy.py --smoke          # 30 s each, RESULTS.md untouched

Goals: pureml reaches spaCy's best dev F1 in less wall time than spaCy takes to reach it, and
ends higher within the same budget. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

SPACY_VENV = harness.WORK / "spacy-venv"
SPACY_REQUIREMENTS = ["spacy==3.8.*"]
SKIPPED = 3


def read_curve(path: Path) -> tuple[list[dict], dict]:
    points, end = [], {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "done" in rec:
                end = rec
            else:
                points.append(rec)
    return points, end


def time_to_reach(points: list[dict], f1: float) -> float | None:
    for p in points:
        if p["dev_f1"] >= f1:
            return p["wall_s"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--budget", type=float, default=480.0, help="training wall time per run, seconds"
    )
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--contenders", default="spacy,pureml")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="30 s each, eval every 50 steps, pureml not compiled (plumbing only), no RESULTS.md",
    )
    ap.add_argument(
        "--pureml-set", action="append", default=[], help="recipe override for pureml, key=value"
    )
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    harness.exit_on_sigterm()
    eval_frequency = 200
    if args.smoke:
        args.budget, args.reps, args.no_results, eval_frequency = 30.0, 1, True, 50
        args.pureml_set.append("train.compile=false")
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]

    pythons = {}
    if "spacy" in names:
        pythons["spacy"] = harness.ensure_venv(SPACY_VENV, SPACY_REQUIREMENTS)
    if {"pureml", "pureml_eager"} & set(names):
        from vs_edsnlp import REQUIREMENTS, VENV

        pythons["pureml"] = pythons["pureml_eager"] = harness.ensure_venv(VENV, REQUIREMENTS)
    versions = {}
    if "spacy" in pythons:
        versions.update(harness.pip_versions(pythons["spacy"], ["spacy", "thinc"]))
    if "pureml" in pythons:
        versions.update(harness.pip_versions(pythons["pureml"], ["torch"]))

    # pureml_eager: the same recipe with train.compile=false (what pureml does without compiling)
    scripts = {"spacy": "b2_spacy.py", "pureml": "b2_pureml.py", "pureml_eager": "b2_pureml.py"}
    runs: dict[str, list[dict]] = {n: [] for n in names}
    skipped: dict[str, str] = {}
    out_dir = harness.WORK / "runs" / "b2"
    for rep in range(args.reps):
        for name in names:
            if name in skipped:
                continue
            out = out_dir / f"{name}-{rep}.jsonl"
            out.unlink(missing_ok=True)
            cmd = [str(pythons[name]), str(harness.BENCH / scripts[name]), "--budget", str(args.budget),
                   "--threads", str(args.threads), "--eval-frequency", str(eval_frequency), "--out", str(out)]  # fmt: skip
            if name.startswith("pureml"):
                cmd += [f"--set={kv}" for kv in args.pureml_set]
            if name == "pureml_eager":
                cmd += ["--set=train.compile=false"]
            env = harness.contender_env(args.threads, rep)
            harness.log(f"rep {rep + 1}/{args.reps}: {name} for {args.budget:.0f} s")
            proc = harness.run_contender(
                # past the budget a run only goes on to its next evaluation
                cmd,
                out.with_suffix(".log"),
                env=env,
                timeout=args.budget * 1.5 + 180,
            )
            if proc["rc"] == SKIPPED:
                skipped[name] = harness.tail(out.with_suffix(".log"), 1)
                harness.log(f"{name} skipped: {skipped[name]}")
                continue
            points, end = read_curve(out)
            if proc["rc"] != 0 or not points:
                # a contender that fails is reported, not fatal: the others' numbers still count
                why = "timed out" if proc["rc"] in (-9, 137) else f"rc {proc['rc']}"
                last = harness.tail(out.with_suffix(".log"), 2).replace("\n", " | ")[-300:]
                skipped[name] = f"FAILED ({why}, log {out.with_suffix('.log')}): {last}"
                harness.log(f"{name} {skipped[name]}")
                continue
            best = max(points, key=lambda p: p["dev_f1"])
            run = {
                "points": points,
                "end": end,
                "best_f1": best["dev_f1"],
                "best_at_s": best["wall_s"],
                "best_step": best["step"],
                "final_f1": points[-1]["dev_f1"],
                "last_wall_s": points[-1]["wall_s"],
                **proc,
            }
            runs[name].append(run)
            harness.log(
                f"  {name}: best dev F1 {run['best_f1']:.4f} at {run['best_at_s']:.0f} s "
                f"(step {run['best_step']}), peak RSS {proc['peak_rss_mib']:.0f} MiB"
            )

    report = aggregate(runs, args, versions, skipped)
    print(report["table"])
    if not args.no_results:
        harness.write_section("b2", report["markdown"])
    print(json.dumps(report["headline"]))


def aggregate(runs: dict, args, versions: dict, skipped: dict) -> dict:
    med = {}
    for name, rs in runs.items():
        if rs:
            med[name] = {
                k: statistics.median(r[k] for r in rs)
                for k in (
                    "best_f1",
                    "best_at_s",
                    "final_f1",
                    "last_wall_s",
                    "peak_rss_mib",
                    "peak_tree_rss_mib",
                )
            }
            med[name]["best_f1_values"] = [round(r["best_f1"], 4) for r in rs]
    goals, reach = {}, {}
    if "spacy" in med:
        reach = {
            "spacy_best_f1": med["spacy"]["best_f1"],
            "spacy_time_to_best_s": med["spacy"]["best_at_s"],
        }
    for variant in ("pureml", "pureml_eager"):
        if "spacy" not in med or not runs.get(variant):
            continue
        # time the variant needs to reach spaCy's (median) best dev F1, per run
        times = [time_to_reach(r["points"], med["spacy"]["best_f1"]) for r in runs[variant]]
        reached = [t for t in times if t is not None]
        reach[f"{variant}_time_to_spacy_best_s"] = statistics.median(reached) if reached else None
        reach[f"{variant}_times"] = times
    if "spacy" in med and "pureml" in med:
        reached = [t for t in reach["pureml_times"] if t is not None]
        goals = {
            "reaches spaCy's best F1 sooner": bool(reached)
            and statistics.median(reached) < med["spacy"]["best_at_s"],
            "higher best F1 within the same budget": med["pureml"]["best_f1"]
            > med["spacy"]["best_f1"],
        }
    header = ["contender", "best dev F1", "(runs)", "reached at (s)", "final dev F1", "last eval at (s)",
              "peak RSS (MiB)", "peak tree RSS (MiB)"]  # fmt: skip
    rows = [
        [n, round(m["best_f1"], 4), m["best_f1_values"], m["best_at_s"], round(m["final_f1"], 4), m["last_wall_s"],
         m["peak_rss_mib"], m["peak_tree_rss_mib"]]
        for n, m in med.items()
    ]  # fmt: skip
    table = harness.md_table(header, rows)
    curves = []
    for name, rs in runs.items():
        for i, r in enumerate(rs):
            pts = ", ".join(f"{p['wall_s']:.0f}s:{p['dev_f1']:.3f}" for p in r["points"])
            curves.append(f"- {name} run {i + 1} (wall s: dev F1): {pts}")
    reach_txt = (
        "".join(
            f"\n{v} reaches spaCy's best F1 {reach['spacy_best_f1']:.4f} after "
            f"{reach[v + '_time_to_spacy_best_s']} s; spaCy took {reach['spacy_time_to_best_s']:.0f} s"
            for v in ("pureml", "pureml_eager")
            if v + "_times" in reach
        )
        + "\n"
    )
    goals_txt = "".join(f"\n- {k}: {'yes' if v else 'NO'}" for k, v in goals.items())
    skipped_txt = "".join(f"\n- {k} skipped: {v}" for k, v in skipped.items())
    command = (
        f"python3 benchmarks/vs_spacy.py --budget={args.budget:.0f} --reps={args.reps} "
        f"--threads={args.threads} --contenders={args.contenders}"
        + "".join(f" --pureml-set={kv}" for kv in args.pureml_set)
    )
    markdown = (
        "## B2 — pureml from scratch vs spaCy CPU NER\n\n"
        f"- date: {harness.now_utc()}\n- machine: {harness.machine()}\n"
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items() if v)}\n- command: `{command}`\n"
        f"- budget {args.budget:.0f} s of training wall time each, {args.threads} thread(s); "
        "dev F1 by benchmarks/ncbi.py at each evaluation (its own time left out)\n\n"
        + table + "\n" + reach_txt + "\n" + "\n".join(curves) + skipped_txt
        + ("\n\nGoals (same run):" + goals_txt if goals else "") + "\n"
    )  # fmt: skip
    headline = {
        "benchmark": "B2",
        "best_dev_f1": {n: round(m["best_f1"], 4) for n, m in med.items()},
        "best_at_s": {n: round(m["best_at_s"], 1) for n, m in med.items()},
        "peak_rss_mib": {n: round(m["peak_rss_mib"]) for n, m in med.items()},
        **reach,
        "goals": goals,
        "skipped": skipped,
        "budget_s": args.budget,
        "reps": args.reps,
    }
    return {"table": table + reach_txt + skipped_txt, "markdown": markdown, "headline": headline}


if __name__ == "__main__":
    main()
