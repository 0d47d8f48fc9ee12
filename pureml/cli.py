"""The ``pureml`` command: a thin layer over the Python API.

::

    pureml train recipes/quickstart.toml --set train.max_steps=100
    pureml evaluate artifacts/model-last data/dev --json
    pureml predict artifacts/model-last data/unlabelled data/predicted
    pureml plot artifacts
    pureml recipe-reference > docs/recipe.md

Bad input (a recipe, a data file, an output folder) ends with one line on stderr naming what is
wrong and a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .replay.cli import diff_command, replay_command
from .startup import EXIT_INTERRUPTED, is_node_leader

EXIT_BAD_INPUT = 2


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "your input is wrong", not "pureml has a bug"."""
    from .core.state import CheckpointError as StateError  # load_state's, not checkpoint.py's
    from .nlp.pipeline import ModelError
    from .stream.errors import StreamError
    from .training.checkpoint import CheckpointError
    from .training.config import RecipeError
    from .training.predict import PredictError
    from .training.trainer import RunDirError

    return (
        RecipeError,
        RunDirError,
        StreamError,
        CheckpointError,
        StateError,
        ModelError,
        PredictError,
        FileNotFoundError,
    )


def _speaks_for_node() -> bool:
    return is_node_leader()


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn exceptions into one line on stderr and an exit code (unless ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        if debug:
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as e:
            if _speaks_for_node():
                click.echo(f"interrupted: {e}" if str(e) else "interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.ClickException:
            raise
        except Exception as e:
            if isinstance(e, _input_errors()):
                # under torchrun every rank meets the same bad input: one line per machine
                if _speaks_for_node():
                    click.echo(f"error: {e}", err=True)
                sys.exit(EXIT_BAD_INPUT)
            from .distributed.process_group import lost_peers_message

            # under torchrun: the backend's words on a rank whose peer died blame no one
            if (lost := lost_peers_message(e)) is not None:
                click.echo(f"error: {lost}", err=True)
                sys.exit(1)
            click.echo(
                f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True
            )
            sys.exit(1)

    return wrapper


debug_option = click.option(
    "--debug", is_flag=True, help="Show the full traceback on errors instead of one line."
)


def _is_own_warning(category: type[Warning], filename: str) -> bool:
    """A warning of pureml's own code about the user's data or recipe (not torch's)."""
    return category is UserWarning and "/pureml/" in filename.replace("\\", "/")


def _short_warnings() -> None:
    """pureml's own warnings (about the user's data or recipe) as one ``warning:`` line each,
    like the ``error:`` lines; others (torch's) keep Python's format, with their source.

    Under torchrun every rank reads the same recipe and data, so each of pureml's warnings
    would come once per rank: like the ``error:`` lines, only local rank 0 shows them.
    """
    import warnings

    default_format, default_show = warnings.formatwarning, warnings.showwarning
    quiet = not _speaks_for_node()

    def formatwarning(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        if _is_own_warning(category, filename):
            return f"warning: {message}\n"
        return default_format(message, category, filename, lineno, line)

    def showwarning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if quiet and _is_own_warning(category, filename):
            return
        default_show(message, category, filename, lineno, file, line)

    warnings.formatwarning = formatwarning
    warnings.showwarning = showwarning


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """pureml: train and evaluate NLP pipelines, exactly and fast."""
    _short_warnings()


def _train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))(fn)
    fn = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a recipe key (repeatable): --set train.max_steps=100",
    )(fn)
    fn = click.option(
        "--restart",
        is_flag=True,
        help="Ignore the checkpoints in the output folder and start over.",
    )(fn)
    return debug_option(fn)


@friendly_errors
def _run_train(recipe: Path, overrides: tuple[str, ...], restart: bool) -> None:
    from .training.trainer import train_from_recipe

    train_from_recipe(recipe, overrides, restart=restart)


@main.command("train")
@_train_options
def train_command(recipe: Path, overrides: tuple[str, ...], restart: bool, debug: bool) -> None:
    """Train the pipeline a RECIPE (TOML) describes; resumes from the latest checkpoint."""
    _run_train(recipe, overrides, restart, debug=debug)


@click.command("python -m pureml.train", context_settings={"help_option_names": ["-h", "--help"]})
@_train_options
def train_main(recipe: Path, overrides: tuple[str, ...], restart: bool, debug: bool) -> None:
    """Train the pipeline a RECIPE (TOML) describes; resumes from the latest checkpoint."""
    _short_warnings()
    _run_train(recipe, overrides, restart, debug=debug)


def _check_reader(reader: str | None) -> None:
    from . import registry
    from .training.build import register_defaults
    from .training.config import RecipeError

    register_defaults()
    if reader is not None and reader not in registry.readers:
        known = ", ".join(registry.readers.names())
        raise RecipeError("--reader", f"unknown reader {reader!r} (known: {known})")


