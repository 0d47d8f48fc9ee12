"""Optimizer step: compiled functional AdamW vs torch.optim.AdamW (foreach and fused).

The parameter set has BERT-base's shapes (about 110M parameters in ~200 tensors; ``--scale``
shrinks every matrix's long side for quick runs). Each contestant updates its own copy with the
same fixed gradients; contestants run one step each in turn (alternating, so machine noise hits
them alike), after a first call (the compile, for compiled ones) and warm-up, and the table shows
medians and ratios to fused AdamW. Every contestant runs the same number of steps, then its
parameters are compared with ``torch.optim.AdamW(foreach=False)`` run as many steps (max rel diff:
max over tensors of ``|a - b|.max() / |b|.max()``).

Contestants (``--variants``, keys in brackets; all by default):
- ``functional compiled`` [compiled]: ``pureml.optim.adamw`` update + ``apply_updates`` under
  ``torch.compile(fullgraph=True)``, out of place (new params and moments each step);
- ``functional compiled + combo`` [combo]: the same, compiled with inductor's
  ``combo_kernels=True`` (horizontal fusion across tensors; the option is read at compile time, so
  it is patched around the first call only);
- ``donated compiled`` [donated]: the same pure update, but the compiled function copies the new
  params and moments into the old buffers (JAX's ``donate_argnums``): inductor writes in place,
  nothing is allocated, and the old state is gone after the step;
- ``donated compiled + cudagraphs`` [donated-cg] (CUDA only): the donated function under
  ``mode="reduce-overhead"``; every input is marked static (``mark_static_address``), which is
  what makes CUDA graphs legal with mutated inputs and spares copies into graph-owned buffers;
- ``flat compiled`` [flat]: params, grads and moments as one contiguous fp32 buffer each (params
  are views into it), one elementwise donated update over the flat buffers. Honest only if the
  gradients are produced into a flat buffer too: ``flat compiled + grad cat`` adds the
  ``torch.cat(..., out=flat_grad)`` a training step would otherwise pay;
- ``functional eager`` [eager]: the functional update without compiling (``_foreach`` ops);
- ``library step update, flat`` [lib-flat]: the library's own update path,
  ``make_step(..., flat=True).apply_gradients`` (global norm, clip, spike guard, AdamW,
  skip-select over one flat tensor per bucket, then the state's views by name), with the
  gradients flat as the flat backward produces them: what one training step really pays after
  the grads;
- ``library step update, flat, donated`` [lib-flat-donate]: the same with ``donate=True``: the
  new params and moments written into the old buffers (what the trainer runs);
- ``library step update, per-tensor`` [full] (``--full``): the same with ``flat=False`` (one
  tensor per parameter); ``library step update, per-tensor, donated`` [full-donate]: and with
  ``donate=True`` (the trainer's default, ``train.flat_params = false``);
- ``torch foreach`` / ``torch fused`` [foreach, fused]: ``torch.optim.AdamW(foreach=True)`` /
  ``(fused=True)``; ``torch fused + clip`` [fused-clip]: ``clip_grad_norm_`` (foreach, a
  max norm that never clips, like the library contestants') before the fused step, what an
  eager training loop with gradient clipping pays for its update.

Compile time is most of the cost on a GPU (~40 s per 200-tensor variant on an H100): with
``--precompile`` (the default on CUDA) every compiled variant is first compiled in its own
process, all at once, filling inductor's on-disk caches, so that this process mostly loads them;
``--budget`` skips the variants that no longer fit (they are listed as skipped).
``--profile-out FILE`` records one step of ``functional compiled``, of the fastest other pureml
variant and of ``torch fused`` with torch.profiler and writes each one's top-20 kernels (name,
count, total device time) and kernel count to FILE.

Writes its section of benchmarks/RESULTS.md (between the optim_step markers; ``--no-write`` not
to) and prints one JSON line last. Example::

    python benchmarks/optim_step.py --scale 0.05 --reps 3 --no-write   # CPU smoke
    python benchmarks/optim_step.py --device cuda --reps 30 --profile-out prof.txt
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402

from pureml import optim  # noqa: E402

START, END = "<!-- optim_step:start -->", "<!-- optim_step:end -->"

# key -> contestant names it adds, in the order they are built (compiled ones by priority)
VARIANTS = {
    "lib-flat-donate": ["library step update, flat, donated"],
    "lib-flat": ["library step update, flat"],
    "compiled": ["functional compiled"],
    "donated": ["donated compiled"],
    "flat": ["flat compiled", "flat compiled + grad cat"],
    "donated-cg": ["donated compiled + cudagraphs"],
    "combo": ["functional compiled + combo"],
    "full": ["library step update, per-tensor"],
    "full-donate": ["library step update, per-tensor, donated"],
    "eager": ["functional eager"],
    "foreach": ["torch foreach"],
    "fused": ["torch fused"],
    "fused-clip": ["torch fused + clip"],
}
COMPILED = (
    "lib-flat-donate",
    "lib-flat",
    "compiled",
    "donated",
    "flat",
    "donated-cg",
    "combo",
    "full",
    "full-donate",
)
NOTES = {
    "flat compiled": "grads already flat (produced into one buffer)",
    "flat compiled + grad cat": "+ torch.cat of the grads into the flat buffer",
    "donated compiled + cudagraphs": "all inputs static (mark_static_address)",
    "functional compiled + combo": "inductor combo_kernels=True",
    "library step update, flat, donated": "make_step(flat=True, donate=True): in place",
    "library step update, flat": "make_step(flat=True).apply_gradients: clip, guard, AdamW",
    "library step update, per-tensor": "make_step(flat=False).apply_gradients",
    "library step update, per-tensor, donated": "make_step(flat=False, donate=True)",
    "torch fused + clip": "clip_grad_norm_(foreach) then fused AdamW: an eager loop's update",
}


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fresh(fn: Callable, name: str) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps its compiled graphs on the code
    object, so two ``torch.compile`` of the same function could otherwise share entries."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def donating(update: Callable) -> Callable:
    """``update(params, state, grads) -> (params, state)`` made to write its results into the
    input buffers (returns nothing): the caller's old params and state now hold the new ones."""

    def donated(params, state, grads):
        new_params, new_state = update(params, state, grads)
        for old, new in zip(tree_leaves((params, state)), tree_leaves((new_params, new_state))):
            if new is not old:
                old.copy_(new)

    return donated


