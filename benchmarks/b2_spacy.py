"""B2 contender: spaCy's CPU NER pipeline trained from scratch (run inside benchmarks/.work/spacy-venv).

``spacy init config --pipeline ner --optimize efficiency`` (CPU is the default: spaCy 3.8 has
no ``--cpu`` flag, only ``--gpu``) on a blank English pipeline, NCBI
converted to DocBin (entities aligned to spaCy's tokens with ``alignment_mode="expand"``), trained
with spaCy's own loop (``spacy.cli.train.train``) and its default schedule (evaluation every 200
steps, patience 1600). A logger registered here writes, at each of spaCy's evaluations, the
elapsed training wall time and the dev F1 of the current model by benchmarks/ncbi.py's scorer;
the time spent in that extra scoring is subtracted from the clock. When the time budget is spent
the logger writes its last record and ends the process.

Example::

    benchmarks/.work/spacy-venv/bin/python benchmarks/b2_spacy.py --budget 60 --out curve.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ncbi  # noqa: E402


def to_docbin(nlp, docs: list[dict], path: Path) -> dict:
    from spacy.tokens import DocBin
    from spacy.util import filter_spans

    db = DocBin()
    moved = 0
    for d in docs:
        doc = nlp.make_doc(d["text"])
        spans = []
        for start, end, label in d["spans"]:
            span = doc.char_span(start, end, label=label, alignment_mode="expand")
            if span is None:
                continue
            moved += (span.start_char, span.end_char) != (start, end)
            spans.append(span)
        doc.ents = filter_spans(spans)
        db.add(doc)
    db.to_disk(path)
    return {"docs": len(docs), "realigned_spans": moved}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ncbi.DATA_DIR))
    ap.add_argument("--budget", type=float, default=480.0, help="training wall time, seconds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-frequency", type=int, default=200)
    ap.add_argument(
        "--workdir", default=str(Path(__file__).resolve().parent / ".work" / "runs" / "spacy")
    )
    ap.add_argument("--out", required=True, help="JSON lines: one record per evaluation")
    args = ap.parse_args()

    import spacy

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "config.cfg"
    subprocess.run(
        [sys.executable, "-m", "spacy", "init", "config", str(cfg), "--lang", "en",
         "--pipeline", "ner", "--optimize", "efficiency", "--force"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    blank = spacy.blank("en")
    train_docs = ncbi.read_split("train", args.data)
    dev_docs = ncbi.read_split("devel", args.data)
    conv = {
        "train": to_docbin(blank, train_docs, work / "train.spacy"),
        "dev": to_docbin(blank, dev_docs, work / "dev.spacy"),
    }
    gold = ncbi.gold_of(dev_docs)
    dev_texts = [d["text"] for d in dev_docs]
    out = open(args.out, "w")  # noqa: SIM115 — closed by the logger's finalize or at exit
    state = {"t0": None, "excluded": 0.0}

    @spacy.registry.loggers("pureml_bench.TimedLogger.v1")
    def timed_logger():
        def setup(nlp, stdout=sys.stdout, stderr=sys.stderr):
            state["t0"] = time.perf_counter()

            def log_step(info):
                if info is None:
                    return
                t_eval = time.perf_counter()
                elapsed = t_eval - state["t0"] - state["excluded"]
                preds = {}
                for d, doc in zip(dev_docs, nlp.pipe(dev_texts)):
                    preds[d["id"]] = sorted(
                        {(e.start_char, e.end_char, e.label_) for e in doc.ents}
                    )
                sc = ncbi.score(gold, preds)
                rec = {
                    "contender": "spacy",
                    "step": info["step"],
                    "epoch": info["epoch"],
                    "wall_s": elapsed,
                    "dev_f1": sc["f1"],
                    "dev_precision": sc["precision"],
                    "dev_recall": sc["recall"],
                    "spacy_ents_f": float(info["other_scores"].get("ents_f") or 0.0),
                    "loss": float(info["losses"].get("ner", 0.0)),
                }
                out.write(json.dumps(rec) + "\n")
                out.flush()
                print(json.dumps(rec), flush=True)
                state["excluded"] += time.perf_counter() - t_eval
                if elapsed >= args.budget:
                    out.write(
                        json.dumps({"done": "budget", "wall_s": elapsed, "conversion": conv}) + "\n"
                    )
                    out.close()
                    os._exit(0)

            def finalize():
                if not out.closed:
                    elapsed = time.perf_counter() - state["t0"] - state["excluded"]
                    out.write(
                        json.dumps({"done": "converged", "wall_s": elapsed, "conversion": conv})
                        + "\n"
                    )
                    out.close()

            return log_step, finalize

        return setup

    from spacy.cli.train import train

    overrides = {
        "paths.train": str(work / "train.spacy"),
        "paths.dev": str(work / "dev.spacy"),
        "training.logger": {"@loggers": "pureml_bench.TimedLogger.v1"},
        "training.eval_frequency": args.eval_frequency,
        "training.seed": args.seed,
        "training.max_steps": 0,
        "training.max_epochs": 0,
    }
    train(cfg, work / "model", overrides=overrides)
    if not out.closed:
        out.close()


if __name__ == "__main__":
    main()
