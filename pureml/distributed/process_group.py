"""Process-group set-up from torchrun's environment, and teardown.

pureml talks to ``torch.distributed`` directly: torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them, picks
gloo on CPU and nccl on GPU, and binds the process to the GPU of its local rank.

>>> info = init_distributed(cpu=True)   # no torchrun variables: a single process
>>> (info.rank, info.world_size, info.is_main)
(0, 1, True)
"""

from __future__ import annotations

import atexit
import datetime
import importlib
import os
from collections.abc import Mapping

import attrs
import torch
import torch.distributed as dist

# torch-free, where the CLI reads it before torch is imported; here for pureml.distributed
from ..startup import is_node_leader as is_node_leader

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedSetupError(RuntimeError):
    """The environment describes no coherent process group."""


@attrs.frozen
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"{name}={value!r} is not an integer") from None


# Substrings (lower case) of what a collective raises on a rank whose peer is gone or silent.
# Matched in the message, not by type: gloo raises a plain RuntimeError, NCCL a DistBackendError,
# and a DistBackendError alone does not tell a dead peer from a local fault ("unhandled cuda
# error", "invalid usage"), which must keep its own message.
_LOST_PEER_MARKERS = (
    "connection closed by peer",  # gloo: the peer's sockets closed (its process ended)
    "connection closed by remote peer",  # NCCL's socket transport
    "connection reset by peer",  # gloo, the TCP store
    "broken pipe",
    "remote process",  # NCCL: "remote process exited or there was a network error"
    "timed out waiting",  # gloo: PUREML_COLLECTIVE_TIMEOUT_S ran out on a silent peer
    "collective operation timeout",  # NCCL's watchdog, the same
    "pair closure",  # gloo: "Application timeout caused pair closure"
    "communicator was aborted",  # NCCL, after another rank's failure
    "got 0 bytes",  # the TCP store: "Failed to recv, got 0 bytes"
)


def lost_peers_message(exc: BaseException, env: Mapping[str, str] | None = None) -> str | None:
    """One line naming this rank if ``exc`` means it lost contact with the other ranks, else None.

    When a rank dies (an error, the OOM killer), the others fail in their next collective with
    the backend's words ("Connection closed by peer"), which do not say that the cause is another
    rank's. The line says so and keeps the backend's first line. Only in a multi-rank job, and
    only for RuntimeErrors (torch.distributed's errors included; the exception's causes too):
    an OSError such as a reset download is this rank's own error.

    >>> gloo = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:9605")
    >>> lost_peers_message(gloo, {"RANK": "0", "WORLD_SIZE": "2"})
    'rank 0: lost contact with the other ranks: ...: [pair.cc:553] Connection closed by peer ...'
    >>> lost_peers_message(gloo, {}) is None  # no torchrun: no peers to lose
    True
    """
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):
        return None
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if isinstance(e, RuntimeError) and any(m in text.lower() for m in _LOST_PEER_MARKERS):
            first = text.strip().splitlines()[0].strip()
            return (
                f"rank {env.get('RANK', '?')}: lost contact with the other ranks: another rank "
                "stopped or stopped answering (its own error is above or in its log); this rank "
                f"cannot go on: {first}"
            )
        e = e.__cause__ or e.__context__
    return None


TIMEOUT_VAR = "PUREML_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


def collective_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """How long a collective waits for a peer: ``PUREML_COLLECTIVE_TIMEOUT_S`` or 30 minutes.

    Not shorter by default: ranks compile their steps independently (each sees its own padded
    shapes), and on a busy CPU one compile can take minutes while its peer waits in the
    all-reduce (measured: 6.5 min on 2 loaded cores; 120 s timed out). A rank that dies does
    not wait for this: its sockets close, the peers' collectives fail at once, and torchrun
    stops the job in seconds. The timeout only bounds a rank that hangs while alive.

    >>> collective_timeout_s({"PUREML_COLLECTIVE_TIMEOUT_S": "60"})
    60.0
    """
    value = (os.environ if env is None else env).get(TIMEOUT_VAR)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise DistributedSetupError(f"{TIMEOUT_VAR}={value!r} is not a number") from None
    if seconds <= 0:
        raise DistributedSetupError(f"{TIMEOUT_VAR}={value!r} must be positive")
    return seconds


def init_distributed(*, cpu: bool = False, timeout_s: float | None = None) -> DistInfo:
    """Join the process group described by torchrun's variables, or run alone if there are none.

    A half-set environment (some torchrun variables but not all) is an error rather than a
    silent single-process run: it usually means a launcher was misconfigured, and training alone
    on one rank's shard would look fine while being wrong. ``timeout_s`` (default
    :func:`collective_timeout_s`) bounds how long a collective waits for a live but stuck peer.
    """
    present = [v for v in _TORCHRUN_VARS if v in os.environ]
    use_cuda = torch.cuda.is_available() and not cpu
    if not present:
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        return DistInfo(device=device)
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"incomplete torchrun environment: {', '.join(present)} set but "
            f"{', '.join(missing)} missing (launch with torchrun, or unset them)"
        )
    rank, world_size, local_rank = (_int_env(v) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size == 1:
        return DistInfo(local_rank=local_rank, device=device)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        # Imported first on purpose: importing torch._dynamo (which torch.compile and the
        # functional collectives do) once a process group exists keeps references to that
        # group, so destroy_process_group no longer frees it and gloo's worker threads
        # outlive it. One of them then releases its last work's tensors while the interpreter
        # finalizes, cannot take the GIL, and the rank aborts at exit ("terminate called
        # without an active exception"; measured 5 of 20 two-rank runs, 0 of 20 with this).
        importlib.import_module("torch._dynamo")
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(
                seconds=collective_timeout_s() if timeout_s is None else timeout_s
            ),
            device_id=device if use_cuda else None,
        )
        info = DistInfo(rank, world_size, local_rank, backend, device)
        # Left at exit unless shutdown() came first. Not at the end of train(): a group
        # cannot be joined again in the same process (the peers' addresses in the store go
        # stale), so a script that trains twice keeps it. atexit runs before the
        # interpreter's finalization, so gloo's threads are joined while they can still
        # take the GIL.
        atexit.register(shutdown, info)
        return info
    return DistInfo(rank, world_size, local_rank, backend, device)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (a no-op for a single process)."""
    if info.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
