"""Loading a model or a checkpoint never unpickles: a planted pickle payload is refused (or
ignored), and the file its unpickling would create never appears."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import pytest

from . import forkcli
from .conftest import KILL, write


class Payload:
    """Unpickling this creates ``marker`` (what arbitrary code could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_bytes(marker) -> bytes:
    data = pickle.dumps(Payload(marker))
    pickle.loads(data).close()  # the payload works: it does create the marker...
    marker.unlink()  # ...so its absence later means nobody unpickled it
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("trained")
    result = forkcli.train(write(KILL, folder, corpus), "--set", "train.max_steps=6", cwd=folder)
    assert result.code == 0, result.stderr
    return folder / "out"


def test_pickle_in_place_of_the_weights_is_refused(tmp_path, corpus, trained):
    model, marker = tmp_path / "model", tmp_path / "PWNED"
    shutil.copytree(trained / "model-last", model)
    (model / "model.safetensors").write_bytes(payload_bytes(marker))
    result = forkcli.run_cli(["evaluate", str(model), str(corpus / "dev")], cwd=tmp_path)
    assert result.code != 0 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "model.safetensors" in lines[0], result.stderr
    assert not marker.exists()


def test_pickles_beside_the_weights_are_never_loaded(tmp_path, corpus, trained):
    model, marker = tmp_path / "model", tmp_path / "PWNED"
    shutil.copytree(trained / "model-last", model)
    data = payload_bytes(marker)
    for name in ("pytorch_model.bin", "model.pt", "model.pkl", "ner/weights.bin"):
        (model / name).parent.mkdir(exist_ok=True)
        (model / name).write_bytes(data)
    result = forkcli.run_cli(["evaluate", str(model), str(corpus / "dev"), "--json"], cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "ner" in json.loads(result.stdout)
    assert not marker.exists()


def test_pickle_in_a_checkpoint_is_refused(tmp_path, corpus, trained):
    """Even with a manifest that matches (an attacker can rewrite it), the state is read with
    safetensors only: the resume stops with one line, nothing unpickled."""
    out, marker = tmp_path / "out", tmp_path / "PWNED"
    shutil.copytree(trained, out)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text((trained / "config.toml").read_text().replace(str(trained), str(out)))
    latest = sorted((out / "checkpoints").iterdir())[-1]
    tensors = latest / "state" / "state.safetensors"
    tensors.write_bytes(payload_bytes(marker))
    manifest = json.loads((latest / "MANIFEST.json").read_text())
    manifest["state/state.safetensors"] = hashlib.sha256(tensors.read_bytes()).hexdigest()
    (latest / "MANIFEST.json").write_text(json.dumps(manifest))
    result = forkcli.train(recipe, cwd=tmp_path)
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: cannot read checkpoint tensors")
    assert not marker.exists()


def test_pickle_as_hugging_face_weights_is_refused(tmp_path, corpus):
    """An ``hf_transformer`` folder whose only weights are a pickled ``pytorch_model.bin``."""
    model, marker = tmp_path / "bert", tmp_path / "PWNED"
    model.mkdir()
    config = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": 50,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 16,
    }
    (model / "config.json").write_text(json.dumps(config))
    (model / "pytorch_model.bin").write_bytes(payload_bytes(marker))
    embedding = 'factory = "scratch_encoder"\nwidth = 16\ndepth = 1\nrows = [500, 100, 250, 100]'
    recipe = write(
        KILL,
        tmp_path,
        corpus,
        **{embedding: f'factory = "hf_transformer"\nmodel = "{model}"\nwindow = 8\nstride = 4'},
    )
    result = forkcli.train(recipe, cwd=tmp_path)
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"error: nlp.components.embedding.model: no safetensors weights in {model}: pureml does not load pickled weights "
        "(pytorch_model.bin); convert them with save_pretrained(safe_serialization=True)"
    )
    assert not marker.exists()