def code_stats(codes: list[str]) -> dict:
    """Kernel definitions and launches in inductor's generated wrapper code."""
    if not codes:
        return {}
    code = "\n".join(codes)
    # without comments, paths and hashes (they change with the cache key, e.g. any config)
    bare = re.sub(r"#[^\n]*|/tmp/\S+|[0-9a-f]{16,}", "", code)
    return {
        "kernels": len(re.findall(r"async_compile\.(?:triton|cpp_pybinding|cpp)\(", code)),
        "launches": len(re.findall(r"\.run\(", code))
        + len(re.findall(r"\n\s+cpp_fused_\w+\(", code)),
        "code_sha1": hashlib.sha1(bare.encode()).hexdigest()[:10],
        "code_chars": len(bare),
    }


def first_call(call: Callable, device: torch.device, config: dict | None = None) -> dict:
    """Run ``call`` once (the compile), capturing inductor's generated code (also on a cache
    hit), with inductor ``config`` patched around it. Returns seconds and code stats."""
    from torch._inductor.graph import GraphLowering

    codes: list[str] = []
    patch_cfg = torch._inductor.config.patch(**config) if config else contextlib.nullcontext()
    t0 = time.perf_counter()
    with mock.patch.object(GraphLowering, "save_output_code", codes.append), patch_cfg:
        call()
        sync(device)
    return {"first_call_s": round(time.perf_counter() - t0, 2), **code_stats(codes)}


