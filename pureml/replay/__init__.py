"""Replay recorded steps bit for bit, compare runs, and the determinism switch.

>>> from pureml.replay import replay, diff_runs   # doctest: +SKIP
>>> replay("artifacts/quickstart", step=60).ok     # doctest: +SKIP
True
"""

from .determinism import set_deterministic
from .diff import Difference, DiffReport, diff_runs
from .rebuild import RebuiltRun, ReplayError
from .replay import ReplayReport, StepCheck, replay

__all__ = [
    "DiffReport",
    "Difference",
    "RebuiltRun",
    "ReplayError",
    "ReplayReport",
    "StepCheck",
    "diff_runs",
    "replay",
    "set_deterministic",
]
