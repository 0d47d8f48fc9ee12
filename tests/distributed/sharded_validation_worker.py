"""One rank of ``test_sharded_validation.py`` (started by torchrun): scores the same model and
documents with the world (sharded) and without it (one process's path), counts the documents
each pass put through the pipeline, and writes all that to ``OUT/rank<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pureml.distributed import init_distributed, shutdown
from pureml.nlp import NerCrf, Pipeline, ScratchEncoder, SpanClassifier
from pureml.nlp.synthetic import make_corpus
from pureml.training.scorer import Scorer

N_DOCS = 40


def main(out: Path) -> None:
    world = init_distributed(cpu=True)
    torch.manual_seed(0)  # the same model on every rank, as the trainer's synced parameters
    docs = make_corpus(N_DOCS, seed=6)
    nlp = Pipeline(
        {
            "embedding": ScratchEncoder(width=16, depth=1),
            "ner": NerCrf(),
            "status": SpanClassifier(attributes=["status"]),
        }
    )
    nlp.post_init(docs)

    seen: list[str] = []
    annotate = Pipeline._annotate

    def spy(self, batch, heads):
        seen.extend(d.id for d in batch)
        return annotate(self, batch, heads)

    Pipeline._annotate = spy

    def score(documents, **world_kw):
        seen.clear()
        scores = Scorer()(nlp, documents, **world_kw)
        return {"scores": scores, "seen": list(seen)}

    result = {
        "rank": world.rank,
        "world_size": world.world_size,
        "ids": [d.id for d in docs],
        "sharded": score(docs, world=world),
        "alone": score(docs),
        # fewer documents than ranks: rank 1 predicts nothing but still joins the gathers
        "one_doc_sharded": score(docs[:1], world=world),
        "one_doc_alone": score(docs[:1]),
    }
    (out / f"rank{world.rank}.json").write_text(json.dumps(result))
    shutdown(world)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
