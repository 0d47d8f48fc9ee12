"""What the encoder of pureml's ``hf_transformer`` batches costs: padding, time, compile time.

1. ``padding``: the share of the encoder's positions that hold real tokens over a whole epoch of
   batches, every window padded to one width (before 9114220) against the long and the short
   windows in two groups, each padded to its own width (``hf_transformer``'s collate).
2. ``encoder``: forward + backward of the encoder alone (eager) on one batch, the same windows
   in one group and in two, alternating; medians.
3. ``compile`` (``--compile``, ~5 minutes): the trainer's cold compile of BERT-base's whole step
   (a fresh inductor cache for each run), ``train.flat_params`` true and false.

Corpora: B1's (NCBI-disease train with its tiny BERT, 1 thread) and B3's (synthetic 256-word
documents with the BERT-base-sized encoder that ``gpu_bench.py``'s data part builds, 2 threads),
batches of 2000 words.

    python3 benchmarks/encoder_cost.py [--reps 5] [--compile]

Prints a table; the last line is one JSON object. Writes RESULTS.md's ``encoder_cost`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import harness  # noqa: E402

B3_WORK = Path("/tmp/pureml-b3")


def b3_assets() -> tuple[Path, Path]:
    """B3's BERT-base-sized model folder and brat corpus (gpu_bench.py's data part), built into
    /tmp/pureml-b3 when missing (~10 s)."""
    data, base = B3_WORK / "data-full-256", B3_WORK / "model-base-256"
    if not (base / "config.json").is_file():
        subprocess.run(
            [sys.executable, str(BENCH / "gpu_bench.py"), "--parts", "data",
             "--work", str(B3_WORK), "--out", str(B3_WORK / "out")],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return base, data


def corpora() -> dict[str, tuple[Path, Path, int]]:
    """name -> (model folder, brat train folder, torch threads), built when missing."""
    import tiny_bert

    ncbi = next(
        p
        for p in (Path("/work/shared/data/ncbi-disease"), harness.WORK / "ncbi-disease")
        if (p / "train").is_dir()
    )
    tiny = harness.WORK / "tiny-bert"
    if not (tiny / "config.json").is_file():
        tiny_bert.build(tiny, ncbi)
    base, data = b3_assets()
    return {
        "B1 NCBI, tiny BERT": (tiny, ncbi / "train", 1),
        "B3 corpus, BERT-base": (base, data / "train", 2),
    }


def one_group(windows: list[dict]) -> list[dict]:
    """The same rows padded to the first group's width: the layout before the split."""
    import torch

    width = windows[0]["input_ids"].shape[1]
    return [
        {
            k: torch.cat(
                [
                    w[k]
                    if w[k].shape[1] == width
                    else torch.nn.functional.pad(w[k], (0, width - w[k].shape[1]))
                    for w in windows
                ]
            )
            for k in windows[0]
        }
    ]


def word_batches(
    model: Path, train: Path, words: int, *, supervision: bool = False, limit: int | None = None
) -> tuple:
    """``(nlp, batches)``: a pipeline holding only ``hf_transformer`` over ``model``, and the
    preprocessed items of ``train``'s documents in file order, cut into batches of at most
    ``words`` words (``limit``: stop after that many batches). ``supervision=True`` preprocesses
    as the trainer does, so that collate lays the windows out as in training."""
    from pureml.nlp import Pipeline
    from pureml.nlp.hf_transformer import HfTransformer
    from pureml.stream import read_standoff

    nlp = Pipeline({"embedding": HfTransformer(str(model))})
    batches, batch, n = [], [], 0
    for doc in read_standoff(train):
        item = nlp.preprocess(doc, supervision=supervision)
        if batch and n + item["embedding"]["n_words"] > words:
            batches.append(batch)
            if limit is not None and len(batches) >= limit:
                return nlp, batches
            batch, n = [], 0
        batch.append(item)
        n += item["embedding"]["n_words"]
    return nlp, batches


