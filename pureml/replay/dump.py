"""``pureml replay --dump DIR``: what went into a step and what came out, as plain files.

``DIR`` receives:

- ``docs.jsonl``: the batch's documents with their gold annotations, in batch order (one JSON
  object per document, readable by :func:`pureml.stream.read_jsonl`);
- ``batch.json``: the step, the batch fingerprint, and per stream the document ids, the number
  of sub-batches and the stream position, as in the record;
- ``tensors.safetensors``: the collated sub-batches as the step received them (global stats
  included), named ``<sub-batch>.<component>.<tensor>``;
- ``losses.json``: the total and per-component losses (exact hex and decimal);
- ``grads.json``: the gradient norm (before clipping), per optimizer group and per parameter,
  and the update norm (new minus old parameters), overall, per group and per parameter.

>>> sorted(FILES)
['batch.json', 'docs.jsonl', 'grads.json', 'losses.json', 'tensors.safetensors']
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.state import TrainState, tree_flatten_with_paths
from ..training.records import batch_fingerprint, exact
from .rebuild import Phase, RebuiltRun

FILES = ("docs.jsonl", "batch.json", "tensors.safetensors", "losses.json", "grads.json")


def flat_tensors(sub_batches: Sequence[Any]) -> dict[str, torch.Tensor]:
    """The sub-batches' tensors by dotted path (``0.ner.tags``), on the CPU, unshared."""
    out: dict[str, torch.Tensor] = {}
    for i, sb in enumerate(sub_batches):
        for path, leaf in tree_flatten_with_paths(sb, str(i)):
            if isinstance(leaf, torch.Tensor):
                out[path] = leaf.detach().cpu().contiguous().clone()
    return out


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def _group_names(step_fn: Any, names: Sequence[str]) -> dict[str, str]:
    group_of = getattr(step_fn.optimizer, "group_of", None)
    out = {}
    for n in names:
        g = group_of(n) if group_of is not None else None
        out[n] = g.name if g is not None else "default"
    return out


def step_gradients(
    step_fn: Any, state: TrainState, sub_batches: Sequence[Any], indices: Sequence[int]
) -> dict:
    """The summed gradients of the step (before clipping), from the step's own grad functions.

    In a single process these are the step's gradients; under data parallelism, this rank's
    share (the step sums them across ranks afterwards)."""
    device = state.rng.device
    # a float16 run's backward is seeded with its loss scale (unscaled, small gradients round
    # to zero): the same here, divided by it afterwards
    scale = state.loss_scale["scale"] if state.loss_scale else None
    grads = None
    for i, batch in enumerate(sub_batches):
        index = torch.tensor(indices[i], dtype=torch.int64, device=device)
        args = (state.params, state.buffers, batch, state.rng, state.step, index)
        if grads is None:
            grads, _, _ = step_fn.grad_fn(*args, scale=scale)
        else:
            grads, _, _ = step_fn.grad_acc_fn(grads, *args, scale=scale)
    if scale is not None:
        grads = {k: g / scale.to(g.dtype) for k, g in grads.items()}
    return grads


def norms_report(
    step_fn: Any,
    before: TrainState,
    after: TrainState,
    grads: Mapping[str, torch.Tensor],
    recorded_grad_norm: float | None = None,
) -> dict[str, Any]:
    """Gradient and update norms, overall, per optimizer group and per parameter (float64)."""
    names = list(grads)
    groups = _group_names(step_fn, names)
    updates = {k: after.params[k] - before.params[k] for k in names}
    by_group: dict[str, list[str]] = {}
    for n in names:
        by_group.setdefault(groups[n], []).append(n)
    out: dict[str, Any] = {
        "grad_norm": _norm([grads[k] for k in names]),
        "grad_norm_recorded": recorded_grad_norm,
        "update_norm": _norm([updates[k] for k in names]),
        "groups": {
            g: {
                "grad_norm": _norm([grads[k] for k in ks]),
                "update_norm": _norm([updates[k] for k in ks]),
                "params": len(ks),
            }
            for g, ks in by_group.items()
        },
        "params": {
            k: {
                "group": groups[k],
                "grad_norm": _norm([grads[k]]),
                "update_norm": _norm([updates[k]]),
                "param_norm": _norm([before.params[k]]),
                "shape": list(grads[k].shape),
            }
            for k in names
        },
    }
    return out


def write_dump(
    out: Path,
    run: RebuiltRun,
    phase: Phase,
    before: TrainState,
    after: TrainState,
    sub_batches: Sequence[Any],
    streams: Mapping[str, Mapping[str, Any]],
    metrics: Mapping[str, Any],
) -> Path:
    """Write the files of :data:`FILES` for the step just run (``before -> after``)."""
    from safetensors.torch import save_file

    from ..stream.jsonl import doc_to_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    step = phase.next_step
    ids_by_stream = {name: list(s["doc_ids"]) for name, s in streams.items()}
    docs = run.documents(ids_by_stream)
    with open(out / "docs.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for name, ids in ids_by_stream.items():
            for doc_id in ids:
                doc = docs.get(name, {}).get(doc_id)
                if doc is None:
                    raise FileNotFoundError(f"document {doc_id!r} of stream {name!r} not found")
                f.write(json.dumps(doc_to_json(doc), ensure_ascii=False) + "\n")
    all_ids = [i for ids in ids_by_stream.values() for i in ids]
    batch = {
        "step": step,
        "phase": phase.index,
        "batch": batch_fingerprint(all_ids, sub_batches),
        "streams": {name: dict(s) for name, s in streams.items()},
    }
    (out / "batch.json").write_text(json.dumps(batch, indent=1))
    save_file(flat_tensors(sub_batches), str(out / "tensors.safetensors"))
    losses = {
        k: {"exact": exact(v), "value": float(v)}
        for k, v in metrics.items()
        if k == "loss" or k.startswith("loss/")
    }
    (out / "losses.json").write_text(json.dumps({"step": step, **losses}, indent=1))
    grads = step_gradients(phase.step_fn, before, sub_batches, phase.indices)
    norms = norms_report(phase.step_fn, before, after, grads, float(metrics["grad_norm"]))
    norms = {
        "step": step,
        "skipped": bool(metrics.get("skipped", False)),
        "grad_max_norm": run.trainer.grad_max_norm,
        **norms,
    }
    (out / "grads.json").write_text(json.dumps(norms, indent=1))
    return out


__all__ = ["FILES", "flat_tensors", "norms_report", "step_gradients", "write_dump"]
