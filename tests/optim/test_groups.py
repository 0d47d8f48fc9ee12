"""Parameter groups: regex selection, frozen groups, per-group lr/schedule, errors."""

import pytest
import torch

from pureml import optim

NAMES = ["embedding.transformer.w", "embedding.proj.w", "ner.crf.transitions", "ner.linear.w"]


def _params():
    return {n: torch.full((2,), float(i + 1)) for i, n in enumerate(NAMES)}


def test_first_matching_selector_wins_and_false_freezes():
    opt = optim.param_groups(
        {
            r"^ner\.crf": {"name": "crf", "lr": 1e-2},
            r"^ner\.": {"name": "ner", "lr": 1e-3},
            r"transformer": False,
        },
        default={"lr": 1e-4},
        names=NAMES,
    )
    groups = {n: getattr(opt.group_of(n), "name", None) for n in NAMES}
    assert groups == {
        "embedding.transformer.w": "transformer",
        "embedding.proj.w": "default",
        "ner.crf.transitions": "crf",
        "ner.linear.w": "ner",
    }
    trainable, frozen = opt.partition(_params())
    assert list(frozen) == ["embedding.transformer.w"]
    state = opt.init(trainable)
    assert sorted(state) == ["crf", "default", "ner"]
    lrs = {k: float(v) for k, v in optim.learning_rates(state).items()}
    assert lrs == {"crf": 1e-2, "ner": 1e-3, "default": 1e-4}


def test_each_group_uses_its_own_lr_and_schedule():
    opt = optim.param_groups(
        {
            r"^ner\.": {"name": "ner", "lr": 0.1},
            r"^embedding": {
                "name": "emb",
                "lr": 1.0,
                "schedule": {"name": "linear", "warmup_rate": 0.5},
            },
        },
        default=False,
        optimizer="sgd",
        total_steps=4,
    )
    params = _params()
    trainable, frozen = opt.partition(params)
    assert frozen == {}
    state = opt.init(trainable)
    grads = {k: torch.ones_like(v) for k, v in trainable.items()}
    seen = []
    for _ in range(3):
        updates, state = opt.update(grads, state, trainable)
        seen.append((updates["ner.linear.w"][0].item(), updates["embedding.proj.w"][0].item()))
    # ner: constant 0.1; emb: linear warm-up 0 -> 1 over 2 steps, then decay to 0 at step 4
    assert seen == [
        (pytest.approx(-0.1), 0.0),
        (pytest.approx(-0.1), pytest.approx(-0.5)),
        (pytest.approx(-0.1), pytest.approx(-1.0)),
    ]


def test_eds_default_groups_and_schedules():
    opt = optim.eds_default(100, names=NAMES, transformer=r"\.transformer\.")
    trainable, frozen = opt.partition(_params())
    assert frozen == {}
    state = opt.init(trainable)
    grads = {k: torch.zeros_like(v) for k, v in trainable.items()}
    history = []
    for _ in range(20):
        _, state = opt.update(grads, state, trainable)
        history.append({k: float(v) for k, v in optim.learning_rates(state).items()})
    assert history[0] == {"transformer": 0.0, "default": 3e-4}
    assert history[5]["transformer"] == pytest.approx(5e-5 * 5 / 10)
    assert history[10] == {"transformer": 5e-5, "default": 3e-4}
    assert history[19]["default"] == pytest.approx(3e-4 * (1 - 9 / 90))
    # a model without a transformer has just the default group
    opt = optim.eds_default(100, names=["ner.w"], transformer=r"\.transformer\.")
    assert sorted(opt.init({"ner.w": torch.zeros(1)})) == ["default"]
    # no regex: no transformer group (the trainer passes its Hugging Face encoders' regex)
    opt = optim.eds_default(100, names=NAMES)
    assert {opt.group_of(n).name for n in NAMES} == {"default"}


