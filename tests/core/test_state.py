"""State tree: flat round trip, fingerprint stability across processes, atomic checkpoints."""

import hashlib
import json
import subprocess
import sys
from typing import NamedTuple

import pytest
import torch

from pureml.core.state import (
    CheckpointError,
    TrainState,
    fingerprint,
    load_state,
    save_state,
    state_from_flat,
    state_to_flat,
)


class Moments(NamedTuple):
    count: torch.Tensor
    mu: dict


def make_state(seed: int = 0) -> TrainState:
    g = torch.Generator().manual_seed(seed)
    params = {
        "ner.crf.transitions": torch.randn(5, 5, generator=g),
        "emb.w": torch.randn(7, generator=g),
    }
    opt = (
        Moments(torch.tensor(3), {k: torch.randn(v.shape, generator=g) for k, v in params.items()}),
    )
    return TrainState.create(
        params,
        {"emb.frozen": torch.arange(4.0)},
        seed=seed,
        opt=opt,
        guard={"mean": torch.tensor(1.5, dtype=torch.float64)},
        hparams={"lr/default": torch.tensor(1e-3)},
    )


def test_flat_paths_and_round_trip():
    state = make_state()
    flat = state_to_flat(state)
    assert list(flat) == [
        "step",
        "params.ner.crf.transitions",
        "params.emb.w",
        "buffers.emb.frozen",
        "opt.0.count",
        "opt.0.mu.ner.crf.transitions",
        "opt.0.mu.emb.w",
        "guard.mean",
        "rng",
        "hparams.lr/default",
    ]
    again = state_from_flat(state, {k: v.clone() for k, v in flat.items()})
    assert isinstance(again.opt[0], Moments)
    assert fingerprint(again) == fingerprint(state)
    for k, v in state_to_flat(again).items():
        assert torch.equal(v, flat[k])


def test_from_flat_names_bad_path():
    state = make_state()
    flat = state_to_flat(state)
    flat["params.emb.w"] = torch.zeros(8)
    with pytest.raises(CheckpointError, match="params.emb.w"):
        state_from_flat(state, flat)
    del flat["params.emb.w"]
    with pytest.raises(CheckpointError, match="params.emb.w"):
        state_from_flat(state, flat)


def test_fingerprint_sensitive_and_stable_across_processes():
    state = make_state()
    fp = fingerprint(state)
    changed = state.replace(params={**state.params, "emb.w": state.params["emb.w"] + 1e-7})
    assert fingerprint(changed) != fp
    code = (
        "import sys; sys.path.insert(0, 'tests/core'); from test_state import make_state;"
        "from pureml.core.state import fingerprint; print(fingerprint(make_state()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fp


def test_save_load_round_trip_and_overwrite(tmp_path):
    state = make_state()
    save_state(state, tmp_path / "ckpt", {"epoch": 2})
    save_state(make_state(1), tmp_path / "ckpt", {"epoch": 3})  # replaces atomically
    loaded, extra = load_state(state, tmp_path / "ckpt")
    assert extra == {"epoch": 3}
    assert fingerprint(loaded) == fingerprint(make_state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left
    meta = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert meta["checksum"] == fingerprint(make_state(1))


def test_corrupted_checkpoint_is_detected(tmp_path):
    state = make_state()
    save_state(state, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "state.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor's payload
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_state(state, tmp_path / "ckpt")
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_state(state, tmp_path / "ckpt")


def test_digest_sees_every_word_and_position(monkeypatch):
    from pureml.core import state as state_mod
    from pureml.core.state import digest

    g = torch.Generator().manual_seed(0)
    tree = {
        "w": torch.randn(37, 11, generator=g),
        "h": torch.randn(5, generator=g).to(torch.bfloat16),  # 10 bytes: padded to 3 words
        "i": torch.arange(7, dtype=torch.int8),
    }
    base = digest(tree)
    assert digest({k: v.clone() for k, v in tree.items()}) == base
    # one flipped bit anywhere, in any tensor, changes it
    for name, t in tree.items():
        raw = t.clone().reshape(-1).view(torch.uint8)
        for pos in (0, raw.numel() // 2, raw.numel() - 1):
            flipped = raw.clone()
            flipped[pos] ^= 1 << (pos % 8)
            changed = dict(tree, **{name: flipped.view(t.dtype).view(t.shape)})
            assert digest(changed) != base, (name, pos)
    # two elements swapped, or the same bytes under another name, shape or dtype
    w = tree["w"].clone().reshape(-1)
    w[[3, 200]] = w[[200, 3]]
    assert digest(dict(tree, w=w.view(37, 11))) != base
    assert digest(dict(tree, w=tree["w"].reshape(11, 37))) != base
    assert digest({"v" if k == "w" else k: v for k, v in tree.items()}) != base
    assert digest(dict(tree, w=tree["w"].view(torch.int32))) != base
    # the chunking of the reduction does not change the value
    monkeypatch.setattr(state_mod, "_DIGEST_CHUNK", 7)
    assert digest(tree) == base


def test_digest_matches_its_definition():
    # The digest is written into steps.jsonl and compared by replay: its value must not drift.
    # Reference: the docstring's sums, element by element in Python integers (mod 2^64).
    from pureml.core.state import digest

    g = torch.Generator().manual_seed(1)
    tree = {
        "b": torch.randn(3, 300, generator=g),
        "a": torch.randn(5, generator=g).to(torch.bfloat16),
    }
    h = hashlib.sha256()
    for name in sorted(tree):
        t = tree[name]
        raw = t.contiguous().reshape(-1).view(torch.uint8).tolist()
        raw += [0] * (-len(raw) % 4)
        words = [int.from_bytes(bytes(raw[j : j + 4]), "little") for j in range(0, len(raw), 4)]
        s0 = sum(w * (2 * i + 1) for i, w in enumerate(words)) % 2**64
        s1 = sum((w ^ (i * 0x9E3779B1 & 0xFFFFFFFF)) * (i // 128 + 1) for i, w in enumerate(words))
        s0, s1 = (s - 2**64 if s >= 2**63 else s for s in (s0, s1 % 2**64))
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{s0}|{s1}|".encode())
    assert digest(tree) == h.hexdigest()
