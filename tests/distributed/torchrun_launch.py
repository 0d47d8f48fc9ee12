"""How the distributed tests start processes: torchrun's command-line prefix and a clean
environment. Test modules here import it as ``torchrun_launch`` (pytest puts this folder, which
has no ``__init__.py``, on ``sys.path``)."""

from __future__ import annotations

import os
import sys


def launcher(nproc: int) -> list[str]:
    """``[python, -m torch.distributed.run, ...]`` for ``nproc`` local ranks; ``[python]`` for
    one process (no torchrun)."""
    if nproc == 1:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment with one thread per rank (torchrun's default, so runs with and
    without torchrun compare bitwise) and without the variables of a torchrun we may run under."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    return env
