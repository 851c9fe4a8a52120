import re

import pytest

from enstune.checks import load_checked
from enstune.config import StudySpec, apply_overrides, list_templates, load_template, spec_from_dict, to_dict
from enstune.errors import ConfigError

REQUIRED = {"starsse-demo", "sse-demo", "localde-demo", "globalde-demo", "finetune-demo",
            "starsse-cifar100", "sse-cifar100"}


def test_required_templates_ship():
    assert REQUIRED <= set(list_templates())


@pytest.mark.parametrize("name", list_templates())
def test_every_template_loads_and_round_trips(name):
    spec = load_checked(name)
    assert isinstance(spec, StudySpec) and spec.template == name
    assert spec_from_dict(to_dict(spec)) == spec


def test_base_template_is_merged():
    sse, star = load_template("sse-demo"), load_template("starsse-demo")
    assert sse.method == "sse" and star.method == "starsse"
    assert sse.finetune == star.finetune and sse.space == star.space


def test_cifar_templates_carry_the_papers_recipe():
    spec = load_template("starsse-cifar100")
    assert (spec.finetune.epochs, spec.finetune.lr, spec.finetune.weight_decay) == (25, 5e-3, 5e-4)
    assert spec.task.model == "resnet50.tv_in1k" and spec.members == 5 and len(spec.task.checkpoints) == 5
    assert {1, 2, 4, 8} <= set(spec.space["lr_mult"].choices)


def test_overrides_parse_toml_values_and_nested_keys():
    spec = load_template("starsse-demo", ["members=3", "finetune.lr=0.5", "space.lr_mult.choices=[1, 2]",
                                          "method=sse"])
    assert spec.members == 3 and spec.finetune.lr == 0.5 and spec.method == "sse"
    assert spec.space["lr_mult"].choices == (1, 2)


def test_apply_overrides_leaves_input_alone():
    data = {"finetune": {"lr": 1.0}}
    assert apply_overrides(data, ["finetune.lr=2.0"]) == {"finetune": {"lr": 2.0}}
    assert data == {"finetune": {"lr": 1.0}}


@pytest.mark.parametrize("override, message", [
    ("nope=1", "unknown key nope"),
    ("finetune.nope=1", "unknown key finetune.nope"),
    ("members=many", "members must be int"),
    ("members=0", "members must be in 1..100"),
    ("method=bogus", "unknown method 'bogus'"),
    ("space.lr_mult.choices=[0, 1]", "space.lr_mult must be numbers > 0"),
    ("space.epoch_mult.choices=[-1]", "space.epoch_mult must be numbers > 0"),
    ("space.volume.choices=[1]", "unknown search parameter 'volume'"),
    ("task.dataset=mnist", "unknown dataset 'mnist'"),
    ("finetune.lr=nan", "finetune.lr must be finite"),
    ("justtext", "--set expects key=value"),
    ("members=100000000000000000000", "members must be in 1..100"),
    ("seed=-1", "seed must be in 0..2**32-1"),
    ("prune_startup_trials=-1", "prune_startup_trials >= 0"),
    ("finetune.momentum=-1", "momentum >= 0"),
    ("finetune.optimizer=lamb", "unknown optimizer 'lamb'; known: adamw, sgd"),
    ("finetune.schedule=saw", "unknown schedule 'saw'"),
    ("finetune.betas=[0.9]", "finetune.betas must be a list of 2"),
    ("finetune.augment=mixup", "augment default, randaugment or none"),
    ("task.head=linear", "task.head must be new or zeroshot"),
    ("finetune.warmup_epochs=-1", "warmup_epochs >= 0"),
    ("finetune.label_smoothing=2", "0 <= label_smoothing < 1"),
    ("space.method.choices=[]", "space.method needs a list of choices"),
    ("space.seed.choices=[1.5]", "space.seed must be whole numbers"),
    ("space.lr_mult={low=1, high=2, log=true, step=0.5}", "a log range takes no step"),  # checked before the sampler
    ("template=other", "--set cannot change it"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_checked("starsse-demo", [override])


@pytest.mark.parametrize("template, overrides, message", [
    ("localde-demo", ["space.lr_mult.choices=[2, 4]"], "space.lr_mult: method local_de never reads it"),
    ("starsse-demo", ['space.method.choices=["local_de", "global_de"]'], "none of the methods local_de, global_de"),
    ("starsse-demo", ["space.alpha.choices=[0.1, 1]"], "space.alpha: alpha weights a regularizer"),
    ("starsse-demo", ["members=1"], "space.lr_mult: it acts on members 2..K and members is 1"),
    ("finetune-demo", ["members=3", "space.epoch_mult.choices=[1]"], "method finetune never reads it"),
])
def test_an_axis_no_method_reads_is_refused(template, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_checked(template, overrides)


def test_a_mixed_study_may_carry_the_axes_of_one_of_its_methods():
    spec = load_template("starsse-demo", ['space.method.choices=["local_de", "sse"]'])
    assert set(spec.space) == {"method", "lr_mult", "epoch_mult"}


def test_a_trial_samples_only_the_axes_its_method_reads():
    import optuna

    from enstune.study import trial_config

    spec = load_template("starsse-demo", ['sampler="tpe"', 'space.method.choices=["local_de", "starsse"]'])
    # a FixedTrial raises on any parameter it was not given, so Local DE must not ask for lr_mult
    lde = trial_config(optuna.trial.FixedTrial({"method": "local_de"}), spec)
    star = trial_config(optuna.trial.FixedTrial({"method": "starsse", "lr_mult": 4, "epoch_mult": 0.5}), spec)
    assert (lde.method, lde.lr_mult, lde.epoch_mult) == ("local_de", 1.0, 1.0)
    assert (star.method, star.lr_mult, star.epoch_mult) == ("starsse", 4, 0.5)


def test_unknown_template_lists_known():
    with pytest.raises(ConfigError, match="unknown template 'nope'; known: .*starsse-demo"):
        load_template("nope")
