"""Determinism on GPU: are two runs with ``train.deterministic = true`` bitwise equal, and at
what cost against ``false``?

Trains the quickstart recipe (a wider encoder by default, so the step is not all overhead)
three times, each in a fresh process so that ``CUBLAS_WORKSPACE_CONFIG`` is in place before
CUDA starts: determinism on (twice) and off (once, or ``--off-runs 2`` to see whether off is
already reproducible for this model). Compares the step records (loss, grad norm, batch and
parameter fingerprints, bit for bit) and the final weights, and the median step time after
warm-up. The last line printed is one JSON object; on a machine without CUDA it says so and
exits 0.

    python benchmarks/determinism_gpu.py                      # 50 steps, width 256, depth 4
    python benchmarks/determinism_gpu.py --steps 50 --width 512 --keep /tmp/det
    python benchmarks/determinism_gpu.py --backend none         # the eager step (no compile)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.toml"
WARMUP = 10  # steps left out of the timing (compilation, first shapes)


def _train(out: Path, deterministic: bool, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "default"}
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    if deterministic:  # before CUDA starts in the child, whatever the trainer does later
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    if args.recompile_limit:
        # the step recompiles per batch shape today; a higher limit lets 50 steps finish
        launch = (
            "import sys, runpy, torch._dynamo as d; "
            f"d.config.recompile_limit = {args.recompile_limit}; "
            f"d.config.accumulated_recompile_limit = {4 * args.recompile_limit}; "
            "sys.argv = ['pureml.train', *sys.argv[1:]]; "
            "runpy.run_module('pureml.train', run_name='__main__', alter_sys=True)"
        )
        head = [sys.executable, "-c", launch]
    else:
        head = [sys.executable, "-m", "pureml.train"]
    cmd = [
        *head,
        str(RECIPE),
        "--restart",
        "--set",
        f"train.output_dir={out}",
        "--set",
        f"train.max_steps={args.steps}",
        "--set",
        f"train.checkpoint_interval={args.steps}",
        "--set",
        f"train.validation_interval={10 * args.steps}",
        "--set",
        f"train.deterministic={'true' if deterministic else 'false'}",
        "--set",
        f"train.compile={'false' if args.backend == 'none' else 'true'}",
        "--set",
        f"train.compile_backend={'inductor' if args.backend == 'none' else args.backend}",
        "--set",
        f"nlp.components.embedding.width={args.width}",
        "--set",
        f"nlp.components.embedding.depth={args.depth}",
        "--set",
        'train.logger=["json"]',
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    times = [
        json.loads(line)["step_s"]
        for line in (out / "timings.jsonl").read_text().splitlines()
        if line.strip()
    ]
    warnings = [
        line
        for line in proc.stderr.splitlines()
        if "deterministic" in line and ("Warning" in line or "warn" in line)
    ]
    return {
        "out": out,
        "wall_s": wall,
        "median_step_ms": 1000 * statistics.median(times[WARMUP:] or times),
        "nondeterministic_warnings": sorted(set(warnings))[:5],
    }


def _same(a: Path, b: Path) -> tuple[bool, int | None, bool]:
    """(records equal, first differing step, final weights equal)."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT))
    from pureml.replay.diff import diff_runs

    report = diff_runs(a, b, documents=False)
    first = report.difference.step if report.difference is not None else None
    wa = load_file(str(a / "model-last" / "model.safetensors"))
    wb = load_file(str(b / "model-last" / "model.safetensors"))
    weights = wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
    return report.identical, first, weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--backend", default="inductor", help="inductor, aot_eager, or none (eager)")
    p.add_argument("--recompile-limit", type=int, default=0, help="raise dynamo's limit")
    p.add_argument("--off-runs", type=int, default=1, choices=(1, 2))
    p.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = p.parse_args()

    import torch

    result: dict = {"benchmark": "determinism_gpu", "torch": torch.__version__}
    if not torch.cuda.is_available():
        result["skipped"] = "no CUDA device: determinism on CPU is the default and costs nothing"
        print(json.dumps(result))
        return
    result["device"] = torch.cuda.get_device_name(0)
    root = args.keep or Path(tempfile.mkdtemp(prefix="pureml-det-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        on1 = _train(root / "on-1", True, args)
        on2 = _train(root / "on-2", True, args)
        offs = [_train(root / f"off-{i + 1}", False, args) for i in range(args.off_runs)]
        records_equal, first, weights_equal = _same(on1["out"], on2["out"])
        result.update(
            steps=args.steps,
            width=args.width,
            depth=args.depth,
            backend=args.backend,
            deterministic_bitwise=records_equal and weights_equal,
            deterministic_first_difference=first,
            median_step_ms_on=round(
                statistics.mean([on1["median_step_ms"], on2["median_step_ms"]]), 3
            ),
            median_step_ms_off=round(statistics.mean([o["median_step_ms"] for o in offs]), 3),
            nondeterministic_warnings=on1["nondeterministic_warnings"],
        )
        result["slowdown"] = round(result["median_step_ms_on"] / result["median_step_ms_off"], 3)
        if len(offs) == 2:
            eq, first_off, w_off = _same(offs[0]["out"], offs[1]["out"])
            result["off_bitwise"] = eq and w_off
            result["off_first_difference"] = first_off
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
