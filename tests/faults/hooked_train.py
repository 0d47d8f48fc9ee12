"""``python -m pureml.train`` with the fault hooks of its environment installed (``hooks.py``).

forkcli's forked CLI runs cannot be torchrun workers (torchrun starts its own processes), so a
distributed fault test hands torchrun this script instead of ``-m pureml.train``::

    torchrun --standalone --nproc_per_node=2 tests/faults/hooked_train.py RECIPE --set ...
"""

from __future__ import annotations

import sys
from pathlib import Path

# tests/, so that `faults.hooks` imports as it does in the fault suite
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    from faults import hooks

    hooks.install()
    from pureml.cli import train_main

    train_main(prog_name="python -m pureml.train")
