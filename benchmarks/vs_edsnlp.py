"""B1: pureml vs EDS-NLP 0.23 vs a hand-written eager PyTorch loop, on CPU, side by side.

Same tiny random BERT (built locally by tiny_bert.py), same NCBI-disease data, batches of
"2000 words", AdamW lr 3e-3 with a 10% linear warm-up then linear decay, clip 1.0, 200 steps.
Every contender runs in its own subprocess, in the order A B C A B C ... (so slow bursts of the
machine hit all of them alike), and reports its step times, words per step, dev predictions
(scored by benchmarks/ncbi.py for everyone) and, for pureml, compile time and graph counts.

    python3 benchmarks/vs_edsnlp.py                 # 3 repetitions x 3 contenders, ~10 min
    python3 benchmarks/vs_edsnlp.py --smoke         # 1 repetition of 20 steps, no RESULTS.md
    python3 benchmarks/vs_edsnlp.py --reps 5 --threads 2

The venv benchmarks/.work/venv (torch==2.13.0, edsnlp[ml]==0.23.0 and pureml's dependencies)
is created on first use; all three contenders run in it, so they share torch and transformers.

Words are counted with pureml's tokenizer rule for every contender (EDS-NLP's own counts are
scaled by the ratio of the two tokenizers' totals over the training text). Throughput is measured
after ``--warmup`` steps (pureml compiles in its first steps; compile time is reported apart);
"end-to-end" figures include every step.

The last line printed is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import ncbi  # noqa: E402

VENV = harness.WORK / "venv"
REQUIREMENTS = [
    "torch==2.13.0",
    "edsnlp[ml]==0.23.0",
    "attrs",
    "cattrs",
    "click",
    "safetensors",
]
CONTENDERS = {
    "edsnlp": "b1_edsnlp.py",
    "pureml": "b1_pureml.py",
    "eager": "eager_loop.py",
    # the same recipe with train.compile=false: what pureml does without torch.compile
    "pureml_eager": "b1_pureml.py",
}
SKIPPED = 3  # exit code of a contender that cannot run yet (says why on its last line)


def steady(result: dict, warmup: int) -> dict:
    """Steady-state figures: after ``warmup`` steps, leaving out the steps in which pureml
    compiled a graph (``compile_steps``: a new length octave after the warm-up; their time is in
    the compile seconds and in the end-to-end figures)."""
    times, words = result["step_times"], result["step_words"]
    w = min(warmup, max(0, len(times) - 2))
    compiled = set(result.get("compile_steps", []))
    keep = [i for i in range(w, len(times)) if i not in compiled] or list(range(w, len(times)))
    st, sw = [times[i] for i in keep], [words[i] for i in keep]
    return {
        "median_step_s": statistics.median(st),
        "words_per_s": sum(sw) / sum(st),
        "compile_steps_after_warmup": len(range(w, len(times))) - len(keep),
        "words_per_step": statistics.median(words),
        "e2e_words_per_s": sum(words) / sum(times),
        "first_step_s": times[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of steady-state figures")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each contender")
    ap.add_argument("--contenders", default="edsnlp,pureml,eager")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per contender run")
    ap.add_argument(
        "--pureml-set", action="append", default=[], help="recipe override for pureml, key=value"
    )
    ap.add_argument(
        "--smoke", action="store_true", help="1 repetition of 20 steps; RESULTS.md untouched"
    )
    ap.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = ap.parse_args()
    harness.exit_on_sigterm()
    if args.smoke:
        args.reps, args.steps, args.warmup, args.no_results = 1, 20, 3, True
        args.pureml_set.append("train.compile=false")  # plumbing only: compiling takes minutes
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        ap.error(f"unknown contenders {sorted(unknown)}; choose from {sorted(CONTENDERS)}")

    python = harness.ensure_venv(VENV, REQUIREMENTS)
    args.inductor_cache = inductor_cache_state()
    model_dir = harness.WORK / "tiny-bert"
    harness.run_contender(
        [str(python), str(harness.BENCH / "tiny_bert.py"), str(model_dir)],
        harness.WORK / "logs" / "tiny_bert.log",
    )
    if not (model_dir / "fingerprint.txt").exists():
        sys.exit(
            "building the tiny BERT failed: see " + str(harness.WORK / "logs" / "tiny_bert.log")
        )
    versions = harness.pip_versions(
        python, ["torch", "edsnlp", "transformers", "tokenizers", "spacy"]
    )
    check_word_unit()

    runs: dict[str, list[dict]] = {n: [] for n in names}
    skipped: dict[str, str] = {}
    out_dir = harness.WORK / "runs" / "b1"
    for rep in range(args.reps):
        for name in names:
            if name in skipped:
                continue
            out = out_dir / f"{name}-{rep}.json"
            out.unlink(missing_ok=True)
            cmd = [
                str(python),
                str(harness.BENCH / CONTENDERS[name]),
                "--model", str(model_dir),
                "--steps", str(args.steps),
                "--threads", str(args.threads),
                "--out", str(out),
            ]  # fmt: skip
            if name.startswith("pureml"):
                cmd += [f"--set={kv}" for kv in args.pureml_set]
                cmd += ["--workdir", str(harness.WORK / "runs" / f"b1-{name}")]
            if name == "pureml_eager":
                cmd += ["--set=train.compile=false"]
            harness.log(f"rep {rep + 1}/{args.reps}: {name}")
            env = harness.contender_env(args.threads, rep)
            proc = harness.run_contender(
                cmd, out.with_suffix(".log"), env=env, timeout=args.timeout
            )
            if proc["rc"] == SKIPPED:
                skipped[name] = harness.tail(out.with_suffix(".log"), 1)
                harness.log(f"{name} skipped: {skipped[name]}")
                continue
            if proc["rc"] != 0 or not out.exists():
                # a contender that fails is reported, not fatal: the others' numbers still count
                why = "timed out" if proc["rc"] in (-9, 137) else f"rc {proc['rc']}"
                last = harness.tail(out.with_suffix(".log"), 2).replace("\n", " | ")[-300:]
                last += "".join(  # dynamo says why it recompiled: keep the first reason given
                    f" | {line.strip()[line.find('last reason') :][:200]}"
                    for line in harness.tail(out.with_suffix(".log"), 400).splitlines()
                    if "last reason" in line
                )[:400]
                skipped[name] = f"FAILED ({why}, log {out.with_suffix('.log')}): {last}"
                harness.log(f"{name} {skipped[name]}")
                continue
            res = json.loads(out.read_text())
            res.update(proc)
            res.update(steady(res, args.warmup))
            runs[name].append(res)
            harness.log(
                f"  {name}: {res['median_step_s'] * 1e3:.1f} ms/step, {res['words_per_s']:,.0f} words/s, "
                f"dev F1 {res['dev']['f1']:.3f}, peak RSS {res['peak_rss_mib']:.0f} MiB"
            )

    report = aggregate(
        runs,
        args,
        versions,
        skipped,
        fingerprint=(model_dir / "fingerprint.txt").read_text().strip(),
    )
    print(report["table"])
    if not args.no_results:
        harness.write_section("b1", report["markdown"])
    print(json.dumps(report["headline"]))


def inductor_cache_state() -> str:
    """Whether inductor's on-disk cache held compiled code before this run: pureml's compile
    seconds are several times lower with a warm cache (dynamo still traces every graph)."""
    import getpass
    import os
    import tempfile

    default = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    path = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", default))
    warm = path.is_dir() and any(path.iterdir())
    return f"{'warm' if warm else 'cold'} ({path})"


def check_word_unit() -> None:
    """pureml's tokenizer and ncbi.count_words must agree, or words/s would mix units."""
    try:
        sys.path.insert(0, str(harness.ROOT))
        from pureml.nlp.tokenizer import tokenize
    except Exception:  # pureml not importable here: nothing to compare
        return
    texts = [d["text"] for d in ncbi.read_split("train")]
    ours = sum(ncbi.count_words(t) for t in texts)
    theirs = sum(len(tokenize(t)) for t in texts)
    if ours != theirs:
        harness.log(
            f"WARNING: word units differ: ncbi.count_words {ours} vs pureml tokenize {theirs}"
        )


