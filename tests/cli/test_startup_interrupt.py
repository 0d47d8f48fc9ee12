"""Ctrl-C while a command is still importing torch (its first seconds): one line, exit 130."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from pureml.startup import EXIT_INTERRUPTED

# A line of PYTHONPROFILEIMPORTTIME's, written as each import ends: torch's own modules load
# one by one (for seconds), so at this line torch has begun to load and has not finished.
TORCH_LOADING = re.compile(r"^import time:.*\|\s+torch\.")

# The console script pip writes for `pureml = "pureml.cli:main"`.
CONSOLE_SCRIPT = "import sys\nfrom pureml.cli import main\nsys.exit(main())\n"


def _interrupt_while_torch_loads(args: list[str], **env: str) -> tuple[int, list[str]]:
    """Run ``python ARGS``, send SIGINT once torch is loading; its exit code and the lines of
    stderr that are not the import timings."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1", **env},
        # as a terminal's Ctrl-C finds it: a shell script's background job (`ci.sh &`) starts
        # with SIGINT ignored, which its children inherit, and Python then never raises
        # KeyboardInterrupt (the whole file failed that way in a backgrounded clean-clone check)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    watchdog = threading.Timer(300, proc.kill)  # a loaded machine is slow, not stuck
    watchdog.start()
    try:
        seen = []
        while not any(TORCH_LOADING.match(line) for line in seen[-1:]):
            line = proc.stderr.readline()
            assert line, f"ended before torch loaded: {''.join(seen)[-2000:]}"
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        code = proc.wait()
    finally:
        watchdog.cancel()
        proc.stderr.close()
    lines = [x for x in "".join(seen + [rest]).splitlines() if not x.startswith("import time:")]
    return code, lines


@pytest.fixture
def console_script(tmp_path) -> str:
    script = tmp_path / "pureml"
    script.write_text(CONSOLE_SCRIPT)
    return str(script)


@pytest.mark.parametrize("entry", ["python -m pureml.train", "pureml"])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(entry, console_script, tmp_path):
    # was: a traceback through torch's imports, and death by SIGINT
    recipe = str(tmp_path / "recipe.toml")
    args = (
        ["-m", "pureml.train", recipe] if entry != "pureml" else [console_script, "train", recipe]
    )
    code, lines = _interrupt_while_torch_loads(args)
    assert (code, lines) == (EXIT_INTERRUPTED, ["interrupted"])


def test_under_torchrun_only_local_rank_zero_says_so(tmp_path):
    code, lines = _interrupt_while_torch_loads(
        ["-m", "pureml.train", str(tmp_path / "recipe.toml")], LOCAL_RANK="1"
    )
    assert (code, lines) == (EXIT_INTERRUPTED, [])


def test_a_program_importing_pureml_keeps_pythons_ctrl_c():
    code, lines = _interrupt_while_torch_loads(["-c", "import pureml"])
    assert code == -signal.SIGINT and lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyboardInterrupt"
