"""B1 contender: pureml trained through its recipe API with benchmarks/b1_pureml.toml.

The recipe mirrors the EDS-NLP contender: the local tiny BERT through pureml's Hugging Face
transformer embedding (window 128, stride 96) + ``ner_crf``, batches of "2000 words", AdamW lr 3e-3
with a 10% linear warm-up then linear decay, clip 1.0, 200 steps, validation and checkpoint only
at the end (EDS-NLP is run with ``validation_interval=steps`` and ``save_model=False``).

Exits with code 3 and a one-line reason while the trainer, the recipe or a component it names is
not available, so vs_edsnlp.py reports pureml as skipped rather than failed.

Timing: see pureml_run.StepTimer (step i lasts from its call to the next one's). Compile time and
graph counts come from ``torch._dynamo``'s counters.

Example::

    benchmarks/.work/venv/bin/python benchmarks/b1_pureml.py --model benchmarks/.work/tiny-bert --out r.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ncbi  # noqa: E402
import pureml_run  # noqa: E402

RECIPE = pureml_run.BENCH / "b1_pureml.toml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(ncbi.DATA_DIR))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default=str(pureml_run.BENCH / ".work" / "runs" / "b1-pureml"))
    ap.add_argument("--recipe", default=str(RECIPE))
    ap.add_argument("--set", action="append", default=[], help="extra recipe override key=value")
    ap.add_argument("--no-predict", action="store_true", help="skip the dev predictions")
    ap.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="profile this many extra steps after the timed ones (torch.profiler; not timed; "
        "they lengthen the lr schedule: losses and weights are not those of a run without)",
    )
    ap.add_argument("--profile-out", help="the profiled steps' top operators and kernels")
    args = ap.parse_args()

    t_start = time.perf_counter()
    pureml_run.require_trainer()
    if not Path(args.recipe).exists():
        pureml_run.skip(f"recipe {args.recipe} not found")
    import torch

    if args.threads:  # 0: leave torch's default (GPU runs)
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    from pureml.core.state import fingerprint
    from pureml.training import trainer as trainer_mod
    from pureml.training.build import build_training
    from pureml.training.config import RecipeError

    overrides = [
        f"paths.model={Path(args.model).resolve()}",
        f"paths.ncbi={args.data}",
        f"train.max_steps={args.steps + args.profile_steps}",
        f"train.seed={args.seed}",
        f"train.output_dir={args.workdir}",
        *([f"train.threads={args.threads}"] if args.threads else []),
        *args.set,
    ]
    try:
        kwargs = build_training(args.recipe, overrides)
    except RecipeError as e:
        if "unknown" in str(e) and "factory" in str(e):
            pureml_run.skip(f"b1_pureml.toml names a component pureml lacks yet: {e}")
        raise
    nlp = kwargs["nlp"]
    timer = pureml_run.StepTimer().install()
    compiled_in = count_graphs_per_step()
    if args.profile_steps:
        profile_last_steps(args.steps, args.profile_steps, Path(args.profile_out or "profile.txt"))
    t_setup = time.perf_counter()
    trainer_mod.train(**kwargs, resume=False)
    t_end = time.perf_counter()
    if not timer.stamps:
        raise SystemExit("the step was never called: did the trainer stop using make_step?")
    times = timer.durations(t_end)
    if args.profile_steps:  # the profiled steps run after the timed ones and are not counted
        times, timer.words = times[: args.steps], timer.words[: args.steps]
        timer.stamps, timer._losses = timer.stamps[: args.steps], timer._losses[: args.steps]
        del compiled_in[args.steps :]
    import pureml

    result = {
        "contender": "pureml",
        "step_times": times,
        "step_words": timer.words,
        "setup_s": t_setup - t_start,
        "train_s": t_end - t_setup,
        "losses": timer.losses(),
        "fingerprint": fingerprint({k: v for k, v in nlp.named_parameters()}),
        "compile": pureml_run.compile_stats(times),
        # steps during which torch.compile built a graph (a new length octave, say): their time
        # is compile time, counted in compile_s and end-to-end figures, not in the steady state
        "compile_steps": [i for i, n in enumerate(compiled_in) if n],
        "threads": args.threads,
        "versions": {"torch": torch.__version__, "pureml": getattr(pureml, "__version__", "?")},
    }
    if torch.cuda.is_available():
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if not args.no_predict:
        dev = ncbi.read_split("devel", args.data)
        t_pred = time.perf_counter()
        preds = pureml_run.predict(nlp, dev)
        result["predict_s"] = time.perf_counter() - t_pred
        result["dev"] = ncbi.score(ncbi.gold_of(dev), preds)
    Path(args.out).write_text(json.dumps(result))


def profile_last_steps(first: int, n: int, out: Path) -> None:
    """Wrap ``make_step`` to run steps ``first`` .. ``first + n - 1`` (0-based) under
    ``torch.profiler`` and write the top operators by self time (device time on a GPU, where the
    step's host time hides behind the kernels it queues) to ``out``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import pureml.core.step as core_step

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    calls = [0]
    prof = profile(activities=activities)
    inner = core_step.make_step

    def profiled_make_step(*a, **kw):
        step = inner(*a, **kw)

        def profiled(*s_a, **s_kw):
            i = calls[0]
            calls[0] += 1
            if i == first:
                prof.start()
            out_ = step(*s_a, **s_kw)
            if i == first + n - 1:
                if cuda:
                    torch.cuda.synchronize()
                prof.stop()
                key = "self_device_time_total" if cuda else "self_cpu_time_total"
                table = prof.key_averages().table(
                    sort_by=key, row_limit=30, max_name_column_width=70
                )
                out.write_text(f"{n} steps after {first}, sorted by {key}\n{table}\n")
            return out_

        profiled.adopt = step.adopt
        return profiled

    core_step.make_step = profiled_make_step


def count_graphs_per_step() -> list[int]:
    """Wrap ``make_step`` (over the StepTimer's wrapper) to count the graphs each call compiled."""
    from torch._dynamo.utils import counters

    import pureml.core.step as core_step

    added: list[int] = []
    inner = core_step.make_step

    def counted_make_step(*a, **kw):
        step = inner(*a, **kw)

        def counted(*s_a, **s_kw):
            before = counters["stats"].get("unique_graphs", 0)
            out = step(*s_a, **s_kw)
            added.append(counters["stats"].get("unique_graphs", 0) - before)
            return out

        counted.adopt = step.adopt  # the trainer hands the step its own initial state
        return counted

    core_step.make_step = counted_make_step
    return added


if __name__ == "__main__":
    main()
