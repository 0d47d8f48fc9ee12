"""B1 contender: EDS-NLP 0.23 trained with its own ``edsnlp.train`` (run inside the benchmark venv).

Run by vs_edsnlp.py in a subprocess of its own; writes one JSON result file. Protocol (see
DESIGN.md, "Benchmarks that define fast"): ``seed=42`` in ``read_standoff`` (else its shuffle is
seeded from OS entropy), ``eds.transformer(window=128, stride=96)`` + ``eds.ner_crf(mode="joint")``
on the local tiny BERT, batches of "2000 words", AdamW lr 3e-3 with 10% linear warm-up then
linear decay, clip 1.0.

Timing: the training loop is EDS-NLP's; we only time-stamp each step at the entry of its
``PipeDict.forward`` (one call per step: there are no sub-batches), so step i lasts from its
forward to the next one's (the last ends when ``train`` returns), data loading included.

Example::

    benchmarks/.work/venv/bin/python benchmarks/b1_edsnlp.py --model benchmarks/.work/tiny-bert --out r.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ncbi  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(ncbi.DATA_DIR))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default="benchmarks/.work/runs/edsnlp")
    args = ap.parse_args()

    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import edsnlp
    import edsnlp.pipes as eds
    import edsnlp.training.trainer as eds_trainer
    from edsnlp.training import ScheduledOptimizer, TrainingData, train

    # eds.transformer draws its empty-word embedding at construction, before train() seeds.
    torch.manual_seed(args.seed)
    nlp = edsnlp.blank("eds")
    nlp.add_pipe(
        eds.ner_crf(
            mode="joint",
            target_span_getter="gold_spans",
            span_setter=["ents", "*"],
            infer_span_setter=True,
            embedding=eds.transformer(model=args.model, window=128, stride=96),
        ),
        name="ner",
    )
    data = Path(args.data)
    train_stream = edsnlp.data.read_standoff(
        data / "train", span_setter="gold_spans", tokenizer=nlp.tokenizer, seed=args.seed
    )
    optimizer = ScheduledOptimizer(
        "adamw",
        module=nlp,
        total_steps=args.steps,
        groups={
            "": {
                "lr": {
                    "@schedules": "linear",
                    "start_value": 0.0,
                    "max_value": 3e-3,
                    "warmup_rate": 0.1,
                },
            }
        },
    )

    stamps: list[float] = []
    words: list[float] = []
    forward = eds_trainer.PipeDict.forward

    def timed_forward(self, batch, enable=None):
        stamps.append(time.perf_counter())
        words.append(float(batch["ner"]["stats"]["ner_words"]))
        return forward(self, batch, enable=enable)

    eds_trainer.PipeDict.forward = timed_forward
    t_setup = time.perf_counter()
    train(
        nlp=nlp,
        train_data=TrainingData(
            data=train_stream, batch_size="2000 words", shuffle="dataset", pipe_names=["ner"]
        ),
        max_steps=args.steps,
        seed=args.seed,
        optimizer=optimizer,
        grad_max_norm=1.0,
        validation_interval=args.steps,
        output_dir=Path(args.workdir),
        save_model=False,
        logger=False,
        cpu=True,
    )
    t_end = time.perf_counter()
    eds_trainer.PipeDict.forward = forward

    # Words in pureml's unit: EDS counts its own tokens (whitespace runs included), so scale by
    # the ratio of the two counts over the training text.
    train_docs = ncbi.read_split("train", data)
    eds_count = sum(len(nlp.make_doc(d["text"])) for d in train_docs)
    ref_count = sum(ncbi.count_words(d["text"]) for d in train_docs)
    factor = ref_count / eds_count

    nlp.train(False)
    dev = ncbi.read_split("devel", data)
    t_pred = time.perf_counter()
    with torch.no_grad():
        preds = {
            d["id"]: sorted({(e.start_char, e.end_char, e.label_) for e in doc.ents})
            for d, doc in zip(dev, nlp.pipe([d["text"] for d in dev]))
        }
    t_pred_end = time.perf_counter()

    result = {
        "contender": "edsnlp",
        "step_times": [b - a for a, b in zip(stamps, stamps[1:] + [t_end])],
        "step_words": [w * factor for w in words],
        "own_words_per_ref_word": eds_count / ref_count,
        "setup_s": t_setup - t_start,
        "train_s": t_end - t_setup,
        "predict_s": t_pred_end - t_pred,
        "dev": ncbi.score(ncbi.gold_of(dev), preds),
        "threads": args.threads,
        "versions": {"edsnlp": edsnlp.__version__, "torch": torch.__version__},
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
