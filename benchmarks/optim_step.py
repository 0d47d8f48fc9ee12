"""Optimizer step: compiled functional AdamW vs torch.optim.AdamW (foreach and fused).

The parameter set has BERT-base's shapes (about 110M parameters in ~200 tensors; ``--scale``
shrinks every matrix's long side for quick runs). Each contestant updates its own copy with the
same fixed gradients; contestants run one step each in turn (alternating, so machine noise hits
them alike), after warm-up, and the table shows medians and ratios to fused AdamW.

Contestants:
- ``functional compiled``: ``pureml.optim.adamw`` update + ``apply_updates`` under
  ``torch.compile(fullgraph=True)``, out of place (new params and moments each step);
- ``functional eager``: the same without compiling (``_foreach`` ops);
- ``step update compiled`` (``--full``): the compiled update of ``make_step`` (global norm, clip,
  spike guard, AdamW, skip-select), i.e. what one training step really pays after the gradients;
- ``torch foreach`` / ``torch fused``: ``torch.optim.AdamW(foreach=True)`` / ``(fused=True)``.

Writes its section of benchmarks/RESULTS.md (between the optim_step markers) and prints one JSON
line last. Example::

    python benchmarks/optim_step.py --reps 7            # CPU, BERT-base size
    python benchmarks/optim_step.py --device cuda --reps 50 --full
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pureml import optim  # noqa: E402

START, END = "<!-- optim_step:start -->", "<!-- optim_step:end -->"


def bert_base_shapes(scale: float = 1.0) -> list[tuple[int, ...]]:
    """Parameter shapes of BERT-base (vocab 30522, hidden 768, 12 layers, FFN 3072)."""
    h, f, v = 768, 3072, 30522
    v, f2 = max(8, int(v * scale)), max(8, int(f * scale))
    shapes: list[tuple[int, ...]] = [(v, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(12):
        shapes += [(h, h), (h,)] * 4  # q, k, v, attention output
        shapes += [(h,), (h,)]  # layer norm
        shapes += [(f2, h), (f2,), (h, f2), (h,)]  # feed-forward
        shapes += [(h,), (h,)]  # layer norm
    shapes += [(h, h), (h,)]  # pooler
    return shapes


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7, help="timed steps per contestant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the large matrices")
    ap.add_argument("--full", action="store_true", help="also time make_step's whole update")
    ap.add_argument(
        "--fusion",
        action="store_true",
        help="instead: time a whole training step, grad and update compiled apart (make_step) "
        "vs fused into one graph, on an MLP with counter-RNG dropout",
    )
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (smoke tests)")
    ap.add_argument(
        "--combo", action="store_true", help="inductor combo_kernels (horizontal fusion) on"
    )
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.combo:
        torch._inductor.config.combo_kernels = True
    if args.fusion:
        return fusion(args, device)

    shapes = bert_base_shapes(args.scale)
    names = [f"p{i}" for i in range(len(shapes))]
    n_params = sum(torch.Size(s).numel() for s in shapes)
    base = {n: torch.randn(s, device=device) * 0.02 for n, s in zip(names, shapes)}
    grads = {n: torch.randn(s, device=device) * 1e-3 for n, s in zip(names, shapes)}
    hp = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    # torch.optim contestants: parameters with .grad set once (the step does not clear it)
    def torch_contestant(**flags):
        ps = [torch.nn.Parameter(base[n].clone()) for n in names]
        for p, n in zip(ps, names):
            p.grad = grads[n].clone()
        opt = torch.optim.AdamW(ps, **hp, **flags)
        return opt.step

    # functional contestants carry (params, state) from step to step
    fopt = optim.adamw(
        hp["lr"],
        b1=hp["betas"][0],
        b2=hp["betas"][1],
        eps=hp["eps"],
        weight_decay=hp["weight_decay"],
    )

    def fupdate(params, state, g):
        updates, state = fopt.update(g, state, params)
        return optim.apply_updates(params, updates), state

    def functional_contestant(fn):
        carry = {"params": {n: base[n].clone() for n in names}}
        carry["state"] = fopt.init(carry["params"])

        def step():
            carry["params"], carry["state"] = fn(carry["params"], carry["state"], grads)

        return step

    contestants = {}
    compile_s = {}
    t0 = time.perf_counter()
    compiled = torch.compile(fupdate, fullgraph=True, backend=args.backend)
    contestants["functional compiled"] = functional_contestant(compiled)
    contestants["functional compiled"]()
    sync(device)
    compile_s["functional compiled"] = time.perf_counter() - t0
    contestants["functional eager"] = functional_contestant(fupdate)
    if args.full:
        from pureml.core.step import init_state, make_step

        step_obj = make_step(
            lambda *a: None, fopt, grad_max_norm=1.0, grad_dev_policy="skip", backend=args.backend
        )
        st = init_state({n: base[n].clone() for n in names}, {}, fopt)
        carry = {"st": st}
        losses = {"loss": torch.zeros((), device=device)}

        def full():
            s = carry["st"]
            p, o, gd, stp, _ = step_obj.update_fn(s.params, s.opt, s.guard, grads, losses, s.step)
            carry["st"] = s.replace(params=p, opt=o, guard=gd, step=stp)

        t0 = time.perf_counter()
        full()
        sync(device)
        compile_s["step update compiled"] = time.perf_counter() - t0
        contestants["step update compiled"] = full
    contestants["torch foreach"] = torch_contestant(foreach=True)
    contestants["torch fused"] = torch_contestant(fused=True)

    for fn in contestants.values():
        for _ in range(args.warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in contestants}
    for _ in range(args.reps):
        for name, fn in contestants.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ref = med["torch fused"]
    machine = machine_name(device)
    lines = [
        f"{len(shapes)} tensors, {n_params / 1e6:.1f}M parameters, float32, {args.device}; "
        f"median of {args.reps} alternating steps",
        f"{'contestant':<24}{'median ms':>12}{'min ms':>10}{'vs fused':>10}",
    ]
    for k in contestants:
        lines.append(f"{k:<24}{med[k]:>12.2f}{min(times[k]) * 1e3:>10.2f}{med[k] / ref:>9.2f}x")
    for k, v in compile_s.items():
        lines.append(f"compile + first step, {k}: {v:.1f} s")
    table = "\n".join(lines)
    print(table)

    command = "python benchmarks/optim_step.py " + " ".join(sys.argv[1:])
    if not args.no_write:
        block = "\n".join(
            [
                f"### {args.device}",
                "",
                f"- machine: {machine}",
                f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
                f"- command: `{command.strip()}`",
                "",
                "```",
                table,
                "```",
            ]
        )
        write_section(Path(args.results), args.device.split(":")[0], block)

    headline = {
        "benchmark": "optim_step",
        "device": args.device,
        "params_M": round(n_params / 1e6, 1),
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "compiled_vs_fused": round(med["functional compiled"] / ref, 3),
        "compiled_vs_foreach": round(med["functional compiled"] / med["torch foreach"], 3),
    }
    print(json.dumps(headline))


def fusion(args: argparse.Namespace, device: torch.device) -> None:
    """Whole step: make_step's two compiled graphs vs one fused graph vs eager variants."""
    from pureml.core.rng import dropout, fold_in
    from pureml.core.step import init_state, make_step

    cuda = device.type == "cuda"
    d, h, layers, c, batch = (1024, 4096, 4, 1000, 2048) if cuda else (128, 512, 2, 64, 256)
    dims = [d] + [h] * layers + [c]
    g = torch.Generator().manual_seed(0)
    params = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        params[f"l{i}.w"] = (torch.randn(b, a, generator=g) / a**0.5).to(device)
        params[f"l{i}.b"] = torch.zeros(b, device=device)
    n_params = sum(p.numel() for p in params.values())

    def loss_fn(p, buffers, bt, key):
        x = bt["x"]
        for i in range(len(dims) - 1):
            x = x @ p[f"l{i}.w"].T + p[f"l{i}.b"]
            if i < len(dims) - 2:
                x = dropout(torch.relu(x), 0.1, fold_in(key, i))
        loss = torch.nn.functional.cross_entropy(x, bt["y"])
        return loss, {"ce": loss}

    opt = optim.adamw(1e-4)
    split = make_step(loss_fn, opt, grad_max_norm=1.0, backend=args.backend)
    eager = make_step(loss_fn, opt, grad_max_norm=1.0, compile=False)

    def fused_fn(p, buffers, opt_state, guard, bt, rng, step, index):
        grads, loss, aux = split._grads(p, buffers, bt, rng, step, index)
        losses = {"loss": loss, **{f"aux/{k}": v for k, v in aux.items()}}
        return split._update(p, opt_state, guard, grads, losses, step)

    fused_c = torch.compile(fused_fn, fullgraph=True, backend=args.backend)
    index = torch.zeros((), dtype=torch.int64, device=device)

    def run_fused(st, bt):
        p, o, gd, stp, m = fused_c(
            st.params, st.buffers, st.opt, st.guard, bt, st.rng, st.step, index
        )
        return st.replace(params=p, opt=o, guard=gd, step=stp), m

    data = {
        "x": torch.randn(batch, d, generator=g).to(device),
        "y": torch.randint(0, c, (batch,), generator=g).to(device),
    }
    # the classic baseline: nn.Module, autograd, torch fused AdamW, torch clip_grad_norm_
    module = torch.nn.Sequential(
        *[
            m
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
            for m in (
                [torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Dropout(0.1)]
                if i < len(dims) - 2
                else [torch.nn.Linear(a, b)]
            )
        ]
    ).to(device)
    torch_opt = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)

    def run_module(_st, bt):
        torch_opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(module(bt["x"]), bt["y"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        torch_opt.step()
        return _st, {"loss": loss}

    runners = {
        "make_step (grad + update graphs)": lambda st, bt: split(st, [bt]),
        "one fused graph": run_fused,
        "make_step eager": lambda st, bt: eager(st, [bt]),
        "nn.Module + fused AdamW eager": run_module,
    }
    states = {k: init_state(dict(params), {}, opt, seed=0) for k in runners}
    compile_s = {}
    for k, fn in runners.items():
        t0 = time.perf_counter()
        states[k], _ = fn(states[k], data)
        sync(device)
        compile_s[k] = time.perf_counter() - t0
    for _ in range(args.warmup):
        for k, fn in runners.items():
            states[k], _ = fn(states[k], data)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.reps):
        for k, fn in runners.items():
            sync(device)
            t = time.perf_counter()
            states[k], _ = fn(states[k], data)
            sync(device)
            times[k].append(time.perf_counter() - t)
    steps_run = 1 + args.warmup + args.reps
    a = states["make_step (grad + update graphs)"].params
    b = states["one fused graph"].params
    e = states["make_step eager"].params
    rel_fused = max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in a)
    rel_eager = max(((a[k] - e[k]).abs().max() / e[k].abs().max()).item() for k in a)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ref = med["make_step (grad + update graphs)"]
    lines = [
        f"MLP {dims}, {n_params / 1e6:.1f}M params, batch {batch}, dropout 0.1, AdamW, clip 1.0, "
        f"{args.device}; median of {args.reps} alternating steps",
        f"{'contestant':<36}{'median ms':>11}{'min ms':>9}{'vs make_step':>14}{'first call s':>14}",
    ]
    for k in runners:
        lines.append(
            f"{k:<36}{med[k]:>11.2f}{min(times[k]) * 1e3:>9.2f}{med[k] / ref:>13.2f}x"
            f"{compile_s[k]:>14.1f}"
        )
    lines.append(
        f"after {steps_run} steps, max rel param diff: fused vs make_step {rel_fused:.2e}, "
        f"eager vs make_step {rel_eager:.2e}"
    )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        command = "python benchmarks/optim_step.py " + " ".join(sys.argv[1:])
        block = "\n".join(
            [
                f"### whole step, split vs fused graphs ({args.device})",
                "",
                f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine_name(device)}",
                f"- command: `{command.strip()}`",
                "",
                "```",
                table,
                "```",
            ]
        )
        write_section(Path(args.results), f"{device.type}-fusion", block)
    print(
        json.dumps(
            {
                "benchmark": "optim_step_fusion",
                "device": args.device,
                "median_ms": {k: round(v, 3) for k, v in med.items()},
                "fused_vs_split": round(med["one fused graph"] / ref, 3),
                "split_vs_module_fused_adamw": round(ref / med["nn.Module + fused AdamW eager"], 3),
            }
        )
    )


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )


def write_section(path: Path, device: str, block: str) -> None:
    """Rewrite only our section of RESULTS.md, keeping the other devices' blocks in it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(START) + r"(.*?)" + re.escape(END), re.S)
    match = pattern.search(text)
    blocks: dict[str, str] = {}
    if match:
        for dev, body in re.findall(
            r"<!-- device:(\S+) -->\n(.*?)\n<!-- /device -->", match[1], re.S
        ):
            blocks[dev] = body
    blocks[device] = block
    section = "\n".join(
        [
            START,
            "## Optimizer step: functional AdamW vs torch.optim (`benchmarks/optim_step.py`)",
            "",
        ]
        + [f"<!-- device:{d} -->\n{b}\n<!-- /device -->\n" for d, b in sorted(blocks.items())]
        + [END]
    )
    if match:
        text = text[: match.start()] + section + text[match.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_name(path.name + ".optim_step.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
