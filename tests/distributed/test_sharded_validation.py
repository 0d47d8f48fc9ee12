"""Validation split across 2 torchrun ranks (gloo): each rank predicts only its share of the
documents, and every rank ends with the scores one process computes over all of them."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

from torchrun_launch import clean_env, launcher

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# each Scorer pass over a document: the NER head, the span classifier, the timed full pipeline
PASSES = 3


def _without_speed(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if k != "speed"}


def test_two_ranks_each_predict_their_share_and_score_like_one_process(tmp_path):
    proc = subprocess.run(
        [*launcher(2), str(HERE / "sharded_validation_worker.py"), str(tmp_path)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    # a rank's traceback, not only torchrun's summary after it
    assert proc.returncode == 0, proc.stderr[proc.stderr.find("Traceback") :][:6000]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    ids = ranks[0]["ids"]

    for r in ranks:
        alone = r["alone"]
        # without the world, a rank scores everything (today's behaviour for custom scorers)
        assert Counter(alone["seen"]) == {i: PASSES for i in ids}
        assert alone["scores"]["ner"]["micro"]["p"] > 0  # something to compare
        assert _without_speed(r["sharded"]["scores"]) == _without_speed(alone["scores"])
        assert _without_speed(r["one_doc_sharded"]["scores"]) == _without_speed(
            r["one_doc_alone"]["scores"]
        )

    # each rank put only its share through the pipeline: disjoint, contiguous, together all
    shares = [Counter(r["sharded"]["seen"]) for r in ranks]
    assert all(shares) and not set(shares[0]) & set(shares[1])
    assert all(set(c.values()) == {PASSES} for c in shares)
    assert [i for i in ids if i in shares[0]] + [i for i in ids if i in shares[1]] == ids
    assert Counter(ranks[0]["one_doc_sharded"]["seen"]) == {ids[0]: PASSES}
    assert ranks[1]["one_doc_sharded"]["seen"] == []

    # speed: all the documents over one wall time, the same on both ranks
    speeds = [r["sharded"]["scores"]["speed"] for r in ranks]
    assert speeds[0] == speeds[1]
    alone_speed = ranks[0]["alone"]["scores"]["speed"]
    words_per_doc = alone_speed["words_per_s"] / alone_speed["docs_per_s"]
    assert abs(speeds[0]["words_per_s"] / speeds[0]["docs_per_s"] - words_per_doc) < 1e-6