def aggregate(runs: dict, args, versions: dict, skipped: dict, fingerprint: str) -> dict:
    med = {}
    for name, rs in runs.items():
        if not rs:
            continue
        m = {
            k: statistics.median(r[k] for r in rs)
            for k in ("median_step_s", "words_per_s", "e2e_words_per_s", "words_per_step", "first_step_s",
                      "peak_rss_mib", "peak_tree_rss_mib", "setup_s", "train_s", "wall_s",
              "compile_steps_after_warmup")
        }  # fmt: skip
        m["dev_f1"] = statistics.median(r["dev"]["f1"] for r in rs)
        m["dev_f1_values"] = [round(r["dev"]["f1"], 4) for r in rs]
        m["words_per_s_values"] = [round(r["words_per_s"]) for r in rs]
        m["reps"] = len(rs)
        if name.startswith("pureml"):
            for k in ("compile_s", "unique_graphs", "graph_breaks", "recompiles"):
                vals = [r.get("compile", {}).get(k) for r in rs]
                vals = [v for v in vals if v is not None]
                if vals:
                    m[k] = statistics.median(vals)
                    m[k + "_values"] = vals
        med[name] = m

    def ratio(a: str, b: str, key: str = "words_per_s") -> float | None:
        if a not in med or b not in med:
            return None
        return med[a][key] / med[b][key]

    def per_rep_ratios(a: str, b: str) -> list[float]:
        return [
            round(x["words_per_s"] / y["words_per_s"], 3)
            for x, y in zip(runs.get(a, []), runs.get(b, []))
        ]

    pairs = [("pureml", "edsnlp"), ("pureml", "eager"), ("eager", "edsnlp")]
    if "pureml_eager" in med:
        pairs += [("pureml_eager", "edsnlp"), ("pureml_eager", "eager")]
    ratios = {f"{a}/{b}": ratio(a, b) for a, b in pairs}

    header = ["contender", "median step (ms)", "words/step (median)", "words/s", "end-to-end words/s",
              "dev F1 (median)", "dev F1 (runs)", "peak RSS (MiB)", "peak tree RSS (MiB)",
              "first step (s)", "setup (s)", "compile steps left out"]  # fmt: skip
    rows = [
        [n, m["median_step_s"] * 1e3, m["words_per_step"], m["words_per_s"], m["e2e_words_per_s"],
         round(m["dev_f1"], 4), m["dev_f1_values"], m["peak_rss_mib"], m["peak_tree_rss_mib"],
         m["first_step_s"], m["setup_s"], m["compile_steps_after_warmup"]]
        for n, m in med.items()
    ]  # fmt: skip
    table = harness.md_table(header, rows)
    ratio_rows = [
        [k, "n/a" if v is None else round(v, 3), per_rep_ratios(*k.split("/"))]
        for k, v in ratios.items()
    ]
    ratio_table = harness.md_table(
        ["pair (words/s)", "ratio of medians", "per repetition"], ratio_rows
    )
    extra = ""
    if "pureml" in med:
        p = med["pureml"]
        extra = (
            f"\npureml compile: {p.get('compile_s', 'n/a')} s, graphs compiled "
            f"{p.get('unique_graphs', 'n/a')}, graph breaks {p.get('graph_breaks', 'n/a')}, "
            f"recompiles {p.get('recompiles', 'n/a')} (medians; compile s per run: "
            f"{[round(v, 1) for v in p.get('compile_s_values', [])]}; inductor cache at the "
            f"start: {getattr(args, 'inductor_cache', 'unknown')})\n"
        )
    skipped_txt = "".join(f"\n- {k} skipped: {v}" for k, v in skipped.items())

    goals = {}
    if "pureml" in med and "edsnlp" in med and "eager" in med:
        goals = {
            "words_per_s >= 2.0x edsnlp": ratios["pureml/edsnlp"] >= 2.0,
            "words_per_s >= 1.5x eager": ratios["pureml/eager"] >= 1.5,
            "dev F1 >= edsnlp": med["pureml"]["dev_f1"] >= med["edsnlp"]["dev_f1"],
            "peak RSS <= edsnlp": med["pureml"]["peak_rss_mib"] <= med["edsnlp"]["peak_rss_mib"],
        }
    goals_txt = "".join(f"\n- {k}: {'yes' if v else 'NO'}" for k, v in goals.items())

    command = "python3 benchmarks/vs_edsnlp.py " + " ".join(
        f"--{k}={v}" for k, v in (("reps", args.reps), ("steps", args.steps), ("warmup", args.warmup),
                                  ("threads", args.threads), ("contenders", args.contenders))
    ) + "".join(f" --pureml-set={kv}" for kv in args.pureml_set)  # fmt: skip
    markdown = (
        "## B1 — pureml vs EDS-NLP vs eager PyTorch (CPU)\n\n"
        f"- date: {harness.now_utc()}\n- machine: {harness.machine()}\n"
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items() if v)}\n"
        f"- tiny BERT fingerprint: {fingerprint}\n- command: `{command}`\n"
        f"- {args.reps} repetitions, alternating; steady state after {args.warmup} warm-up steps; "
        f"{args.threads} torch thread(s) per contender; words counted with pureml's tokenizer rule\n"
        "- words/s = words / seconds over the steady-state steps (the ratios compare these; "
        "contenders batch slightly different words per step, so step-time ratios differ); steps "
        "after the warm-up in which pureml compiled a graph (a new length octave) are left out of "
        "the steady state (median count in the last column): their time is in the compile "
        "seconds and in end-to-end words/s\n"
        "- model differences by design: EDS-NLP keeps BERT's dropout and decodes its CRF in windows "
        "of 40 words; the eager loop keeps BERT's dropout, whole-document CRF; pureml turns BERT's "
        "dropout off and drops out the word vectors (0.1) with its counter-based RNG\n\n"
        + table
        + "\n\n"
        + ratio_table
        + "\n"
        + extra
        + skipped_txt
        + ("\n\nGoals (same run):" + goals_txt if goals else "")
        + "\n"
    )
    headline = {
        "benchmark": "B1",
        "words_per_s_ratio_vs_edsnlp": ratios["pureml/edsnlp"],
        "words_per_s_ratio_vs_eager": ratios["pureml/eager"],
        "eager_vs_edsnlp": ratios["eager/edsnlp"],
        "ratios": ratios,
        "words_per_s": {n: round(m["words_per_s"]) for n, m in med.items()},
        "median_step_ms": {n: round(m["median_step_s"] * 1e3, 2) for n, m in med.items()},
        "dev_f1": {n: round(m["dev_f1"], 4) for n, m in med.items()},
        "peak_rss_mib": {n: round(m["peak_rss_mib"]) for n, m in med.items()},
        "pureml_compile": {k: med["pureml"].get(k) for k in ("compile_s", "unique_graphs", "graph_breaks", "recompiles")}
        if "pureml" in med else None,
        "goals": goals,
        "skipped": skipped,
        "reps": args.reps,
        "steps": args.steps,
    }  # fmt: skip
    return {
        "table": table + "\n\n" + ratio_table + extra + skipped_txt,
        "markdown": markdown,
        "headline": headline,
    }


if __name__ == "__main__":
    main()
