"""B2 contender: pureml's from-scratch recipe (recipes/ncbi_disease_ner.toml), dev F1 against wall time.

Trained through ``pureml.training.build.build_training`` + ``pureml.train`` exactly as the recipe
says (its own validation every ``validation_interval`` steps stays in the clock, as spaCy's does);
at each validation a callback scores the current pipeline with benchmarks/ncbi.py, leaving that
extra scoring out of the clock. The clock starts when the training phase starts (after the
pipeline is built and labels inferred, as spaCy's starts after its ``initialize``), compile
included. When the budget is spent the callback writes its last record and ends the process.

Exits with code 3 and a one-line reason while pureml's trainer or the recipe is missing.

Example::

    benchmarks/.work/venv/bin/python benchmarks/b2_pureml.py --budget 60 --out curve.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ncbi  # noqa: E402
import pureml_run  # noqa: E402

RECIPE = pureml_run.BENCH.parent / "recipes" / "ncbi_disease_ner.toml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ncbi.DATA_DIR))
    ap.add_argument("--budget", type=float, default=480.0, help="training wall time, seconds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-frequency", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--max-steps", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--recipe", default=str(RECIPE))
    ap.add_argument("--set", action="append", default=[], help="extra recipe override key=value")
    ap.add_argument("--workdir", default=str(pureml_run.BENCH / ".work" / "runs" / "b2-pureml"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    pureml_run.require_trainer()
    if not Path(args.recipe).exists():
        pureml_run.skip(f"recipe {args.recipe} not found")
    import torch

    torch.set_num_threads(args.threads)
    from pureml.training import trainer as trainer_mod
    from pureml.training.build import build_training

    overrides = [
        f"paths.ncbi={args.data}",
        f"train.output_dir={args.workdir}",
        f"train.threads={args.threads}",
        "train.save_model=false",
    ]
    if args.eval_frequency:
        overrides.append(f"train.validation_interval={args.eval_frequency}")
    if args.max_steps:
        overrides.append(f"train.max_steps={args.max_steps}")
    kwargs = build_training(args.recipe, overrides + args.set)
    nlp = kwargs["nlp"]
    dev = ncbi.read_split("devel", args.data)
    gold = ncbi.gold_of(dev)
    timer = pureml_run.StepTimer().install()
    out = open(args.out, "w")  # noqa: SIM115 — closed at the end or before os._exit
    clock = {"t0": None, "excluded": 0.0}

    run_phase = trainer_mod.Trainer._run_phase

    def timed_run_phase(self, *a, **kw):
        if clock["t0"] is None:
            clock["t0"] = time.perf_counter()
        return run_phase(self, *a, **kw)

    trainer_mod.Trainer._run_phase = timed_run_phase

    def on_validation(scores: dict) -> None:
        t_eval = time.perf_counter()
        elapsed = t_eval - clock["t0"] - clock["excluded"]
        sc = ncbi.score(gold, pureml_run.predict(nlp, dev))
        ner = scores.get("ner", {})
        rec = {
            "contender": "pureml",
            "step": scores.get("step"),
            "wall_s": elapsed,
            "dev_f1": sc["f1"],
            "dev_precision": sc["precision"],
            "dev_recall": sc["recall"],
            "pureml_ner_f1": (ner.get("micro") or {}).get("f1"),
        }
        out.write(json.dumps(rec) + "\n")
        out.flush()
        print(json.dumps(rec), flush=True)
        clock["excluded"] += time.perf_counter() - t_eval
        if elapsed >= args.budget:
            times = timer.durations(time.perf_counter())
            out.write(
                json.dumps(
                    {
                        "done": "budget",
                        "wall_s": elapsed,
                        "compile": pureml_run.compile_stats(times),
                    }
                )
                + "\n"
            )
            out.close()
            os._exit(0)

    kwargs["on_validation_callback"] = on_validation
    trainer_mod.train(**kwargs, resume=False)
    end = time.perf_counter()
    times = timer.durations(end)
    out.write(
        json.dumps(
            {
                "done": "max_steps",
                "wall_s": end - clock["t0"] - clock["excluded"],
                "steps": len(times),
                "compile": pureml_run.compile_stats(times),
            }
        )
        + "\n"
    )
    out.close()


if __name__ == "__main__":
    main()