def measure(model: Path, train: Path, threads: int, reps: int, words: int = 2000) -> dict:
    import torch

    torch.set_num_threads(threads)
    nlp, batches = word_batches(model, train, words)
    emb = nlp.get_pipe("embedding")
    real = two = one = 0
    for b in batches:
        windows = nlp.collate(b)["embedding"]["windows"]
        real += sum(int(w["attention_mask"].sum()) for w in windows)
        two += sum(w["input_ids"].numel() for w in windows)
        one += one_group(windows)[0]["input_ids"].numel()
    windows = nlp.collate(batches[0])["embedding"]["windows"]
    layouts = {"one group": one_group(windows), "two groups": windows}

    def run(ws: list[dict]) -> float:
        emb.model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        sum(emb.model(**w).last_hidden_state.float().sum() for w in ws).backward()
        return time.perf_counter() - t

    for ws in layouts.values():
        run(ws)
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for _ in range(reps):
        for k, ws in layouts.items():
            times[k].append(run(ws))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batches": len(batches),
        "real_share_one_group": real / one,
        "real_share_two_groups": real / two,
        "batch0_shapes": [list(w["input_ids"].shape) for w in windows],
        "encoder_ms": {k: 1e3 * v for k, v in med.items()},
        "encoder_runs_ms": {k: [round(1e3 * x, 1) for x in v] for k, v in times.items()},
        "two_vs_one": med["two groups"] / med["one group"],
        "threads": threads,
    }


def cold_compile(model: Path, data: Path, flat: bool) -> dict:
    """The trainer's first step on BERT-base with an empty inductor cache (500-word batches)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(BENCH / "b1_pureml.py"), "--model", str(model),
               "--data", str(data), "--steps", "2", "--threads", "2", "--no-predict",
               "--out", str(out), "--workdir", str(Path(tmp) / "run"),
               "--set", 'train_data.ner.batch_size="500 words"', "--set", 'train.logger=["json"]',
               "--set", f"train.flat_params={'true' if flat else 'false'}"]  # fmt: skip
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        subprocess.run(
            cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        r = json.loads(out.read_text())
    return {"compile_s": r["compile"]["compile_s"], "graphs": r["compile"]["unique_graphs"]}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--compile", action="store_true", help="also the cold compile of BERT-base's step"
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    found = corpora()
    res: dict = {"benchmark": "encoder_cost", "corpora": {}}
    rows = []
    for name, (model, train, threads) in found.items():
        harness.log(f"{name}: padding and encoder time")
        m = measure(model, train, threads, args.reps)
        res["corpora"][name] = m
        rows.append([name, m["batches"], f"{m['real_share_one_group']:.1%}", f"{m['real_share_two_groups']:.1%}",
                     f"{m['encoder_ms']['one group']:.1f}", f"{m['encoder_ms']['two groups']:.1f}",
                     f"{m['two_vs_one']:.3f}", m["threads"]])  # fmt: skip
    table = harness.md_table(
        ["corpus", "batches", "real positions, one group", "two groups", "encoder fwd+bwd ms, one group",
         "two groups", "two / one", "threads"], rows)  # fmt: skip
    if args.compile:
        model, train, _ = found["B3 corpus, BERT-base"]
        res["compile"] = {}
        for flat in (True, False):
            harness.log(f"cold compile, flat_params={flat}")
            res["compile"][f"flat_params={flat}"] = cold_compile(model, train.parent, flat)
        table += "\n\n" + harness.md_table(
            ["BERT-base step, cold compile (CPU, 2 threads)", "seconds", "graphs"],
            [[k, f"{v['compile_s']:.1f}", v["graphs"]] for k, v in res["compile"].items()],
        )
    print(table)
    if not args.no_write:
        import torch

        body = "\n".join([
            "## Encoder cost of hf_transformer batches (`benchmarks/encoder_cost.py`)", "",
            f"- machine: {harness.machine()}, torch {torch.__version__}",
            f"- date: {harness.now_utc()}",
            f"- command: `python3 benchmarks/encoder_cost.py --reps {args.reps}{' --compile' if args.compile else ''}`",
            "- batches of 2000 words in file order; encoder forward + backward alone, eager, on the first batch, "
            f"alternating, median of {args.reps}; one group = the same rows padded to the long windows' width",
            "", table,
        ])  # fmt: skip
        harness.write_section("encoder_cost", body)
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
