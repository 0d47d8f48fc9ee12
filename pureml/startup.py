"""What a process knows of how it was started before torch is imported (which takes seconds):
whether it runs one of pureml's commands, and whether it speaks for its machine under torchrun.

``pureml/__init__`` imports this module before anything else, so it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

EXIT_INTERRUPTED = 130

# Python's options that take the next argument as their value (``-W ignore``, ``-X importtime``).
_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")


def is_node_leader(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process speaks for its machine: not under torchrun, or its local rank 0.

    Read from the environment, so it answers before (or without) a process group: the CLI
    prints an input error (a recipe typo, a bad data file) that every rank of a node meets
    alike once per node instead of once per rank.

    >>> is_node_leader({}), is_node_leader({"LOCAL_RANK": "1"}), is_node_leader({"LOCAL_RANK": "0"})
    (True, False, True)
    """
    return (os.environ if env is None else env).get("LOCAL_RANK", "0").strip() in ("0", "")


def started_as_command(
    argv: Sequence[str] | None = None, orig_argv: Sequence[str] | None = None
) -> bool:
    """Whether this process runs one of pureml's commands: the ``pureml`` script, or
    ``python -m pureml.<module>`` (torchrun's workers too), not a program that imports pureml.

    >>> started_as_command(["/venv/bin/pureml", "train", "r.toml"], [])
    True
    >>> started_as_command(["-m", "r.toml"], ["python3", "-u", "-m", "pureml.train", "r.toml"])
    True
    >>> started_as_command(["train.py", "pureml"], ["python3", "train.py", "pureml"])
    False
    """
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if argv and os.path.splitext(os.path.basename(argv[0]))[0] == "pureml":
        return True
    # sys.argv[0] is still "-m" while runpy imports the package: the interpreter's own
    # command line names the module
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "-m" or (arg.startswith("-m") and len(arg) > 2):
            module = arg[2:] or next(args, "")
            return module == "pureml" or module.startswith("pureml.")
        if arg in _OPTIONS_WITH_VALUE:
            next(args, None)
        elif arg == "-c" or not arg.startswith("-"):  # a program, a script: not ours
            return False
    return False


@contextlib.contextmanager
def interrupt_ends_command() -> Iterator[None]:
    """Around pureml's own imports: in one of its commands, Ctrl-C while torch loads ends the
    command as it does later (``interrupted``, exit 130) instead of with a traceback through
    torch's imports. In a program that imports pureml it changes nothing; ``--debug`` keeps the
    traceback."""
    try:
        yield
    except KeyboardInterrupt:
        if not started_as_command() or "--debug" in sys.argv[1:]:
            raise
        if is_node_leader():  # under torchrun the terminal's Ctrl-C reaches every rank
            print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