def profile_step(name: str, fn: Callable, device: torch.device) -> str:
    """One step under torch.profiler: the top-20 kernels (device time; CPU ops on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    wall = (time.perf_counter() - t0) * 1e3
    events = prof.key_averages()
    if cuda:
        rows = [e for e in events if str(e.device_type).endswith("CUDA")]

        def total(e):
            return getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)

        unit = "device"
    else:
        rows = [e for e in events if not e.key.startswith("ProfilerStep")]

        def total(e):
            return e.self_cpu_time_total

        unit = "self CPU"
    rows.sort(key=total, reverse=True)
    n = sum(e.count for e in rows)
    lines = [
        f"## {name}",
        f"{'kernels' if cuda else 'ops'}: {n} launches of {len(rows)} distinct, "
        f"{unit} time {sum(total(e) for e in rows) / 1e3:.3f} ms, step wall {wall:.3f} ms "
        "(under the profiler)",
        f"{'name':<90}{'count':>7}{f'total {unit} us':>20}",
    ]
    for e in rows[:20]:
        lines.append(f"{e.key[:89]:<90}{e.count:>7}{total(e):>20.1f}")
    return "\n".join(lines) + "\n"


class Precompiler:
    """Compiles each variant in its own process, all at once, to fill inductor's disk caches;
    ``wait(key)`` blocks until that one is done (the others go on meanwhile)."""

    def __init__(self, args: argparse.Namespace, keys: list[str], deadline: float) -> None:
        self.deadline, self.t0 = deadline, time.perf_counter()
        self.logdir = Path(tempfile.mkdtemp(prefix="optim_step_precompile_"))
        self.procs: dict[str, tuple[subprocess.Popen, object]] = {}
        self.done: dict[str, object] = {}
        self.wall: dict[str, float] = {}
        # share the cores between the processes' kernel-compile workers (not in the cache key)
        threads = max(1, (os.cpu_count() or 1) // max(1, len(keys)))
        env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": str(threads)}
        for k in keys:
            cmd = [
                sys.executable,
                __file__,
                "--_compile-only",
                k,
                "--device",
                args.device,
                "--scale",
                str(args.scale),
                "--backend",
                args.backend,
                "--no-write",
                "--threads",
                str(args.threads),
            ]  # fmt: skip (CPU code depends on threads)
            log = open(self.logdir / f"{k}.log", "w")  # noqa: SIM115 (closed in wait)
            self.procs[k] = (
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                log,
            )
        print(f"precompiling {', '.join(keys)} in parallel (logs in {self.logdir})", flush=True)

    def wait(self, key: str) -> str | None:
        """None when ``key`` compiled fine (or was not precompiled), else why not."""
        if key not in self.procs:
            return None
        if key not in self.done:
            proc, log = self.procs[key]
            try:
                rc = proc.wait(timeout=max(1.0, self.deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = "timeout"
            log.close()
            self.done[key] = rc
            self.wall[key] = round(time.perf_counter() - self.t0, 1)
            if rc != 0:
                tail = (self.logdir / f"{key}.log").read_text(errors="replace").splitlines()[-3:]
                print(f"precompile {key}: rc {rc}: {' | '.join(tail)}", flush=True)
        rc = self.done[key]
        return None if rc == 0 else f"precompile {'timed out' if rc == 'timeout' else f'rc {rc}'}"

    def close(self) -> None:
        """Stop the processes nobody waited for (their variants were skipped)."""
        for k, (proc, log) in self.procs.items():
            if k not in self.done:
                proc.kill()
                proc.wait()
                log.close()
                self.done[k] = "not needed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7, help="timed steps per contestant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the large matrices")
    ap.add_argument(
        "--variants",
        default=",".join(k for k in VARIANTS if k != "full"),
        help=f"comma-separated keys among {','.join(VARIANTS)}",
    )
    ap.add_argument(
        "--full", action="store_true", help="also time make_step's update with flat=False"
    )
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
    ap.add_argument(
        "--precompile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the variants in parallel processes first (default: on CUDA)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=0,
        help="seconds; skip variants that no longer fit (0: no limit)",
    )
    ap.add_argument("--profile-out", help="write the profiled steps' top-20 kernels here")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--_compile-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.combo:
        torch._inductor.config.combo_kernels = True
    if args.fusion:
        return fusion(args, device)

    keys = [k.strip() for k in args.variants.split(",") if k.strip()]
    if args.full and "full" not in keys:
        keys.append("full")
    unknown = set(keys) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    skipped: dict[str, str] = {}
    if device.type != "cuda" and "donated-cg" in keys:
        keys.remove("donated-cg")
        skipped["donated compiled + cudagraphs"] = "CUDA only"
    keys = sorted(keys, key=list(VARIANTS).index)
    if args._compile_only:
        keys = [args._compile_only]
        args.budget = 0
    pre = None
    if not args._compile_only and (
        args.precompile or (args.precompile is None and device.type == "cuda")
    ):
        # leave ~20 s of the budget for loading the compiled code, timing and profiling
        deadline = t_start + (args.budget - 20 if args.budget else 600)
        pre = Precompiler(args, [k for k in keys if k in COMPILED], deadline)

    shapes = bert_base_shapes(args.scale)
    names = [f"p{i}" for i in range(len(shapes))]
    n_params = sum(torch.Size(s).numel() for s in shapes)
    base = {n: torch.randn(s, device=device) * 0.02 for n, s in zip(names, shapes)}
    grads = {n: torch.randn(s, device=device) * 1e-3 for n, s in zip(names, shapes)}
    hp = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    # Every contestant: a step function, and the current params (in ``names`` order) to check.
    contestants: dict[str, Callable[[], None]] = {}
    current: dict[str, Callable[[], list[torch.Tensor]]] = {}
    info: dict[str, dict] = {}

    # torch.optim contestants: parameters with .grad set once (the step does not clear it)
    def torch_contestant(clip: bool = False, **flags):
        ps = [torch.nn.Parameter(base[n].clone()) for n in names]
        for p, n in zip(ps, names):
            p.grad = grads[n].clone()
        opt = torch.optim.AdamW(ps, **hp, **flags)
        if not clip:
            return opt.step, lambda: [p.detach() for p in ps]

        def step():
            torch.nn.utils.clip_grad_norm_(ps, 1e6, foreach=True)
            opt.step()

        return step, lambda: [p.detach() for p in ps]

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

        return step, lambda: [carry["params"][n] for n in names]

    def donated_contestant(fn, static=False):
        params = {n: base[n].clone() for n in names}
        state = fopt.init(params)
        g = grads
        if static:  # CUDA graphs: no copies of inputs into graph-owned buffers, mutation allowed
            g = {n: t.clone() for n, t in grads.items()}
            for t in tree_leaves((params, state, g)):
                torch._dynamo.mark_static_address(t)
        return (lambda: fn(params, state, g)), lambda: [params[n] for n in names]

    def flat_contestant(fn, cat: bool):
        sizes = [torch.Size(s).numel() for s in shapes]
        flat_p = torch.cat([base[n].reshape(-1) for n in names])
        flat_g = torch.cat([grads[n].reshape(-1) for n in names])
        views = list(zip(names, torch.split(flat_p, sizes), shapes))
        params = {n: v.view(s) for n, v, s in views}  # what a model would hold: views
        state = fopt.init({"flat": flat_p})
        gl = [grads[n].reshape(-1) for n in names]

        def step():
            if cat:  # gradients produced per tensor: gather them first
                torch.cat(gl, out=flat_g)
            fn({"flat": flat_p}, state, {"flat": flat_g})

        return step, lambda: [params[n] for n in names]

    def library_contestant(flat: bool, donate: bool = False):
        """make_step's own update (``apply_gradients``): what a training step pays after the
        gradients, the state's views by name included."""
        from pureml.core.step import init_state, make_step

        step_obj = make_step(
            lambda *a: None,
            fopt,
            grad_max_norm=1e6,  # computed and applied, but 1.0: comparable with torch's AdamW
            grad_dev_policy="skip",
            backend=args.backend,
            flat=flat,
            donate=donate,
        )
        carry = {"st": init_state({n: base[n].clone() for n in names}, {}, fopt)}
        # flat: the gradients come out of the backward flat already (one tensor per bucket)
        g = step_obj.layout_of(carry["st"]).flatten(grads) if flat else grads
        losses = {"loss": torch.zeros((), device=device)}

        def step():
            carry["st"], _ = step_obj.apply_gradients(carry["st"], g, losses)

        return step, lambda: [carry["st"].params[n] for n in names]

    def fits(name: str, key: str) -> bool:
        """Whether compiling ``name`` still fits the budget: with precompiling, only a variant
        whose own process compiled it (cache hits here), guessing from the slowest load so far."""
        why = pre.wait(key) if pre else None
        if why:
            skipped[name] = why
            print(f"skip {name}: {why}", flush=True)
            return False
        if not args.budget:
            return True
        spent = time.perf_counter() - t_start
        guess = max([v.get("first_call_s", 0) for v in info.values()] + [5.0])
        reserve = 12  # warm-up, timing, the agreement check and profiling, at GPU speed
        if spent + guess + reserve > args.budget:
            skipped[name] = f"budget ({spent:.0f} s spent, ~{guess:.0f} s more to compile)"
            print(f"skip {name}: {skipped[name]}", flush=True)
            return False
        return True

    def compiled_variant(name, key, make, fn, mode=None, config=None):
        if not fits(name, key):
            return
        compiled = torch.compile(
            fresh(fn, re.sub(r"\W+", "_", name)), fullgraph=True, backend=args.backend, mode=mode
        )
        step, params_of = make(compiled)
        info[name] = first_call(step, device, config)
        contestants[name], current[name] = step, params_of
        print(f"{name}: first call {info[name]}", flush=True)

    for key in keys:
        if key == "compiled":
            compiled_variant("functional compiled", key, functional_contestant, fupdate)
        elif key == "combo":
            compiled_variant(
                "functional compiled + combo",
                key,
                functional_contestant,
                fupdate,
                config={"combo_kernels": True},
            )
        elif key == "donated":
            compiled_variant("donated compiled", key, donated_contestant, donating(fupdate))
        elif key == "donated-cg":
            compiled_variant(
                "donated compiled + cudagraphs",
                key,
                lambda fn: donated_contestant(fn, static=True),
                donating(fupdate),
                mode="reduce-overhead",
            )
            with contextlib.suppress(Exception):
                from torch._dynamo.utils import counters

                skips = dict(counters["inductor"]).get("cudagraph_skips", 0)
                info.get("donated compiled + cudagraphs", {})["cudagraph_skips"] = skips
        elif key == "flat":
            if not fits("flat compiled", key):
                skipped["flat compiled + grad cat"] = skipped["flat compiled"]
                continue
            flat_fn = torch.compile(
                fresh(donating(fupdate), "flat_update"), fullgraph=True, backend=args.backend
            )
            for name, cat in (("flat compiled", False), ("flat compiled + grad cat", True)):
                step, params_of = flat_contestant(flat_fn, cat)
                info[name] = first_call(step, device)
                contestants[name], current[name] = step, params_of
                print(f"{name}: first call {info[name]}", flush=True)
        elif key in ("full", "full-donate", "lib-flat", "lib-flat-donate"):
            name = VARIANTS[key][0]
            if fits(name, key):
                step, params_of = library_contestant(
                    flat=key.startswith("lib-flat"), donate=key.endswith("-donate")
                )
                info[name] = first_call(step, device)
                contestants[name], current[name] = step, params_of
                print(f"{name}: first call {info[name]}", flush=True)
        else:
            name = VARIANTS[key][0]
            make = {
                "eager": lambda: functional_contestant(fupdate),
                "foreach": lambda: torch_contestant(foreach=True),
                "fused": lambda: torch_contestant(fused=True),
                "fused-clip": lambda: torch_contestant(clip=True, fused=True),
            }[key]
            contestants[name], current[name] = make()
            info[name] = first_call(contestants[name], device)
    if args._compile_only:
        print(json.dumps(info))
        return
    if pre:
        pre.close()
    if "functional compiled" in info and "functional compiled + combo" in info:
        a, b = info["functional compiled"], info["functional compiled + combo"]
        if a.get("code_sha1") and b.get("code_sha1"):
            b["changed_code"] = a["code_sha1"] != b["code_sha1"]

    for _ in range(args.warmup):
        for fn in contestants.values():
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

    # agreement: every contestant ran 1 + warmup + reps steps; so does the reference
    n_steps = 1 + args.warmup + args.reps
    ref_step, ref_params = torch_contestant(foreach=False)
    for _ in range(n_steps):
        ref_step()
    ref = ref_params()
    agree = {}
    for name, params_of in current.items():
        agree[name] = max(
            ((a.float() - b).abs().max() / b.abs().max()).item() for a, b in zip(params_of(), ref)
        )

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    fused = med.get("torch fused") or min(med.values())
    ours = [k for k in med if not k.startswith("torch")]
    best = min(
        (k for k in ours if k not in ("functional compiled", "functional eager")),
        key=med.get,
        default=None,
    )
    if args.profile_out:
        chunks = [f"# optim_step profile: {machine_name(device)}; one step each\n"]
        for name in dict.fromkeys(["functional compiled", best, "torch fused"]):
            if name in contestants:
                chunks.append(profile_step(name, contestants[name], device))
        Path(args.profile_out).write_text("\n".join(chunks))
        print(f"profile written to {args.profile_out}", flush=True)

    machine = machine_name(device)
    moved = 28 * n_params / 1e9  # GB: read p, g, m, v and write p, m, v in fp32
    lines = [
        f"{len(shapes)} tensors, {n_params / 1e6:.1f}M parameters, float32, {args.device}; "
        f"median of {args.reps} alternating steps; max rel diff vs torch.optim.AdamW "
        f"(foreach=False) after {n_steps} steps; GB/s at 28 bytes/param",
        f"{'contestant':<32}{'median ms':>10}{'min ms':>9}{'vs fused':>9}{'GB/s':>7}"
        f"{'max rel diff':>13}{'first call s':>13}{'kernels':>8}  notes",
    ]
    for k in contestants:
        kern = info[k].get("kernels", "")
        lines.append(
            f"{k:<32}{med[k]:>10.2f}{min(times[k]) * 1e3:>9.2f}{med[k] / fused:>8.2f}x"
            f"{moved / (med[k] / 1e3):>7.0f}{agree[k]:>13.1e}{info[k]['first_call_s']:>13.1f}"
            f"{kern!s:>8}  {NOTES.get(k, '')}"
        )
    for k, why in skipped.items():
        lines.append(f"{k:<32} skipped: {why}")
    if (
        "functional compiled + combo" in info
        and "changed_code" in info["functional compiled + combo"]
    ):
        lines.append(
            "combo_kernels changed the generated code: "
            f"{info['functional compiled + combo']['changed_code']}"
        )
    if pre:
        lines.append(
            "precompiled in parallel processes (done after s): "
            + ", ".join(f"{k} {v}" for k, v in pre.wall.items())
        )
    if best:
        lines.append(f"fastest pureml variant besides functional compiled: {best}")
    table = "\n".join(lines)
    print(table)

    command = "python benchmarks/optim_step.py " + " ".join(sys.argv[1:])
    if not args.no_write:
        block = "\n".join(
            [
                f"### {args.device}",
                "",
                f"- machine: {machine}",
                f"- date: {harness.now_utc()}",
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
        "steps": n_steps,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "vs_fused": {k: round(v / fused, 3) for k, v in med.items()},
        "max_rel_diff": {k: float(f"{v:.2e}") for k, v in agree.items()},
        "kernels": {k: v.get("kernels") for k, v in info.items() if "kernels" in v},
        "first_call_s": {k: v["first_call_s"] for k, v in info.items()},
        "best": best,
        "skipped": skipped,
        "precompiled_s": pre.wall if pre else None,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    if "functional compiled" in med:
        headline["compiled_vs_fused"] = round(med["functional compiled"] / fused, 3)
        if "torch foreach" in med:
            headline["compiled_vs_foreach"] = round(
                med["functional compiled"] / med["torch foreach"], 3
            )
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
    flat = make_step(loss_fn, opt, grad_max_norm=1.0, backend=args.backend, flat=True)
    static = make_step(loss_fn, opt, grad_max_norm=1.0, backend=args.backend, dynamic=False)

    def fused_fn(p, buffers, opt_state, guard, bt, rng, step, index):
        # torch.func differentiates inside the graph (autograd.grad, what make_step uses around
        # its compiled forward, cannot be traced)
        grad_and_value = torch.func.grad_and_value(split._forward, has_aux=True)
        grads, (loss, aux) = grad_and_value(p, buffers, bt, rng, step, index)
        losses = {"loss": loss, **{f"aux/{k}": v for k, v in aux.items()}}
        return split._update(p, opt_state, guard, grads, losses, step)

    fused_c = torch.compile(fused_fn, fullgraph=True, backend=args.backend)
    index = torch.zeros((), dtype=torch.int64, device=device)

    def run_fused(st, bt):
        p, o, gd, stp, m, _ = fused_c(
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
        "make_step flat=True": lambda st, bt: flat(st, [bt]),
        "make_step dynamic=False": lambda st, bt: static(st, [bt]),
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
    f = states["make_step flat=True"].params
    rel_flat = max(((a[k] - f[k]).abs().max() / a[k].abs().max()).item() for k in a)
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
        f"eager vs make_step {rel_eager:.2e}, flat vs make_step {rel_flat:.2e}"
    )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        command = "python benchmarks/optim_step.py " + " ".join(sys.argv[1:])
        block = "\n".join(
            [
                f"### whole step, split vs fused graphs ({args.device})",
                "",
                f"- date: {harness.now_utc()}, {machine_name(device)}",
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
                "flat_vs_split": round(med["make_step flat=True"] / ref, 3),
                "split_vs_module_fused_adamw": round(ref / med["nn.Module + fused AdamW eager"], 3),
            }
        )
    )


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = harness.cpu_name() or platform.processor() or "unknown CPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
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
