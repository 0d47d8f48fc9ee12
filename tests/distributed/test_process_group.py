import json
import subprocess
import textwrap

import pytest
import torch.distributed
from torchrun_launch import launcher

from pureml.distributed import DistributedSetupError, init_distributed
from pureml.distributed.process_group import collective_timeout_s, lost_peers_message

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for v in TORCHRUN_VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_no_torchrun_env_runs_alone(clean_env):
    info = init_distributed(cpu=True)
    assert (info.rank, info.world_size, info.is_distributed) == (0, 1, False)


def test_half_set_environment_names_what_is_missing(clean_env):
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing"):
        init_distributed(cpu=True)


def test_rank_outside_world_size(clean_env):
    for k, v in dict(RANK="3", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1").items():
        clean_env.setenv(k, v)
    clean_env.setenv("MASTER_PORT", "29999")
    with pytest.raises(DistributedSetupError, match="RANK=3 is outside WORLD_SIZE=2"):
        init_distributed(cpu=True)


def test_collective_timeout_from_environment():
    # long by default: a peer may be compiling its own shapes for minutes on a busy CPU
    assert collective_timeout_s({}) == 1800.0
    assert collective_timeout_s({"PUREML_COLLECTIVE_TIMEOUT_S": "90"}) == 90.0
    with pytest.raises(DistributedSetupError, match="PUREML_COLLECTIVE_TIMEOUT_S='soon'"):
        collective_timeout_s({"PUREML_COLLECTIVE_TIMEOUT_S": "soon"})


RANK_1_OF_2 = {"RANK": "1", "WORLD_SIZE": "2"}
NCCL_REMOTE = (
    "NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network "
    "error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network error "
    "or a remote process exiting prematurely.\nException raised from ... frame #0: ..."
)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:9605. GLHF!"),
        RuntimeError("[pair.cc:537] Read error [127.0.0.1]:22939: Connection reset by peer."),
        RuntimeError("[unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation"),
        torch.distributed.DistBackendError(NCCL_REMOTE),
        torch.distributed.DistBackendError(
            "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=ALLREDUCE)"
        ),
        torch.distributed.DistNetworkError("Failed to recv, got 0 bytes. Connection was likely"),
    ],
)
def test_a_lost_peer_is_one_line_naming_this_rank_with_the_backends_first_line(error):
    line = lost_peers_message(error, RANK_1_OF_2)
    assert line is not None and "\n" not in line
    assert line.startswith("rank 1: lost contact with the other ranks: another rank stopped")
    assert line.endswith(str(error).splitlines()[0])


def test_a_lost_peer_is_found_behind_the_error_that_wraps_it():
    try:
        try:
            raise RuntimeError("Connection closed by peer [127.0.0.1]:9605")
        except RuntimeError as e:
            raise ValueError("while tracing the step") from e
    except ValueError as wrapped:
        line = lost_peers_message(wrapped, RANK_1_OF_2)
    assert line is not None and line.endswith("Connection closed by peer [127.0.0.1]:9605")


@pytest.mark.parametrize(
    "error, env",
    [
        # a local backend fault keeps its own message
        (torch.distributed.DistBackendError("NCCL error: unhandled cuda error"), RANK_1_OF_2),
        # this rank's own I/O (a download, a file), not a collective
        (ConnectionResetError(104, "Connection reset by peer"), RANK_1_OF_2),
        (TimeoutError("Timed out waiting for the tokenizer"), RANK_1_OF_2),
        (RuntimeError("CUDA out of memory"), RANK_1_OF_2),
        # no torchrun, or a single rank: no peer to lose
        (RuntimeError("Connection closed by peer"), {}),
        (RuntimeError("Connection closed by peer"), {"RANK": "0", "WORLD_SIZE": "1"}),
    ],
)
def test_a_local_error_is_not_blamed_on_another_rank(error, env):
    assert lost_peers_message(error, env) is None


# The torchrun scripts' common head: OUT (the test's folder, argv[1]) and open_sockets(), the
# sockets this process holds (a process group's close only once the group is really freed).
SCRIPT_HEAD = """\
import os
import sys
OUT = sys.argv[1]


def open_sockets():
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sum(link.startswith("socket:") for link in links)
"""


