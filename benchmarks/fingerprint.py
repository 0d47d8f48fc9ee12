"""Parameter hashes per step record: host SHA-256 (``fingerprint``) vs device ``digest``.

BERT-base-sized float32 parameters (benchmarks/optim_step.py's shapes). Prints median seconds of
each on every device present, checks that ``digest`` gives the same value on the CPU and on the
GPU, and prints one JSON line last.

    python benchmarks/fingerprint.py            # CPU only here; CPU and CUDA on a GPU machine
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from optim_step import bert_base_shapes  # noqa: E402

from pureml.core.state import digest, fingerprint  # noqa: E402


def timed(fn, params, device: str, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(params)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    cpu = {f"p{i}": torch.randn(s, generator=g) for i, s in enumerate(bert_base_shapes())}
    devices = {"cpu": cpu}
    if torch.cuda.is_available():
        devices["cuda"] = {k: v.cuda() for k, v in cpu.items()}
    n = sum(t.numel() for t in cpu.values())
    out = {"params_M": round(n / 1e6, 1), "seconds": {}, "same_digest_everywhere": None}
    values = {}
    print(f"{n / 1e6:.1f}M float32 parameters in {len(cpu)} tensors; median of 3, 1 host thread")
    for dev, params in devices.items():
        for fn in (fingerprint, digest):
            s = timed(fn, params, dev)
            out["seconds"][f"{fn.__name__}/{dev}"] = round(s, 4)
            print(f"{fn.__name__:12s} {dev:5s} {s * 1e3:9.1f} ms")
        values[dev] = digest(params)
    out["same_digest_everywhere"] = len(set(values.values())) == 1
    print("digest equal on", ", ".join(values), ":", out["same_digest_everywhere"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
