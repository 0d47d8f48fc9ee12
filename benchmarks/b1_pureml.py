"""B1 contender: pureml trained through its Python API with the recipe benchmarks/b1_pureml.toml.

Exits with code 3 and a one-line reason when pureml's trainer is not importable yet, so that
vs_edsnlp.py reports it as skipped rather than failed.

Timing: the trainer's step function (``pureml.core.step.make_step``'s result) is wrapped so each
call is time-stamped on entry; step i lasts from its call to the next one's (the last ends when
training returns), so data loading, logging and anything else the loop does are included, as for
the other contenders. Compile time and graph counts come from ``torch._dynamo``'s counters.

Example::

    benchmarks/.work/venv/bin/python benchmarks/b1_pureml.py --model benchmarks/.work/tiny-bert --out r.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import ncbi  # noqa: E402

SKIPPED = 3
RECIPE = BENCH / "b1_pureml.toml"


def skip(reason: str) -> None:
    print(reason, flush=True)
    sys.exit(SKIPPED)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(ncbi.DATA_DIR))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default=str(BENCH / ".work" / "runs" / "pureml"))
    ap.add_argument("--recipe", default=str(RECIPE))
    args = ap.parse_args()

    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    try:
        import pureml.core.step as core_step

        from pureml.training.trainer import train  # noqa: F401  (the trainer's Python API)
    except ImportError as e:
        skip(f"pureml's trainer is not importable yet ({e})")
    if not Path(args.recipe).exists():
        skip(f"recipe {args.recipe} not found")
    import pureml.training.trainer as trainer_mod

    stamps: list[float] = []
    words: list[float] = []
    make_step = core_step.make_step

    def timed_make_step(*a, **kw):
        step = make_step(*a, **kw)

        def timed(state, sub_batches, *s_a, **s_kw):
            stamps.append(time.perf_counter())
            # the trainer gives every sub-batch the global totals: read the first one
            words.append(float(sub_batches[0]["stats"]["words"]))
            return step(state, sub_batches, *s_a, **s_kw)

        return timed

    core_step.make_step = timed_make_step
    if getattr(trainer_mod, "make_step", None) is make_step:
        trainer_mod.make_step = timed_make_step

    overrides = [
        f"paths.model={args.model}",
        f"paths.data={args.data}",
        f"train.max_steps={args.steps}",
        f"train.seed={args.seed}",
        f"train.threads={args.threads}",
        f"train.output_dir={args.workdir}",
    ]
    from torch._dynamo.utils import counters

    t_setup = time.perf_counter()
    nlp = trainer_mod.train(args.recipe, overrides=overrides)
    t_end = time.perf_counter()
    if not stamps:
        raise SystemExit("the step was never called: did the trainer stop using make_step?")

    compile_info = {
        "unique_graphs": counters["stats"].get("unique_graphs", 0),
        "graph_breaks": sum(counters["graph_break"].values()),
        "recompiles": counters["stats"].get("calls_captured", 0),
    }
    try:
        from torch._dynamo.utils import compile_times

        table = compile_times(repr="csv", aggregate=True)
        compile_info["compile_times"] = str(table)[:2000]
    except Exception:
        pass
    # compile time: what the first step took beyond a steady step
    times = [b - a for a, b in zip(stamps, stamps[1:] + [t_end])]
    steady = sorted(times[len(times) // 2 :])[len(times) // 4] if len(times) > 4 else min(times)
    compile_info["compile_s"] = sum(max(0.0, t - 3 * steady) for t in times)

    dev = ncbi.read_split("devel", args.data)
    t_pred = time.perf_counter()
    with torch.no_grad():
        docs = list(nlp.pipe([d["text"] for d in dev], batch_size=16))
    preds = {
        d["id"]: sorted({(s.start, s.end, s.label) for s in doc.spans.get("ents", [])})
        for d, doc in zip(dev, docs)
    }
    t_pred_end = time.perf_counter()
    result = {
        "contender": "pureml",
        "step_times": times,
        "step_words": words,
        "setup_s": t_setup - t_start,
        "train_s": t_end - t_setup,
        "predict_s": t_pred_end - t_pred,
        "dev": ncbi.score(ncbi.gold_of(dev), preds),
        "compile": compile_info,
        "threads": args.threads,
        "versions": {"torch": torch.__version__},
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
