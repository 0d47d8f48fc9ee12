"""Click commands ``replay`` and ``diff``, attached to the ``pureml`` group by ``pureml.cli``.

::

    pureml replay artifacts/quickstart --step 60
    pureml replay artifacts/quickstart --step 41 --eager --dump /tmp/step41
    pureml diff artifacts/run-a artifacts/run-b

Exit codes: 0 when every replayed step matches (``diff``: the runs are identical), 1 at the
first mismatch (``diff``: the runs differ), 2 for bad input (a folder that is not a run, a
step that is not recorded). Until attached, ``python -m pureml.replay replay|diff ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2


def _input_errors() -> tuple[type[BaseException], ...]:
    from ..stream.errors import StreamError
    from ..training.checkpoint import CheckpointError
    from ..training.config import RecipeError
    from .rebuild import ReplayError

    return (ReplayError, RecipeError, StreamError, CheckpointError, FileNotFoundError)


def _fail(e: BaseException, debug: bool) -> None:
    if debug:
        raise e
    if isinstance(e, _input_errors()):
        from ..startup import is_node_leader

        if is_node_leader():  # under torchrun every rank meets it: one line per machine
            click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    from ..distributed.process_group import lost_peers_message

    # a replay under torchrun whose peer died: say so, as training does
    if (lost := lost_peers_message(e)) is not None:
        click.echo(f"error: {lost}", err=True)
        sys.exit(3)
    click.echo(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
    sys.exit(EXIT_MISMATCH if isinstance(e, AssertionError) else 3)


@click.command("replay")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--step",
    "step",
    type=int,
    default=None,
    help="Replay up to this step (default: the last recorded).",
)
@click.option(
    "--dump",
    "dump",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the batch, losses and gradient norms of the step to this folder.",
)
@click.option(
    "--eager", is_flag=True, help="Also run the step uncompiled; print relative differences."
)
@click.option(
    "--pdb",
    "pdb",
    is_flag=True,
    help="Stop in the debugger inside the loss (eager run of the step).",
)
@click.option("--keep-going", is_flag=True, help="Do not stop at the first mismatching step.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key of the run's config.toml (e.g. a moved data path).",
)
@click.option("--quiet", "-q", is_flag=True, help="Only the summary, not one line per step.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one line.")
def replay_command(
    run_dir: Path,
    step: int | None,
    dump: Path | None,
    eager: bool,
    pdb: bool,
    keep_going: bool,
    overrides: tuple[str, ...],
    quiet: bool,
    debug: bool,
) -> None:
    """Replay RUN_DIR's recorded steps up to --step from the newest checkpoint before it and
    check loss, gradient norm, batch and parameter fingerprints bit for bit."""
    from .rebuild import RebuiltRun
    from .replay import format_report, format_step, replay

    echo = click.echo
    try:
        run = RebuiltRun(run_dir, overrides=overrides)
        if not run.trainer.world.is_main:  # under torchrun: rank 0 reports for all

            def echo(*args, **kwargs) -> None:
                pass

        target = run.target_step(step)  # refused before anything is printed
        where = run.checkpoint_before(target)
        echo(
            f"replaying {run_dir} up to step {target} from "
            f"{where.name if where is not None else 'the initial state'} "
            f"(step: {run.backend})"
        )
        report = replay(
            run_dir,
            step,
            eager=eager,
            pdb=pdb,
            dump=dump,
            keep_going=keep_going,
            run=run,
            on_step=None if quiet else (lambda c: echo(format_step(c))),
        )
    except Exception as e:  # noqa: BLE001 - one line and an exit code, unless --debug
        _fail(e, debug)
        return
    text = format_report(report)
    echo(text, err=not report.ok)
    if not report.ok:
        sys.exit(EXIT_MISMATCH)


@click.command("diff")
@click.argument("run_a", type=click.Path(file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-docs", is_flag=True, help="Do not read the documents to name changed ones.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one line.")
def diff_command(run_a: Path, run_b: Path, no_docs: bool, debug: bool) -> None:
    """The first step at which two runs' records differ, and in what (batch, loss, grad norm,
    parameters); for batches, which documents."""
    from .diff import diff_runs, format_report

    try:
        report = diff_runs(run_a, run_b, documents=not no_docs)
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
        return
    click.echo(format_report(report, str(run_a), str(run_b)))
    if not report.identical:
        sys.exit(EXIT_MISMATCH)


@click.group()
def main() -> None:
    """pureml replay/diff (standalone until attached to the pureml command)."""


main.add_command(replay_command)
main.add_command(diff_command)

__all__ = ["diff_command", "main", "replay_command"]
