"""Data parallelism through torchrun and torch.distributed (no DDP wrapper, no Accelerate)."""

from .collectives import (
    any_rank,
    barrier,
    check_same_everywhere,
    gather_strings,
    global_stats,
    make_all_reduce,
    sub_batch_indices,
    sum_across_ranks,
)
from .process_group import (
    DistInfo,
    DistributedSetupError,
    init_distributed,
    is_node_leader,
    lost_peers_message,
    shutdown,
)
from .trace import RankTrace

__all__ = [
    "DistInfo",
    "DistributedSetupError",
    "any_rank",
    "barrier",
    "check_same_everywhere",
    "gather_strings",
    "global_stats",
    "init_distributed",
    "is_node_leader",
    "lost_peers_message",
    "make_all_reduce",
    "RankTrace",
    "shutdown",
    "sub_batch_indices",
    "sum_across_ranks",
]
