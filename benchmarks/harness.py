"""What the benchmark drivers share: venvs, running one contender per subprocess, RESULTS.md.

Each contender runs in a fresh process so that its peak memory is its own: ``os.wait4`` gives the
child's own ``ru_maxrss``, and a sampler thread adds up the resident memory of the whole process
tree (compile workers included) every 0.2 s.

>>> summary([3.0, 1.0, 2.0])["median"]
2.0
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "RESULTS.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_venv(path: Path, requirements: list[str], *, marker_extra: str = "") -> Path:
    """Create ``path`` with ``pip install requirements`` once; return its python.

    A marker file holds the requirement list: a changed list rebuilds the venv.
    """
    python = path / "bin" / "python"
    marker = path / ".pureml-bench-requirements"
    wanted = json.dumps(requirements) + marker_extra
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    log(f"creating venv {path} with {' '.join(requirements)} (a minute or two)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *requirements],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    marker.write_text(wanted)
    return python


def pip_versions(python: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\n"
        f"out = {{}}\nfor n in {names!r}:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def _tree_rss_kib(pid: int) -> int:
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def contender_env(threads: int, rep: int) -> dict[str, str]:
    """A contender's environment: ``threads`` math threads, and repetition ``rep``'s string-hash
    seed. Python's randomised ``hash()`` changes the order sets and dicts of strings are built
    and freed in, and with it the heap's layout: pureml's B2 run peaked at 509 to 613 MiB across
    identical runs, and at 588-591 with the seed fixed. Every contender of one repetition gets
    the same seed, and the repetitions different ones, so the medians still span layouts."""
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONHASHSEED": str(rep),
    }


def run_contender(
    cmd: list[str], log_path: Path, *, env: dict | None = None, timeout: float = 3600
) -> dict:
    """Run ``cmd`` (output to ``log_path``); return rc, wall time and peak memory in MiB."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    full_env.update(env or {})
    t0 = time.perf_counter()
    with open(log_path, "w") as out:
        # its own session: a driver that is stopped takes the contender's whole tree with it
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
            start_new_session=True,
        )
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_rss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = t0 + timeout
        finished = False
        try:
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    finished = True
                    break
                if time.perf_counter() > deadline:
                    log(f"timeout after {timeout:.0f} s: killing {cmd[1]}")
                    os.killpg(proc.pid, signal.SIGKILL)
                    deadline = float("inf")
                time.sleep(0.05)
        finally:
            done.set()
            if not finished:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        # Linux reports ru_maxrss in KiB
        "peak_rss_mib": rusage.ru_maxrss / 1024,
        "peak_tree_rss_mib": max(peak[0], rusage.ru_maxrss) / 1024,
    }


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``run_contender``'s clean-up kills the running contender."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def summary(xs: list[float]) -> dict:
    """Median, min, max and the values themselves."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "values": xs}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo; "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine() -> str:
    cpu = cpu_name() or "?"
    return f"{platform.node() or 'host'}: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}"


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_section(key: str, body: str, path: Path = RESULTS) -> None:
    """Replace what lies between ``<!-- key:start -->`` and ``<!-- key:end -->`` in *path*.

    Other sections are left byte for byte; a missing file or marker pair is created. Notes
    written by hand after a ``<!-- key:notes -->`` line inside the section (attempts, profiles,
    re-measures) are kept below the new body.
    """
    start, end, notes = f"<!-- {key}:start -->", f"<!-- {key}:end -->", f"<!-- {key}:notes -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    kept = ""
    if start in text and end in text:
        old = text.split(start, 1)[1].split(end, 1)[0]
        if notes in old:
            kept = "\n\n" + notes + old.split(notes, 1)[1].rstrip()
    block = f"{start}\n{body.rstrip()}{kept}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def md_table(header: list[str], rows: list[list]) -> str:
    def fmt(x) -> str:
        if isinstance(x, float):
            return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)
