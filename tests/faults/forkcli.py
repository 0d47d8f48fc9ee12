"""Run the real CLI in fresh processes, cheaply: fork them from a server that imported pureml.

On this machine ``python -m pureml.train`` spends 6-13 s importing torch before it reads the
recipe, which would make 60 CLI runs cost 10 minutes. A ``multiprocessing`` forkserver imports
pureml once; every run is then a forked process that installs the fault hooks named in its
environment, points its stdout/stderr file descriptors at files, runs the click command the
console script runs (``pureml.cli.main`` / ``train_main``) with ``argv`` and exits with its exit
code. Each run is a real process (own pid, killable with SIGKILL/SIGINT, real files, real exit
status); only the imports are shared. ``exec_cli`` runs the genuine ``python -m pureml.train``
for the checks that need a cold interpreter (import-time warnings on stderr).

>>> r = run_cli(["train", "missing.toml"], cwd=".")            # doctest: +SKIP
>>> r.code, r.stderr                                           # doctest: +SKIP
(2, 'error: recipe not found: missing.toml\\n')
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

_CTX = None
PRELOAD = [
    "torch",
    "pureml",
    "pureml.cli",
    "pureml.training.trainer",
    "pureml.training.build",
    "pureml.training.evaluate",
    "faults.hooks",
]


def _context():
    global _CTX
    if _CTX is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CTX = ctx
    return _CTX


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str, entry: str) -> None:
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    from faults import hooks

    hooks.install()
    from pureml.cli import main, train_main

    command = train_main if entry == "train" else main
    prog = "python -m pureml.train" if entry == "train" else "pureml"
    code: int = 0
    try:
        command(args=argv, prog_name=prog)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # an exception the CLI let through: show it, exit like Python
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@attrs.frozen
class Result:
    code: int
    stdout: str
    stderr: str


@attrs.define
class Running:
    """A CLI process in flight; ``code`` is -9 after SIGKILL, as with subprocess."""

    proc: multiprocessing.process.BaseProcess
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.is_alive()

    def wait(self, timeout: float = 300) -> Result:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()
            raise AssertionError(f"CLI still running after {timeout} s: {self.err.read_text()}")
        return Result(self.proc.exitcode, self.out.read_text(), self.err.read_text())

    def stderr(self) -> str:
        return self.err.read_text()


_COUNTER = iter(range(10**9))


def start_cli(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike,
    env: dict[str, str] | None = None,
    entry: str = "pureml",
    logs: str | os.PathLike | None = None,
) -> Running:
    """Start ``pureml ARGV`` (``entry="train"``: ``python -m pureml.train ARGV``) in a fork."""
    logs = Path(logs or cwd)
    n = next(_COUNTER)
    out, err = logs / f".cli-{os.getpid()}-{n}.out", logs / f".cli-{os.getpid()}-{n}.err"
    out.write_bytes(b"")
    err.write_bytes(b"")  # readable before the child opens them
    full_env = {**os.environ, **(env or {})}
    proc = _context().Process(
        target=_child, args=(list(argv), full_env, str(cwd), str(out), str(err), entry)
    )
    proc.start()
    return Running(proc, out, err)


def run_cli(argv: Sequence[str], **kwargs) -> Result:
    """Run ``pureml ARGV`` (see :func:`start_cli`) to the end."""
    return start_cli(argv, **kwargs).wait()


def train(recipe: Path, *args: str, **kwargs) -> Result:
    """``python -m pureml.train RECIPE ARGS`` in a fork, run to the end."""
    return start_cli([str(recipe), *args], entry="train", **kwargs).wait()


def exec_cli(args: Sequence[str], *, cwd: str | os.PathLike) -> Result:
    """The genuine ``python -m pureml.train ARGS`` (a cold interpreter, the user's environment)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "pureml.train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def wait_until(predicate: Callable[[], bool], running: Running, timeout: float = 300) -> None:
    """Poll ``predicate`` until true; fail if the process ended first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if not running.alive():
            raise AssertionError(
                f"CLI ended first (exit {running.proc.exitcode}): {running.stderr()}"
            )
        assert time.monotonic() < deadline, "CLI too slow"
        time.sleep(0.01)