def _reader_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--reader`` and ``--reader-option``: how ``evaluate`` and ``predict`` read DATA."""
    fn = click.option(
        "--reader-option",
        "options",
        multiple=True,
        metavar="NAME=VALUE",
        help="A key of the reader's recipe table (label=Disease), as in training. Repeatable.",
    )(fn)
    return click.option(
        "--reader",
        default=None,
        help="Reader name (default: standoff for a folder, jsonl for a .jsonl file).",
    )(fn)


# How evaluate() and predict() start the ValueErrors that are about one of the CLI's flags.
_FLAG_ERRORS = (("--reader-option", "reader option"), ("--default-attribute", "default attributes"))


def _flag_error(e: ValueError) -> Exception:
    """``e`` as the user's mistake in a flag (exit 2, naming it) where it is one, else ``e``."""
    from .training.config import RecipeError

    for flag, prefix in _FLAG_ERRORS:
        if str(e).startswith(prefix):
            return RecipeError(flag, str(e))
    return e


def _parse_pairs(option: str, items: tuple[str, ...]) -> dict[str, Any]:
    """``("a=1", "b=x")`` -> ``{"a": 1, "b": "x"}`` (values read as recipe values)."""
    from .training.config import RecipeError
    from .training.recipe import parse_value

    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise RecipeError(option, f"expected NAME=VALUE, got {item!r}")
        out[name.strip()] = parse_value(value.strip())
    return out


@friendly_errors
def _run_evaluate(
    model: Path,
    data: Path,
    as_json: bool,
    reader: str | None,
    defaults: tuple[str, ...],
    options: tuple[str, ...],
) -> None:
    from .training.evaluate import evaluate, format_scores

    _check_reader(reader)
    default_attributes = _parse_pairs("--default-attribute", defaults)
    reader_options = _parse_pairs("--reader-option", options)
    try:
        scores = evaluate(
            model,
            data,
            reader=reader,
            default_attributes=default_attributes or None,
            reader_options=reader_options or None,
        )
    except ValueError as e:
        raise _flag_error(e) from None
    if as_json:
        click.echo(json.dumps(scores, indent=1))
    else:
        click.echo(format_scores(scores))


@main.command("evaluate")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@_reader_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--default-attribute",
    "defaults",
    multiple=True,
    metavar="NAME=VALUE",
    help="An attribute value for the spans without one (Negation=false), as "
    "the recipe's default_attributes gave it in training. Repeatable.",
)
@debug_option
def evaluate_command(
    model: Path,
    data: Path,
    as_json: bool,
    reader: str | None,
    defaults: tuple[str, ...],
    options: tuple[str, ...],
    debug: bool,
):
    """Score a saved MODEL on DATA (a brat folder or a JSONL file)."""
    _run_evaluate(model, data, as_json, reader, defaults, options, debug=debug)


@friendly_errors
def _run_predict(
    model: Path,
    data: Path,
    output: Path,
    reader: str | None,
    options: tuple[str, ...],
    batch_size: str,
    overwrite: bool,
) -> None:
    import signal

    from .training.config import RecipeError
    from .training.predict import check_batch_size, predict

    _check_reader(reader)
    reader_options = _parse_pairs("--reader-option", options)
    size: int | str = int(batch_size) if batch_size.strip().isdigit() else batch_size

    def terminated(signum: int, frame: Any) -> None:  # as Ctrl-C: the temporary goes
        raise KeyboardInterrupt("terminated: the output was left as it was")

    signal.signal(signal.SIGTERM, terminated)
    try:
        check_batch_size(size)
    except (TypeError, ValueError) as e:
        raise RecipeError("--batch-size", str(e)) from None
    try:
        done = predict(
            model,
            data,
            output,
            reader=reader,
            reader_options=reader_options or None,
            batch_size=size,
            overwrite=overwrite,
        )
    except ValueError as e:
        raise _flag_error(e) from None
    click.echo(
        f"wrote {done['docs']} documents ({done['spans']} spans) to {output} "
        f"({done['words_per_s']:,.0f} words/s)"
    )
    if done["classified_input"] and not done["spans"]:
        click.echo(
            "note: this pipeline has no NER head: it classifies the input's spans, and the "
            "input has none",
            err=True,
        )


@main.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@_reader_options
@click.option(
    "--batch-size",
    default="2000 words",
    show_default=True,
    help='Inference batch budget: "N words" or a number of documents.',
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace OUTPUT if it exists (a folder only if it holds nothing but .txt/.ann files).",
)
@debug_option
def predict_command(
    model: Path,
    data: Path,
    output: Path,
    reader: str | None,
    options: tuple[str, ...],
    batch_size: str,
    overwrite: bool,
    debug: bool,
) -> None:
    """Annotate DATA (a brat folder, .txt files or a JSONL file) with a saved MODEL; write
    OUTPUT (a brat folder, or a .jsonl file), whole or not at all."""
    _run_predict(model, data, output, reader, options, batch_size, overwrite, debug=debug)


@friendly_errors
def _run_plot(run: Path, output: Path | None) -> None:
    from .training.plot import plot_run

    path = plot_run(run, output)
    click.echo(str(path))


@main.command("plot")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None)
@debug_option
def plot_command(run: Path, output: Path | None, debug: bool) -> None:
    """Draw the loss and validation curves of a RUN folder to a PNG (extra: plot)."""
    _run_plot(run, output, debug=debug)


@main.command("recipe-reference")
def recipe_reference_command() -> None:
    """Print the recipe reference (every key, type and default; registered factories)."""
    from .training.build import register_defaults
    from .training.recipe import recipe_reference

    register_defaults()  # the same factories a recipe can name, whatever was imported before

    click.echo(recipe_reference())


main.add_command(replay_command)
main.add_command(diff_command)

if __name__ == "__main__":
    main()
