"""How fast can the encoder alone go? The Hugging Face encoder's forward + backward on one of B3's
training batches, outside pureml: eager, compiled, and compiled without the attention mask.

B3's goal is 40% model FLOP utilisation for pureml's whole step. This script measures what the
encoder itself reaches on the same windows (pureml's ``hf_transformer`` collate of a batch of
``--words`` words, in the two width groups the trainer gives it), under bf16 autocast on a GPU:

- ``eager``: the model as Hugging Face runs it (SDPA with the padding mask);
- ``compiled``: ``torch.compile(model)``, same inputs;
- ``compiled, no mask``: the same without ``attention_mask``, which lets SDPA pick its flash
  kernel; on B3's corpus (every document 256 words) the training windows hold no padding, so
  the result is the same; it tells what the mask's attention kernel costs.

The encoder keeps its first ``--layers`` layers (every layer is the same computation, and a
2-layer encoder compiles in seconds instead of minutes); the FLOPs are counted for those layers
(benchmarks/eager_loop.py's ``model_flops``: real tokens only). If the compiled encoder alone
stays far below 40%, so will a step that contains it.

    python3 benchmarks/encoder_ceiling.py --peak-tflops 792   # on the GPU (gpu_bench.py runs it)
    python3 benchmarks/encoder_ceiling.py --smoke             # CPU, tiny model, plumbing only

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import encoder_cost  # noqa: E402
import harness  # noqa: E402


def encoder_loss(model, cuda: bool, dtype):
    """``loss(windows)``: every window group through ``model`` (one graph when compiled, as in
    pureml's step), summed to a scalar."""
    import torch

    def loss(windows: list[dict]):
        with torch.autocast("cuda" if cuda else "cpu", dtype=dtype, enabled=dtype is not None):
            return sum(model(**w).last_hidden_state.float().sum() for w in windows)

    return loss


def time_fwd_bwd(model, loss, windows: list[dict], reps: int, cuda: bool) -> list[float]:
    """Seconds per forward + backward, after two warm-up runs (the compile, if any)."""
    import torch

    times = []
    for i in range(reps + 2):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss(windows).backward()
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", help="default: B3's model (built in /tmp/pureml-b3 if missing)")
    ap.add_argument("--data", help="brat folder; default: B3's training corpus")
    ap.add_argument("--words", type=int, default=32000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, help="the card's measured bf16 peak")
    ap.add_argument("--smoke", action="store_true", help="CPU, fp32, few words and reps")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    import torch
    from eager_loop import model_flops

    if args.model is None or args.data is None:
        base, corpus = encoder_cost.b3_assets()
        args.model = args.model or str(base)
        args.data = args.data or str(corpus / "train")
    cuda = torch.cuda.is_available() and not args.smoke
    if args.smoke:
        args.words, args.reps = min(args.words, 2000), min(args.reps, 2)
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else None

    nlp, batches = encoder_cost.word_batches(
        Path(args.model), Path(args.data), args.words, supervision=True, limit=1
    )
    features = nlp.collate(batches[0])["embedding"]
    model = nlp.get_pipe("embedding").model
    layers = min(args.layers, len(model.encoder.layer))
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    model.to(device).train()
    windows = [{k: v.to(device) for k, v in w.items()} for w in features["windows"]]
    unmasked = [{"input_ids": w["input_ids"]} for w in windows]
    padded = sum(int((w["attention_mask"] == 0).sum()) for w in windows)
    flops = sum(model_flops(w, model.config) for w in windows)
    words = sum(int(it["embedding"]["n_words"]) for it in batches[0])

    res: dict = {
        "benchmark": "encoder_ceiling",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "layers": layers,
        "words": words,
        "window_shapes": [list(w["input_ids"].shape) for w in windows],
        "padding_positions": padded,
        "flops": flops,
        "peak_tflops": args.peak_tflops,
        "contenders": {},
    }
    loss = encoder_loss(model, cuda, dtype)
    contenders = [("eager", loss, windows), ("compiled", torch.compile(loss), windows)]
    if padded == 0:  # without padding, dropping the mask computes the same thing
        contenders.append(
            ("compiled, no mask", torch.compile(encoder_loss(model, cuda, dtype)), unmasked)
        )
    else:
        res["skipped"] = {"compiled, no mask": f"{padded} padding positions: not the same result"}
    for name, fn, ws in contenders:
        t = time.perf_counter()
        times = time_fwd_bwd(model, fn, ws, args.reps, cuda)
        med = statistics.median(times)
        res["contenders"][name] = {
            "median_ms": 1e3 * med,
            "first_two_s": time.perf_counter() - t - sum(times),  # compile included
            "tflops": flops / med / 1e12,
            "mfu": flops / med / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        }
        harness.log(f"{name}: {1e3 * med:.2f} ms, {flops / med / 1e12:.1f} TFLOP/s")
    rows = [
        [
            k,
            f"{v['median_ms']:.2f}",
            f"{v['tflops']:.1f}",
            f"{v['mfu']:.1%}" if v["mfu"] is not None else "",
            f"{v['first_two_s']:.1f}",
        ]
        for k, v in res["contenders"].items()
    ]
    print(
        f"encoder alone, {layers} of its layers, {words} words, windows {res['window_shapes']}, "
        f"{'bf16 autocast' if dtype else 'fp32'} on {res['device']}"
    )
    print(
        harness.md_table(
            ["contender", "fwd+bwd ms (median)", "TFLOP/s", "MFU", "first two runs (s)"], rows
        )
    )
    line = json.dumps(res)
    if args.out:
        Path(args.out).write_text(line)
    print(line)


if __name__ == "__main__":
    main()
