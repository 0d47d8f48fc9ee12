"""``python -m pureml.replay replay RUN --step N`` / ``python -m pureml.replay diff A B``."""

from pureml.replay.cli import main

main(prog_name="python -m pureml.replay")
