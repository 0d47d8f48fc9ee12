"""``--dump``: the files describe the batch the record names, and the step's numbers."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from safetensors.torch import load_file

from pureml.replay.cli import main as replay_cli
from pureml.stream import read_jsonl, read_standoff
from pureml.stream.jsonl import doc_to_json
from pureml.training.records import batch_fingerprint

from .conftest import records


def _unflatten(flat: dict) -> list[dict]:
    subs: dict[int, dict] = {}
    for path, t in flat.items():
        first, *rest = path.split(".")
        node = subs.setdefault(int(first), {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = t
    return [subs[i] for i in sorted(subs)]


def test_dump_of_a_multitask_step_writes_the_documents_the_record_names(multi_run, tmp_path):
    out = tmp_path / "dump"
    result = CliRunner().invoke(
        replay_cli, ["replay", str(multi_run), "--step", "6", "--dump", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "all 2 steps (5..6) match the record bit for bit" in result.output
    record = records(multi_run)[5]
    assert record["step"] == 6 and set(record["streams"]) == {"ner", "status"}
    names = [i for s in record["streams"].values() for i in s["doc_ids"]]

    docs = list(read_jsonl(out / "docs.jsonl"))
    assert [d.id for d in docs] == names  # both streams, in batch order
    originals = {d.id: d for d in read_standoff(_corpus_of(multi_run))}
    for d in docs:  # the documents themselves, with their gold annotations
        assert doc_to_json(d) == doc_to_json(originals[d.id])
        assert d.spans["gold"]

    # the tensors and ids are exactly what the fingerprint was computed from
    subs = _unflatten(load_file(str(out / "tensors.safetensors")))
    n_subs = sum(s["sub_batches"] for s in record["streams"].values())
    assert len(subs) == n_subs == 3  # 1 NER batch + a span batch split in 2
    assert batch_fingerprint(names, subs) == record["batch"]
    assert json.loads((out / "batch.json").read_text())["batch"] == record["batch"]

    losses = json.loads((out / "losses.json").read_text())
    assert losses["loss"]["exact"] == record["loss"]
    assert {k.split("/")[1] for k in losses if k.startswith("loss/")} == {"ner", "status"}
    assert losses["loss/ner"]["exact"] == record["losses"]["ner"]

    grads = json.loads((out / "grads.json").read_text())
    gn = float.fromhex(record["grad_norm"])
    assert abs(grads["grad_norm"] - gn) <= 1e-5 * gn
    assert grads["grad_norm_recorded"] == gn
    per_param = grads["params"]
    assert "embedding.table.weight" in per_param
    assert {k.split(".")[0] for k in per_param} == {"embedding", "ner", "status"}
    total = sum(p["grad_norm"] ** 2 for p in per_param.values()) ** 0.5
    assert abs(total - grads["grad_norm"]) <= 1e-9 * total
    assert grads["groups"]["default"]["params"] == len(per_param)
    assert grads["update_norm"] > 0


def _corpus_of(run: Path) -> Path:
    import tomllib

    config = tomllib.loads((run / "config.toml").read_text())
    return Path(config["train_data"]["ner"]["data"]["path"])
