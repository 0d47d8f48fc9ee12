"""Data parallelism: training throughput with 1 process vs N processes (torchrun), same recipe.

    python benchmarks/distributed.py                       # CPU: 1 vs 2 processes, gloo
    python benchmarks/distributed.py --device cuda --nproc 8   # one node, 8 GPUs, nccl

Every configuration trains the same recipe (default: recipes/ncbi_disease_ner.toml, NCBI-disease,
scratch encoder + CRF, batches of "2000 words") for ``--steps`` steps: the global batch is the
same, so N processes each train 1/N of every batch and all-reduce the gradients. Runs alternate
between configurations (1 process, N processes, and on CPU also 1 process with N threads: the
same cores used by one process) so that load drifts hit all of them alike; medians over
``--repeats``.

Throughput is words of the global batch per second of step time, measured by the trainer on
rank 0 (``timings.jsonl``: from drawing the batch to the step's metrics on the host, which
includes waiting for the other ranks), over the steps after ``--warmup`` (compilation, first
batches). Scaling efficiency = words/s with N processes / (N x words/s with 1 process).
Wall time (launch to exit: imports, process group, compile, validation) is reported apart.

Prints a table; the last line is one JSON object; writes its section of benchmarks/RESULTS.md
between ``<!-- distributed:start -->`` and ``<!-- distributed:end -->`` (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402

NCBI = "/work/shared/data/ncbi-disease"


def _overrides(args: argparse.Namespace, out: Path, threads: int) -> list[str]:
    sets = [
        f"train.max_steps={args.steps}",
        f"train.output_dir={out}",
        f"train.validation_interval={args.steps}",
        f"train.checkpoint_interval={args.steps}",
        "train.save_model=false",
        'train.logger=["json"]',
        f"train.compile_backend={args.backend}",
        f"train.compile={'false' if args.backend == 'none' else 'true'}",
        *([f"train.threads={threads}", "train.cpu=true"] if args.device == "cpu" else []),
        *([f"paths.ncbi={args.data}"] if args.data else []),
        *([f"val_data.path={args.val_path}"] if args.val_path else []),
        *args.set,
    ]
    if args.backend == "none":
        sets = [s for s in sets if not s.startswith("train.compile_backend")]
    return [a for s in sets for a in ("--set", s)]


def _run(args: argparse.Namespace, nproc: int, threads: int, work: Path) -> dict:
    """One training run; throughput from rank 0's timings.jsonl and metrics.jsonl."""
    out = work / f"p{nproc}t{threads}"
    shutil.rmtree(out, ignore_errors=True)
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else []
    )
    cmd = [sys.executable, *launcher, "-m", "pureml.train", args.recipe]
    cmd += _overrides(args, out, threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"run failed ({nproc} processes): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    timings = [json.loads(x) for x in (out / "timings.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    words = {m["step"]: m["words"] for m in metrics if "words" in m}
    kept = [t for t in timings if t["step"] > args.warmup]
    step_s = sum(t["step_s"] for t in kept)
    n_words = sum(words[t["step"]] for t in kept)
    first = sum(t["step_s"] for t in timings if t["step"] <= args.warmup)
    return {
        "words_per_s": n_words / step_s,
        "step_ms": 1000 * step_s / len(kept),
        "warmup_s": first,
        "wall_s": wall,
        "loss_last": metrics[-1].get("loss"),
    }


def _machine() -> str:
    cpu = harness.cpu_name() or platform.processor() or "cpu"
    gpu = (
        f", {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else ""
    )
    return f"{cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "ncbi_disease_ner.toml"))
    ap.add_argument("--data", default=NCBI, help="sets paths.ncbi ('' to leave the recipe's)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--nproc", type=int, default=2, help="processes of the parallel run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8, help="first steps left out (compile)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="inductor", help="inductor, aot_eager, eager or none")
    ap.add_argument("--set", action="append", default=[], help="extra recipe override k=v")
    ap.add_argument("--no-same-cores", action="store_true", help="skip 1 process x N threads")
    ap.add_argument(
        "--val-docs",
        type=int,
        default=4,
        help="validate on the first N dev docs only (not timed; saves wall time); 0: recipe's",
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
        sys.exit(f"--nproc {args.nproc} needs {args.nproc} GPUs, {torch.cuda.device_count()} seen")

    configs = [(1, args.threads), (args.nproc, args.threads)]
    if args.nproc == 1:  # a smoke run of the set-up (one GPU): nothing to compare
        configs = configs[:1]
    elif args.device == "cpu" and not args.no_same_cores:
        configs.append((1, args.threads * args.nproc))  # one process on the same cores
    results: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    load = []
    with tempfile.TemporaryDirectory(prefix="pureml-dist-") as tmp:
        args.val_path = None
        if args.val_docs and args.data:
            dev, args.val_path = Path(args.data) / "devel", Path(tmp) / "dev"
            args.val_path.mkdir()
            for txt in sorted(dev.glob("*.txt"))[: args.val_docs]:
                for f in dev.glob(txt.stem + ".*"):
                    shutil.copy(f, args.val_path)
        for r in range(args.repeats):
            for c in configs if r % 2 == 0 else list(reversed(configs)):
                load.append(os.getloadavg()[0])
                res = _run(args, c[0], c[1], Path(tmp))
                results[c].append(res)
                print(
                    f"  repeat {r + 1}: {c[0]} proc x {c[1]} thr: {res['words_per_s']:,.0f} "
                    f"words/s, wall {res['wall_s']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )

    def med(c: tuple[int, int], key: str) -> float:
        return statistics.median(x[key] for x in results[c])

    base = med(configs[0], "words_per_s")
    par = med(configs[1 if len(configs) > 1 else 0], "words_per_s")  # --nproc 1: the same run
    efficiency = par / (args.nproc * base)
    unit = "GPU" if args.device == "cuda" else "CPU"
    lines = [
        f"recipe {Path(args.recipe).name}, {args.steps} steps (first {args.warmup} left out), "
        f"backend {args.backend}, {args.device}, median of {args.repeats} alternating runs, "
        f"load average {statistics.median(load):.1f} on {os.cpu_count()} cores",
        f"{'processes x threads':<22}{'words/s':>12}{'step ms':>10}{'warm-up s':>11}"
        f"{'wall s':>9}{'speed-up':>10}",
    ]
    for c in configs:
        lines.append(
            f"{f'{c[0]} x {c[1]}':<22}{med(c, 'words_per_s'):>12,.0f}{med(c, 'step_ms'):>10.1f}"
            f"{med(c, 'warmup_s'):>11.1f}{med(c, 'wall_s'):>9.0f}"
            f"{med(c, 'words_per_s') / base:>9.2f}x"
        )
    lines.append(f"scaling efficiency, {args.nproc} {unit} processes vs 1: {efficiency:.0%}")
    summary = {
        "benchmark": "distributed",
        "device": args.device,
        "nproc": args.nproc,
        "threads": args.threads,
        "steps": args.steps,
        "backend": args.backend,
        "words_per_s_1": round(base),
        f"words_per_s_{args.nproc}": round(par),
        "scaling_efficiency": round(efficiency, 3),
        "load_average": round(statistics.median(load), 1),
    }
    if len(configs) > 2:
        summary[f"words_per_s_1x{args.threads * args.nproc}threads"] = round(
            med(configs[2], "words_per_s")
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        date = harness.now_utc()
        harness.write_section(
            "distributed",
            "## Data parallelism: 1 vs N processes (`benchmarks/distributed.py`)\n\n"
            f"- machine: {_machine()}\n- date: {date}\n- command: `{cmd}`\n\n"
            f"```\n{table}\n```\n\n`{json.dumps(summary)}`",
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