def test_errors_name_the_culprit():
    with pytest.raises(ValueError, match=r"\^nope"):
        optim.param_groups({"^nope": {"lr": 1e-3}}, names=NAMES)
    with pytest.raises(ValueError, match=r"\^ner"):
        # every ner.* name is taken by the earlier selector
        optim.param_groups({"ner": {"lr": 1e-3}, "^ner": {"lr": 1e-2}}, names=NAMES)
    with pytest.raises(ValueError, match="'ner'.*-0.1|-0.1.*'ner'"):
        optim.param_groups({"^ner": {"name": "ner", "lr": -0.1}})
    with pytest.raises(ValueError, match="lamb"):
        optim.param_groups({"^ner": {"lr": 1e-3}}, optimizer="lamb")
    with pytest.raises(ValueError, match="warmdown"):
        optim.param_groups({"^ner": {"lr": 1e-3, "schedule": "warmdown"}})
    with pytest.raises(ValueError, match="needs total_steps"):
        optim.param_groups({"^ner": {"lr": 1e-3, "schedule": "linear"}})
    with pytest.raises(ValueError, match="learning rate"):
        optim.adamw(-1e-3)
    with pytest.raises(ValueError, match="not a regex"):
        optim.param_groups({"(": {"lr": 1e-3}})
    opt = optim.param_groups({"^ner": {"lr": 1e-3}})
    with pytest.raises(ValueError, match="ner"):
        opt.partition({"embedding.w": torch.zeros(1)})


def test_a_schedule_without_lr_peaks_at_the_optimizers_default_lr():
    # A group (or the default) with a schedule but no lr: the schedule's peak is the lr the group
    # would train at without the schedule (the optimizer's default), not linear's own max=1.0.
    for optimizer, lr in (("adamw", 1e-3), ("sgd", 1e-2)):
        opt = optim.param_groups(
            {
                r"^ner\.crf": {"name": "crf", "schedule": {"name": "linear", "warmup_rate": 0.0}},
                r"^ner\.": {"name": "ner", "schedule": "cosine"},
                r"transformer": {"name": "tr"},
            },
            default={"schedule": "constant"},
            optimizer=optimizer,
            total_steps=10,
        )
        state = opt.init(_params())
        lrs = {k: float(v) for k, v in optim.learning_rates(state).items()}
        assert lrs == {"crf": lr, "ner": lr, "tr": lr, "default": lr}, optimizer


def test_a_group_named_like_the_default_group_is_refused():
    # Its state would share the key "default" with the default group's: one group's lr and
    # moments silently replaced the other's.
    with pytest.raises(ValueError, match="two parameter groups are named 'default'"):
        optim.param_groups({r"^ner\.": {"name": "default", "lr": 1e-2}}, default={"lr": 1e-4})
    # without a default group the name is free
    opt = optim.param_groups({r"^ner\.": {"name": "default", "lr": 1e-2}}, default=False)
    assert opt.group_of("ner.linear.w").name == "default"


@pytest.mark.parametrize(
    "spec, optimizer, problem",
    [
        ({"lr": 1e-3, "weight_decay": -1}, "adamw", "weight_decay"),
        ({"lr": 1e-3, "b1": 1.5}, "adamw", "b1"),
        ({"lr": 0.1, "momentum": 1.0}, "sgd", "momentum"),
        ({"lr": "fast"}, "adamw", "'fast'"),
    ],
)
def test_a_bad_group_argument_names_the_group_in_one_line(spec, optimizer, problem):
    # with several groups in a recipe, "weight_decay must be >= 0" alone does not say where
    with pytest.raises(ValueError) as e:
        optim.param_groups({r"^ner\.": {"name": "ner", **spec}}, optimizer=optimizer)
    message = str(e.value)
    assert "'ner'" in message and problem in message and "\n" not in message, message


def test_learning_rates_of_a_group_named_with_digits():
    # the group name is the state's dict key, even when it reads like a tuple index
    opt = optim.param_groups(
        {r"^ner\.": {"name": "2", "lr": 0.5}}, default={"lr": 0.1}, optimizer="sgd"
    )
    state = opt.init(_params())
    assert {k: float(v) for k, v in optim.learning_rates(state).items()} == {
        "2": 0.5,
        "default": 0.1,
    }
    state = optim.set_learning_rate(state, 0.25, group="2")
    assert {k: float(v) for k, v in optim.learning_rates(state).items()} == {
        "2": 0.25,
        "default": 0.1,
    }


@pytest.mark.parametrize("default", [3e-4, True, "adamw"])
def test_a_default_that_is_not_a_dict_false_or_none_is_refused(default):
    # default=3e-4 (meant as its lr) silently became the optimizer's default lr
    with pytest.raises(ValueError, match="default"):
        optim.param_groups({r"^ner\.": {"lr": 1e-3}}, default=default)