def _run_two_ranks(folder, name: str, body: str) -> None:
    """Run SCRIPT_HEAD + ``body`` on two torchrun ranks (CPU, gloo); fail with their output."""
    script = folder / name
    script.write_text(SCRIPT_HEAD + textwrap.dedent(body))
    proc = subprocess.run(
        [*launcher(2), str(script), str(folder)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    # the head holds the ranks' own messages (a gloo abort once, under load), the tail torchrun's
    assert proc.returncode == 0, proc.stderr[:2000] + "\n...\n" + proc.stderr[-800:]


def test_compiled_all_reduce_sums_across_two_torchrun_ranks(tmp_path):
    _run_two_ranks(
        tmp_path,
        "allreduce.py",
        """
        import json
        import torch
        from pureml.distributed import (
            check_same_everywhere, global_stats, init_distributed, make_all_reduce, shutdown
        )
        sockets_before = open_sockets()
        info = init_distributed(cpu=True, timeout_s=60)
        reduce = make_all_reduce(info)
        f = torch.compile(lambda x: reduce(x * 2) + 1, fullgraph=True, backend="aot_eager")
        out = f(torch.arange(4.0) + info.rank)
        with open(f"{OUT}/rank{info.rank}.txt", "w") as f_out:
            f_out.write(repr(out.tolist()))
        # stats summed over ranks and the global indices of each rank's sub-batches, in one
        # call: two streams, rank 0 with 2 + 1 sub-batches, rank 1 with 3 + 1
        stats, first = global_stats(
            info, {"words": torch.tensor(10.0 + info.rank)}, {"a": 2 + info.rank, "b": 1}
        )
        check_same_everywhere(info, "same", "abc")
        try:
            check_same_everywhere(info, "initial parameters", f"fp{info.rank}")
            error = "none"
        except RuntimeError as e:
            error = str(e)
        shutdown(info)
        with open(f"{OUT}/rank{info.rank}.json", "w") as f_out:
            json.dump({"words": stats["words"].item(), "first": first, "error": error,
                       "sockets": [sockets_before, open_sockets()]}, f_out)
        """,
    )
    # each rank doubles its own arange(4) + rank; the sum is 2 * (2 * arange(4) + 1), plus 1
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "[3.0, 7.0, 11.0, 15.0]"
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # one process's order: stream 0 of rank 0 (0, 1), of rank 1 (2, 3, 4), then stream 1
        assert got["words"] == 21.0 and got["first"] == [[0, 1, 5], [2, 3, 4, 6]][rank]
        # a differing fingerprint fails on every rank, naming each rank's value
        assert got["error"] == "initial parameters differ across ranks (rank 0: fp0, rank 1: fp1)"
        # shutdown really frees the group although torch.compile ran: its sockets close (a
        # group kept alive leaves gloo threads that can abort the rank as Python exits)
        assert got["sockets"][1] == got["sockets"][0], got["sockets"]


def test_a_script_trains_twice_on_one_group_and_leaves_it_at_exit(tmp_path):
    _run_two_ranks(
        tmp_path,
        "train_twice.py",
        """
        import atexit
        import json
        rank = int(os.environ["RANK"])
        report = {}

        def at_exit():  # registered first, so it runs after pureml's own exit handler
            report["sockets"] = [report["sockets_before"], open_sockets()]
            with open(f"{OUT}/rank{rank}.json", "w") as f_out:
                json.dump(report, f_out)

        atexit.register(at_exit)
        report["sockets_before"] = open_sockets()
        import torch
        import torch.distributed as dist
        from pureml import TrainingData, train
        from pureml.nlp import NerCrf, Pipeline, ScratchEncoder
        from pureml.nlp.synthetic import write_corpus
        from pureml.stream import read_standoff

        corpus = write_corpus(f"{OUT}/corpus{rank}", seed=0, splits={"train": 12})
        report["joined"] = []
        for name in ("first", "second"):
            torch.manual_seed(0)
            nlp = Pipeline({"embedding": ScratchEncoder(width=8, depth=1), "ner": NerCrf()})
            data = TrainingData(read_standoff(corpus["train"]), batch_size="100 words")
            train(nlp, data, max_steps=2, compile=False, logger=False, save_model=False,
                  output_dir=f"{OUT}/{name}")
            report["joined"].append(dist.is_initialized())
        """,
    )
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # the second run reuses the first's group (one cannot be joined twice in a process);
        # by the time the interpreter finalizes, the group is gone and its sockets closed
        assert got["joined"] == [True, True], got
        assert got["sockets"][1] == got["sockets"][0], got


def test_a_rank_without_documents_fails_alike_on_every_rank(tmp_path):
    _run_two_ranks(
        tmp_path,
        "empty_rank.py",
        """
        import torch
        from pureml.distributed import global_stats, init_distributed, shutdown
        from pureml.stream.errors import StreamError

        info = init_distributed(cpu=True, timeout_s=60)
        # two streams; one global batch of the second has one document: rank 1's share of it
        # is empty, so rank 1 lacks that stream's stats (a stats all-reduce of another size)
        ner = {"words": torch.tensor(9.0)}
        totals = {**ner, "spans": torch.tensor(3.0)} if info.rank == 0 else ner
        per_stream = {"train_data.ner": 1, "train_data.types": 1 if info.rank == 0 else 0}
        try:
            global_stats(info, totals, per_stream)
            error = "none"
        except StreamError as e:
            error = str(e)
        # the group is still usable: no collective was left half done
        stats, first = global_stats(info, {"words": torch.tensor(1.0)}, {"train_data.ner": 1})
        shutdown(info)
        with open(f"{OUT}/rank{info.rank}.txt", "w") as f_out:
            f_out.write(f"{error}|{stats['words'].item()}|{first}")
        """,
    )
    for rank in (0, 1):
        error, words, first = (tmp_path / f"rank{rank}.txt").read_text().split("|")
        assert error.startswith(
            "train_data.types: a training batch left rank 1 of 2 without documents"
        ), error
        assert "raise train_data.types.batch_size or run fewer processes" in error
        assert (float(words), first) == (2.0, f"[{rank}]")
