"""Recipes: strict structuring, key-path errors, overrides, references, TOML round trip."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable

import pytest

from pureml.registry import Registry
from pureml.training.config import RecipeError, TrainConfig, structure, structure_recipe
from pureml.training.recipe import (
    apply_overrides,
    check_factory_table,
    dump_toml,
    escape_references,
    parse_recipe_text,
    recipe_diff,
    recipe_hash,
    recipe_reference,
    resolve_references,
    resolved_dict,
    split_key_path,
)

BASE = {
    "nlp": {"components": {"ner": {"factory": "x"}}},
    "train_data": {"main": {"data": {"factory": "r", "path": "p"}}},
}


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(RecipeError) as e:
        fn(*args, **kwargs)
    return str(e.value)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"train": {"max_steps": "forty"}}, "train.max_steps: expected int, got 'forty'"),
        ({"train": {"max_steps": True}}, "train.max_steps: expected int, got True"),
        ({"train": {"max_steps": 0}}, "train.max_steps: expected a positive number, got 0"),
        (
            {"train": {"maxsteps": 3}},
            "train.maxsteps: unknown key (did you mean 'max_steps'? expected one of: ",
        ),
        ({"train": {"grad_dev_policy": "sometimes"}}, "train.grad_dev_policy: expected one of"),
        (
            {"train": {"loss_scales": {"ner": "x"}}},
            "train.loss_scales.ner: expected float, got 'x'",
        ),
        ({"train_data": {"main": {}}}, "train_data.main.data: missing required key"),
        ({"train_data": {"main": {"data": {}, "batch_size": 1.5}}}, "train_data.main.batch_size"),
        (
            {"train_data": {"main": {"data": {}, "pipe_names": ["ner", 3]}}},
            "train_data.main.pipe_names[1]: expected str, got 3",
        ),
        ({"nlp": {"components": {"ner": 3}}}, "nlp.components.ner: expected a table, got 3"),
        ({"train": 5}, "train: expected a table, got 5"),
        # `--set train.output_dir=$OUT` with OUT unset: "" would be the working directory
        ({"train": {"output_dir": ""}}, "train.output_dir: expected a folder path, got ''"),
        ({"train": {"output_model_dir": " "}}, "train.output_model_dir: expected a folder path"),
    ],
)
def test_structuring_errors_name_the_key_path(patch, message):
    data = {**BASE, **patch}
    assert error_of(structure_recipe, data).startswith(message)


def test_missing_top_level_section():
    assert error_of(structure_recipe, {"train": {}}) == "nlp: missing required key"


def test_ints_become_floats_but_strings_do_not():
    cfg = structure({"grad_max_norm": 1}, TrainConfig, "train")
    assert cfg.grad_max_norm == 1.0 and isinstance(cfg.grad_max_norm, float)


def test_overrides_parse_toml_values_and_bare_strings():
    data = apply_overrides(
        BASE,
        [
            "train.max_steps=100",
            "train.output_dir=runs/x",
            "train.grad_max_norm=1e-1",
            'train.logger=["json"]',
            "train_data.main.batch_size=64 spans",
            "nlp.components.ner.window=5",
        ],
    )
    assert data["train"] == {
        "max_steps": 100,
        "output_dir": "runs/x",
        "grad_max_norm": 0.1,
        "logger": ["json"],
    }
    assert data["train_data"]["main"]["batch_size"] == "64 spans"
    assert BASE["train_data"]["main"].get("batch_size") is None  # input not modified


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.max_stepz=1",
            "train.max_stepz: no such key to override (did you mean 'max_steps'? expected one of:",
        ),
        ("nope.x=1", "nope: no such key to override"),
        ("train_data.other.batch_size=3", "train_data.other: no such key to override"),
        ("train.seed.x=1", "train.seed.x: no such key to override (int has no keys)"),
        (
            "train.loss_scales.ner=2.0",
            "train.loss_scales.ner: no such key to override "
            "(to add one, set the whole table: train.loss_scales={ner = ...})",
        ),
        ("train.max_steps", "train.max_steps: an override is written key.path=value"),
    ],
)
def test_override_of_missing_key_is_refused(override, message):
    assert error_of(apply_overrides, BASE, [override]).startswith(message)


def test_override_in_a_table_the_recipe_leaves_out_starts_from_its_default():
    """``scorer.speed`` is documented and the default scorer takes it, as
    ``train.grad_dev_policy`` is taken without a ``[train]`` key: the table the recipe leaves
    out is its default (``factory = "default"``) plus the override."""
    assert "scorer" not in BASE
    data = apply_overrides(BASE, ["scorer.speed=false", "scorer.batch_size=8"])
    assert data["scorer"] == {"factory": "default", "speed": False, "batch_size": 8}
    from pureml import registry
    from pureml.training.build import register_defaults

    register_defaults()
    scorer = structure_recipe(data).scorer
    assert check_factory_table(scorer, registry.scorers, "scorer")[1] == {
        "speed": False,
        "batch_size": 8,
    }
    # a key the scorer does not take is refused where the table is checked, by key path
    scorer = structure_recipe(apply_overrides(BASE, ["scorer.sped=false"])).scorer
    assert error_of(check_factory_table, scorer, registry.scorers, "scorer").startswith(
        "scorer.sped: unknown key for scorer 'default' (did you mean 'speed'?"
    )


def test_unknown_key_errors_list_what_is_accepted_and_documented():
    """One list per factory: the keys an unknown-key error names are those the table accepts
    and those the reference documents (a schedule's max, filled in when left out, was missing
    from the error)."""
    import re

    from pureml import registry
    from pureml.training.build import register_defaults
    from pureml.training.recipe import SUPPLIED, settable_params

    register_defaults()
    reference = recipe_reference()
    checked = 0
    for reg in (
        registry.components,
        registry.readers,
        registry.optimizers,
        registry.schedules,
        registry.scorers,
    ):
        for name in reg.names():
            factory = reg.get(name)
            try:
                check_factory_table({"factory": name, "zzz": 1}, reg, "t")
            except RecipeError as e:
                listed = e.message.split("expected one of: ")[1].rstrip(")").split(", ")
            else:
                continue  # takes **kwargs: any key
            row = next(r for r in reference.splitlines() if r.startswith(f"| `{name}` |"))
            documented = re.findall(r"`(\w+)` \(", row.rsplit(" | ", 1)[1])
            assert listed == documented == settable_params(factory, SUPPLIED[reg.kind]), name
            checked += 1
    assert checked >= 10


def test_the_whole_table_hint_keeps_the_entries_the_recipe_has():
    # the table set replaces the recipe's: a hint without them dropped the other scales
    base = {**BASE, "train": {"loss_scales": {"ner": 1.0, "status": 0.5}}}
    assert error_of(apply_overrides, base, ["train.loss_scales.span=2.0"]).endswith(
        "(to add one, set the whole table: train.loss_scales={ner = 1.0, status = 0.5, span = ...})"
    )


def test_quoted_key_paths():
    assert split_key_path('optimizer.groups."^ner\\.".lr') == ["optimizer", "groups", "^ner.", "lr"]


def test_references_resolve_after_overrides():
    text = (
        '[paths]\nroot = "/data"\n[train]\noutput_dir = "${paths.root}/run"\nseed = "${train.x}"\n'
    )
    assert error_of(parse_recipe_text, text) == "train.seed: unknown reference ${train.x}"
    text = text.replace('seed = "${train.x}"\n', "")
    data = parse_recipe_text(text, ["paths.root=/other"])
    assert data["train"]["output_dir"] == "/other/run"
    # a lone reference keeps the type of the value
    assert resolve_references({"a": {"n": 3}, "b": {"m": "${a.n}"}})["b"]["m"] == 3


@pytest.mark.parametrize(
    "value, message",
    [
        # Python's repr of a table or list would become a folder name like "{'factory': ...}-run"
        ("${optimizer}-run", "${optimizer} is a table: only a whole-string reference takes it"),
        ("${train.logger}/x", "${train.logger} is a list: only a whole-string reference takes it"),
        ("${}", "bad reference ${}: empty key in key path"),
        ('${"a}', 'bad reference ${"a}: unterminated quote in key path'),
        # a typo that would otherwise be a literal folder named "${paths.root/run"
        ("${paths.root/run", "unterminated reference: '${paths.root/run'"),
        ("${paths.root}/${x", "unterminated reference: '${paths.root}/${x'"),
    ],
)
def test_bad_references_name_the_key_path(value, message):
    data = {
        "paths": {"root": "/data"},
        "optimizer": {"factory": "adamw"},
        "train": {"logger": ["json"], "output_dir": value},
    }
    assert error_of(resolve_references, data) == f"train.output_dir: {message}"
    # ints and floats read as text inside a longer string; a whole reference keeps any value
    data["train"]["output_dir"] = "${paths.root}/${train.seed}-${train.lr}"
    data["train"] |= {"seed": 3, "lr": 1e-3, "copy": "${optimizer}"}
    resolved = resolve_references(data)["train"]
    assert resolved["output_dir"] == "/data/3-0.001" and resolved["copy"] == {"factory": "adamw"}


def test_dollar_dollar_brace_is_a_literal_dollar_brace():
    data = {
        "paths": {"root": "/data"},
        "train": {
            "pattern": "^$${not.a.key}\\d+$",  # escaped: never looked up
            "literal": "$${paths.root}",
            "both": "${paths.root}/$${paths.root}/${paths.root}",
            "open": "a$${b",  # a literal ${ needs no closing brace
            "dollars": "$$ and $$${paths.root}",  # $$ alone stays; $$${ is $ + a literal ${
        },
    }
    assert resolve_references(data)["train"] == {
        "pattern": "^${not.a.key}\\d+$",
        "literal": "${paths.root}",
        "both": "/data/${paths.root}//data",
        "open": "a${b",
        "dollars": "$$ and $${paths.root}",
    }
    # through a reference, the escape is read once: the literal is not resolved afterwards
    data["train"] = {"copy": "${paths.x}", "inside": "${paths.x}/y", "bad": "${paths.x"}
    data["paths"]["x"] = "$${paths.root}"
    assert error_of(resolve_references, data) == "train.bad: unterminated reference: '${paths.x'"
    del data["train"]["bad"]
    assert resolve_references(data)["train"] == {
        "copy": "${paths.root}",
        "inside": "${paths.root}/y",
    }


@pytest.mark.parametrize(
    "value, message",
    [
        ("$${ok} ${nope}", "unknown reference ${nope}"),
        ("$${ok} ${paths.root", "unterminated reference: '$${ok} ${paths.root'"),
        ("$${ok}-${paths}", "${paths} is a table: only a whole-string reference takes it"),
    ],
)
def test_an_escape_leaves_bad_references_named_by_key_path(value, message):
    data = {"paths": {"root": "/data"}, "train": {"output_dir": value}}
    assert error_of(resolve_references, data) == f"train.output_dir: {message}"


def test_an_escaped_override_is_literal_and_config_toml_reads_back_equal():
    text = '[paths]\nroot = "/data"\n[train]\noutput_dir = "${paths.root}/run"\n'
    data = parse_recipe_text(text, ["paths.root=/tmp/$${USER}"])
    assert data["train"]["output_dir"] == "/tmp/${USER}/run"
    # config.toml holds the resolved recipe escaped: read as a recipe, it is the same
    written = dump_toml(escape_references(data))
    assert 'output_dir = "/tmp/$${USER}/run"' in written
    assert parse_recipe_text(written) == data


def test_invalid_toml_names_the_line():
    message = error_of(parse_recipe_text, "[train]\nmax_steps = = 3\n", source="r.toml")
    assert message.startswith("r.toml: invalid TOML:") and "line 2" in message


def test_recipe_file_encoding(tmp_path):
    """A UTF-8 BOM (Windows editors write one) is not a TOML error at line 1; a file in another
    encoding is named with the line of its first bad byte."""
    from pureml.training.recipe import load_recipe

    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf[train]\nseed = 1\n")
    assert error_of(load_recipe, bom) == "nlp: missing required key"  # read past the BOM
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"[train]\nseed = 1\n# caf\xe9\n")
    assert error_of(load_recipe, latin1) == (
        f"cannot read recipe {latin1}:3: not UTF-8 text (byte 0xe9 at column 6): "
        "save the recipe as UTF-8"
    )


def test_dump_toml_round_trips_the_resolved_recipe():
    data = apply_overrides(BASE, ["train.validation_interval=5"])
    data["optimizer"] = {"factory": "adamw", "groups": {"^ner\\.": {"lr": 1e-3}, "emb": False}}
    data["paths"] = {"weird key": 'a "quoted" \\ value'}
    resolved = resolved_dict(structure_recipe(data))
    text = dump_toml(resolved)
    assert tomllib.loads(text) == resolved
    assert resolved["train"]["max_steps"] == 1000  # defaults are written out
    assert "output_model_dir" not in resolved["train"]  # unset stays unset (TOML has no null)


@pytest.mark.parametrize(
    "key, value",
    [
        ("entités", "médicament"),  # a French component name: TOML bare keys are ASCII only
        ("tab\tkey", "del \x7f and nul \x00"),  # control characters must be escaped
        ("line\nbreak", "bell \x07 esc \x1b"),
        ('quote"back\\slash', "☃ 😀 \u2028"),
    ],
)
def test_dump_toml_writes_any_key_and_string_readably(key, value):
    """A component, path or label with any characters makes a config.toml TOML reads back equal
    (a saved model whose component is named "entités" must load for ``pureml evaluate``)."""
    data = {"nlp": {"components": {key: {"factory": "ner_crf", "labels": [value]}}}, key: value}
    assert tomllib.loads(dump_toml(data)) == data


def test_hash_ignores_output_locations_only():
    a = resolved_dict(structure_recipe(BASE))
    b = resolved_dict(structure_recipe(apply_overrides(BASE, ["train.output_dir=elsewhere"])))
    c = resolved_dict(structure_recipe(apply_overrides(BASE, ["train.seed=1"])))
    assert recipe_hash(a) == recipe_hash(b) != recipe_hash(c)
    assert recipe_diff(a, c) == ["train.seed"]


def test_factory_tables_are_checked_against_the_signature():
    reg = Registry("component")

    @reg.register("head")
    def head(window: int, labels: list[str] | None = None, mode: str = "joint") -> None:
        """A head."""

    check_factory_table({"factory": "head", "window": 3}, reg, "nlp.components.ner")
    cases = [
        (
            {"factory": "head", "window": "forty"},
            "nlp.components.ner.window: expected int, got 'forty'",
        ),
        ({"factory": "head"}, "nlp.components.ner.window: missing required key for 'head'"),
        (
            {"factory": "head", "window": 3, "widow": 1},
            "nlp.components.ner.widow: unknown key for component 'head' "
            "(did you mean 'window'? expected one of: window, labels, mode)",
        ),
        (
            {"factory": "hed", "window": 3},
            "nlp.components.ner.factory: unknown component factory 'hed' (known: head)",
        ),
        ({"window": 3}, "nlp.components.ner.factory: missing required key (a component name)"),
        (
            {"factory": "head", "window": 3, "labels": ["a", 1]},
            "nlp.components.ner.labels[1]: expected str, got 1",
        ),
    ]
    for table, message in cases:
        assert error_of(check_factory_table, table, reg, "nlp.components.ner") == message


def test_factory_values_are_checked_against_the_toml_part_of_a_union():
    """``learning_rate: float | Schedule``: a recipe can only give the float, so a string is
    refused (float("3e-3") would have taken it); so are ``str | os.PathLike`` and bare ``list``."""
    reg = Registry("optimizer")

    @reg.register("opt")
    def opt(
        learning_rate: float | Callable[[float], float] = 1e-3,
        path: str | os.PathLike[str] = ".",
        attributes: dict[str, list] | list[str] | None = None,
    ) -> None:
        """An optimizer."""

    for good in (3e-3, 1, {}):
        key = "attributes" if good == {} else "learning_rate"
        check_factory_table({"factory": "opt", key: good}, reg, "optimizer")
    check_factory_table({"factory": "opt", "attributes": {"a": ["x", 1]}}, reg, "optimizer")
    cases = [
        ({"learning_rate": "3e-3"}, "optimizer.learning_rate: expected float, got '3e-3'"),
        ({"learning_rate": True}, "optimizer.learning_rate: expected float, got True"),
        ({"path": 3}, "optimizer.path: expected str, got 3"),
        ({"attributes": "status"}, "optimizer.attributes: expected dict[str, list[any]] | "),
    ]
    for kwargs, message in cases:
        got = error_of(check_factory_table, {"factory": "opt", **kwargs}, reg, "optimizer")
        assert got.startswith(message), got


def test_recipe_reference_lists_every_train_key():
    text = recipe_reference()
    for key in ("train.max_steps", "train.output_dir", "train.seed", "train_data.NAME.batch_size"):
        assert f"| `{key}` |" in text


def test_optimizer_groups_take_the_recipes_learning_rate():
    import torch

    from pureml.optim.base import learning_rates
    from pureml.training.build import build_optimizer

    # a group that only changes the weight decay trained at adamw's built-in 1e-3 instead
    make = build_optimizer(
        {
            "factory": "adamw",
            "learning_rate": 3e-3,
            "weight_decay": 0.01,
            "schedule": {"factory": "linear", "warmup_rate": 0.5},
            "groups": {"^ner": {"weight_decay": 0.0}, "^emb": {"lr": 1e-4}},
        }
    )
    names = ["ner.w", "emb.w", "other.w"]
    opt = make(names, 10)
    state = opt.init({n: torch.zeros(2) for n in names})
    lrs = {k: float(v) for k, v in learning_rates(state).items()}
    assert lrs["^ner"] == pytest.approx(3e-3)
    assert lrs["^emb"] == pytest.approx(1e-4)
    # the schedule is the default group's: it starts its warm-up at 0
    assert lrs["default"] == 0.0
