"""README.md stays true: its Python examples run, and its recipe reference is the generated one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_setup_commands_come_first_and_ci_runs_the_test_command():
    text = README.read_text()
    commands = re.findall(r"```bash\n(.*?)```", text, flags=re.S)[:2]
    assert commands[0].strip() == (
        "pip install torch==2.13.0 -e . && python -m pureml.train recipes/quickstart.toml"
    )
    test_command = commands[1].strip()
    # CI installs the extras too, so the TensorBoard logger and `pureml plot` are tested for real
    install = 'torch==2.13.0 -e ".[dev,tensorboard,plot]"'
    assert test_command.startswith(f"pip install {install} && python -m pytest")
    ci = (README.parent / ".ci" / "run").read_text()
    assert f"pip install -q {install}" in ci
    assert "python -m pytest -q tests" in ci


def test_python_examples_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    assert len(blocks) >= 3
    for block in blocks:  # the stream example reads the corpus the first one wrote
        exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    # 30 steps of the example already find some of the note's entities, with the right label
    found = {
        "'chest pain', 'problem'",
        "'metformin', 'drug'",
        "'type 2 diabetes mellitus', 'problem'",
    }
    assert any(f"({entity})" in out for entity in found), out
    assert (tmp_path / "artifacts/python-quickstart/model-last").is_dir()


def test_recipe_reference_section_is_generated():
    text = README.read_text()
    section = text.split("<!-- recipe-reference:start -->\n", 1)[1].split(
        "<!-- recipe-reference:end -->", 1
    )[0]
    # a fresh process: factories other tests register must not leak into the reference
    generated = subprocess.run(
        [sys.executable, "-m", "pureml.cli", "recipe-reference"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert section == generated, "run: pureml recipe-reference and paste it into README.md"
