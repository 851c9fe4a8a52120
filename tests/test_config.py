import re

import pytest

from enstune.checks import load_checked
from enstune.config import (Param, StudySpec, apply_overrides, list_templates, load_template, spec_from_dict,
                            to_dict)
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
    ("space.lr_mult.choices=[0, 1]", "space.lr_mult must be numbers > 0 and <= 1000, got [0, 1]"),
    ("space.epoch_mult.choices=[-1]", "space.epoch_mult must be numbers > 0 and <= 100"),
    ("space.volume.choices=[1]", "unknown search parameter 'volume'"),
    ("task.dataset=mnist", "unknown dataset 'mnist'"),
    ("finetune.lr=nan", "finetune.lr must be finite"),
    ("justtext", "--set expects key=value"),
    ("members=100000000000000000000", "members must be in 1..100"),
    ("seed=-1", "seed must be in 0..2**32-1"),
    ("prune_startup_trials=-1", "prune_startup_trials must be in 0..10**6, got -1"),
    ("finetune.momentum=-1", "finetune.momentum must be >= 0, got -1.0"),
    ("finetune.optimizer=lamb", "unknown optimizer 'lamb'; known: adamw, sgd"),
    ("finetune.schedule=saw", "unknown schedule 'saw'"),
    ("finetune.betas=[0.9]", "finetune.betas must be a list of 2"),
    ("finetune.augment=mixup", "finetune.augment must be default, randaugment or none, got 'mixup'"),
    ('task.options.head="linear"', "task.options.head: the dataset demo and the model demo_mlp read no such option"),
    ("task.head=zeroshot", "task.options.head: the dataset demo and the model demo_mlp read no such option"),
    ("finetune.warmup_epochs=-1", "finetune.warmup_epochs must be in 0..10000, got -1.0"),
    ("finetune.label_smoothing=2", "finetune.label_smoothing must be in [0, 1), got 2.0"),
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


# Values accepted at create that failed every trial at run time (or hung it): each is refused at
# create now, in one line that names the key and the value. Demo templates; a grid unless the
# case sets another sampler.
MSE = 'regularizer="mse"'  # a regularizer makes alpha an axis the methods read
TPE = 'sampler="tpe"'


@pytest.mark.parametrize("overrides, message", [
    # search axes: wrong types, NaN/inf, values the recipe cannot take
    (["space.lr_mult.choices=[nan]"], "space.lr_mult must be numbers > 0 and <= 1000, got [nan]"),
    (["space.lr_mult.choices=[inf]"], "space.lr_mult must be numbers > 0 and <= 1000, got [inf]"),
    (["space.lr_mult.choices=[1e308]"], "space.lr_mult must be numbers > 0 and <= 1000, got [1e+308]"),
    (["space.lr_mult.choices=[1, 1001]"], "space.lr_mult must be numbers > 0 and <= 1000, got [1, 1001]"),
    (["space.epoch_mult.choices=[1e18]"], "space.epoch_mult must be numbers > 0 and <= 100 (a cycle of at most 100"),
    (["space.epoch_mult.choices=[nan]"], "space.epoch_mult must be numbers > 0 and <= 100"),
    (["space.epochs.choices=[2.5]"], "space.epochs must be whole numbers in 1..10000, got [2.5]"),
    (["space.epochs.choices=[10, 10001]"], "space.epochs must be whole numbers in 1..10000, got [10, 10001]"),
    (["space.weight_decay.choices=[-1]"], "space.weight_decay must be finite numbers >= 0, got [-1]"),
    (["space.weight_decay.choices=[nan]"], "space.weight_decay must be finite numbers >= 0, got [nan]"),
    (["space.weight_decay.choices=['a']"], "space.weight_decay must be finite numbers >= 0, got ['a']"),
    (["space.lr.choices=[inf]"], "space.lr must be finite numbers > 0, got [inf]"),
    ([MSE, 'space.alpha.choices=["a"]'], "space.alpha must be finite numbers, got ['a']"),
    ([MSE, "space.alpha.choices=[nan]"], "space.alpha must be finite numbers, got [nan]"),
    ([MSE, "space.alpha.choices=[0.1, true]"], "space.alpha must be finite numbers, got [0.1, True]"),
    (['space.method.choices=["sse", 1]'], "space.method must be method names, got ['sse', 1]"),
    # multipliers that overflow or underflow the cycle's lr, combined with the ×1 recipe
    (["finetune.lr=1e306", "space.lr_mult.choices=[1000]"],
     "space.lr_mult: a cycle's lr must be finite and > 0, got lr × lr_mult = 1e+306 × 1000 = inf"),
    (["space.lr.choices=[1e306]", "space.lr_mult.choices=[0.5, 1000]"], "a cycle's lr must be finite and > 0"),
    (["finetune.lr=1e-320", "space.lr_mult.choices=[1e-10]"], "a cycle's lr must be finite and > 0, got lr × lr_mult"),
    # choices and ranges
    (["space.lr_mult.choices=[1, 1]"], "space.lr_mult lists a choice twice, got [1, 1]"),
    (["space.lr_mult.choices=[2, 2.0]"], "space.lr_mult lists a choice twice, got [2, 2.0]"),
    (['space.method.choices=["sse", "sse"]'], "space.method lists a choice twice"),
    (["space.lr_mult={choices=[1, 2], log=true}"], "space.lr_mult: log and step shape a low/high range, not choices"),
    (["space.lr_mult={choices=[1, 2], step=1}"], "space.lr_mult: log and step shape a low/high range, not choices"),
    ([TPE, "space.lr_mult={low=1, high=2, step=0}"], "space.lr_mult.step must be > 0, got 0.0"),
    ([TPE, "space.lr_mult={low=1, high=2, step=-0.5}"], "space.lr_mult.step must be > 0, got -0.5"),
    ([TPE, "space.weight_decay={low=0, high=0.1, log=true}"],
     "space.weight_decay: a log range needs low > 0, got low=0.0"),
    ([TPE, MSE, "space.alpha={low=-1, high=1, log=true}"], "space.alpha: a log range needs low > 0, got low=-1.0"),
    ([TPE, "space.lr_mult={low=1, high=2000}"], "space.lr_mult must be numbers > 0 and <= 1000, got [1.0, 2000.0]"),
    ([TPE, "space.epochs={low=1, high=5}"], "space.epochs takes a list of choices (a low/high range samples floats)"),
    ([f"space.seed.choices={list(range(1000))}"], "space: a grid of at most 10000 points, got 16000"),
    # the spec's scalars
    (["interp_points=1000000000"], "interp_points must be in 2..1000, got 1000000000"),
    (["n_trials=1000001"], "n_trials must be in 1..10**6, got 1000001"),
    (["prune_startup_trials=10000000"], "prune_startup_trials must be in 0..10**6"),
    (["bn_images=1000000000000000"], "bn_images must be in 1..10**7, got 1000000000000000"),
    (["curve_images=100000000"], "curve_images must be in 1..10**7"),
    (["ood_images=100000000"], "ood_images must be in 0..10**7 (0: whole sets)"),
    (['regularizer="rtd"', "options.subsample=1000000000"], "options.subsample must be a whole number in 4..1048576"),
    (['regularizer="rtd"', "space.subsample.choices=[3, 64]"], "space.subsample must be a whole number in 4..1048576"),
    (["options.nesterov=true", "finetune.momentum=0"], "finetune.optimizer sgd: Nesterov momentum requires a momentum"),
    (['evaluate=["soups", "soups"]'], "evaluate lists an evaluator twice, got ['soups', 'soups']"),
    (["heartbeat=0"], "heartbeat must be in 1..86400 seconds, got 0"),
    (["heartbeat=-5"], "heartbeat must be in 1..86400 seconds, got -5"),
    (["heartbeat=100000"], "heartbeat must be in 1..86400 seconds, got 100000"),
    (["heartbeat=1.5"], "heartbeat must be int, got 1.5"),
    # the task
    (["task.split_seed=-1"], "task.split_seed must be in 0..2**32-1, got -1"),
    (["task.split_seed=18446744073709551616"], "task.split_seed must be in 0..2**32-1, got 18446744073709551616"),
    # a streamed dataset's loader workers, once a field of every task: the demo, in memory, reads none
    (["task.workers=0"], "task.options.workers: the dataset demo and the model demo_mlp read no such option"),
    (['task.data_dir="{data}/x"'],
     "task.data_dir: {home} is the only placeholder (write {{ and }} for a brace), got '{data}/x'"),
    (['task.data_dir="{home:>10}"'], "task.data_dir: {home} is the only placeholder"),  # a Path takes no format spec
    (['task.checkpoints=["{home}/a.pt", "{}/b.pt"]'], "task.checkpoints[1]: {home} is the only placeholder"),
    (['task.checkpoints=["{home/a.pt"]'], "task.checkpoints[0]: {home} is the only placeholder"),
    (['task.checkpoints=[""]'], "task.checkpoints[0] must be a path, got ''"),
    # the ×1 recipe
    (["finetune.epochs=1000000000"], "finetune.epochs must be in 1..10000, got 1000000000"),
    (["finetune.batch_size=1099511627776"], "finetune.batch_size must be in 2..2**20 (BatchNorm cannot train on "
                                            "one example), got 1099511627776"),
    (["finetune.batch_size=1"], "finetune.batch_size must be in 2..2**20 (BatchNorm cannot train on one example), "
                                "got 1"),
    (["finetune.warmup_epochs=1e300"], "finetune.warmup_epochs must be in 0..10000, got 1e+300"),
    (["finetune.warmup_steps=10000000000"], "finetune.warmup_steps must be in 0..10**9"),
    (["finetune.lr=1" + "0" * 400], "finetune.lr must be finite, got 1000000000"),  # was an OverflowError
    # --set itself
    (["space.lr_mult.choices=[1, 2"], "--set space.lr_mult.choices: malformed TOML value '[1, 2' (Unclosed array"),
    (['description="unterminated'], "--set description: malformed TOML value"),
    (["members=3\nn_trials=99"], "--set members: one TOML value expected"),
    (["space..lr_mult.choices=[1]"], "--set space..lr_mult.choices: a dotted key has an empty part"),
])
def test_values_a_worker_would_fail_on_are_refused_at_create(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_checked("starsse-demo", overrides)


def test_a_task_lists_every_checkpoint_its_plan_starts_from():
    with pytest.raises(ConfigError, match=re.escape("task.checkpoints lists 1 file, and method global_de with "
                                                    "members=3 needs 3")):
        load_checked("globalde-demo", ['task.checkpoints=["{home}/a.pt"]', "members=3"])
    with pytest.raises(ConfigError, match="method global_de with members=3 needs 3"):
        load_checked("starsse-demo", ['space.method.choices=["starsse", "global_de"]', "members=3",
                                      'task.checkpoints=["{home}/a.pt", "{home}/b.pt"]'])
    assert load_checked("globalde-demo", ['task.checkpoints=["a.pt", "b.pt", "c.pt"]', "members=3"])
    assert load_checked("starsse-demo", ['task.checkpoints=["a.pt"]'])  # member 1 alone starts from a checkpoint


def _by_hand(changes: dict, overrides: tuple[str, ...] = (TPE,)) -> StudySpec:
    """starsse-demo with fields replaced in Python, as a caller of the library may: no TOML, no ``build``."""
    import dataclasses

    spec = load_template("starsse-demo", list(overrides))
    for key, value in changes.items():
        if "." in key:
            part, field = key.split(".")
            value = dataclasses.replace(getattr(spec, part), **{field: value})
            key = part
        spec = dataclasses.replace(spec, **{key: value})
    return spec


NAN = float("nan")


@pytest.mark.parametrize("changes, message", [
    ({"members": True}, "members must be int, got True"),
    ({"interp_points": True}, "interp_points must be int, got True"),
    ({"n_trials": 10**7}, "n_trials must be in 1..10**6"),
    ({"heartbeat": "60"}, "heartbeat must be int, got '60'"),
    ({"evaluate": ("soups", 3)}, "evaluate[1] must be str, got 3"),
    ({"task.checkpoints": ("a.pt", 1)}, "task.checkpoints[1] must be str, got 1"),
    ({"task.checkpoints": "a.pt"}, "task.checkpoints must be a list, got 'a.pt'"),
    ({"task.val_fraction": NAN}, "task.val_fraction must be finite, got nan"),
    ({"task.split_seed": True}, "task.split_seed must be int, got True"),
    ({"finetune.epochs": 2.5}, "finetune.epochs must be int, got 2.5"),
    ({"finetune.lr": float("inf")}, "finetune.lr must be finite, got inf"),
    ({"space": {"lr": Param(low=NAN, high=1.0)}}, "space.lr.low must be finite, got nan"),
    ({"space": {"lr_mult": Param(low=1.0, high=2.0, step=0.0)}}, "space.lr_mult.step must be > 0, got 0.0"),
    ({"space": {"lr_mult": Param(low=1.0, high=2.0, step=-1.0)}}, "space.lr_mult.step must be > 0, got -1.0"),
    ({"space": {"lr_mult": Param(low=1.0, high=2.0, log=1)}}, "space.lr_mult.log must be bool, got 1"),
    ({"space": {"epochs": Param(low=1, high=5, step=0.5)}}, "space.epochs takes a list of choices"),
    ({"space": {"epoch_mult": Param(choices=(1e18,))}}, "space.epoch_mult must be numbers > 0 and <= 100"),
])
def test_a_spec_built_by_hand_is_checked_like_one_from_toml(changes, message):
    from enstune.checks import check_spec
    from enstune.config import validate

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_spec(validate(_by_hand(changes)))


@pytest.mark.parametrize("overrides", [
    ["space.lr_mult.choices=[0.25, 8]"],
    ["space.lr_mult.choices=[0.001, 1000]", "space.epoch_mult.choices=[0.001, 100]"],
    ["seed=4294967295", "task.split_seed=4294967295", "space.seed.choices=[0, 4294967295]"],
    ["finetune.epochs=10000", "space.epoch_mult.choices=[100]", "finetune.warmup_epochs=10000"],
    ["space.epochs.choices=[1, 10000]", "space.weight_decay.choices=[0, 5e-4]", "space.lr.choices=[1e-5, 1]"],
    ["heartbeat=1"], ["heartbeat=86400"], ["interp_points=2"], ["interp_points=1000"],
    [TPE, "n_trials=1000000", "prune_startup_trials=1000000"],
    [TPE, "space.lr={low=1e-4, high=0.1, log=true}", "space.lr_mult={low=0.5, high=4, step=0.5}"],
    [MSE, "space.alpha.choices=[-31.6, 0, 31.6]"],
    ['task.data_dir="{home}/data"', 'task.checkpoints=["{home}/{{braces}}.pt"]'],
    ["bn_images=10000000", "curve_images=1", "ood_images=0"],
    ['regularizer="rtd"', "options.subsample=4", "space.subsample.choices=[4, 1048576]", "options.nesterov=true"],
    [f"space.seed.choices={list(range(625))}"],  # a grid of exactly 10000 points
])
def test_edge_values_are_accepted(overrides):
    spec = load_checked("starsse-demo", overrides)
    assert spec_from_dict(to_dict(spec)) == spec


@pytest.mark.parametrize("overrides, said", [
    (["task.workers=100000"], "task.options.workers must be a whole number in 0..256, got 100000"),
    (["task.options.workers=-1"], "task.options.workers must be a whole number in 0..256, got -1"),
    (["task.options.workers=2.5"], "task.options.workers must be a whole number in 0..256, got 2.5"),
])
def test_a_streamed_datasets_loader_workers_are_checked_at_create(overrides, said):
    with pytest.raises(ConfigError) as info:
        load_checked("starsse-sun397", overrides)
    assert str(info.value) == said


def test_loader_workers_given_where_the_task_once_held_them_are_read_as_the_datasets_option():
    assert load_checked("starsse-sun397", ["task.workers=0"]).task.options == {"partition": 1, "workers": 0}
    assert load_checked("starsse-sun397", ["task.workers=8"]).task.options == {"partition": 1}  # the default
    assert load_checked("starsse-sun397", ["task.options.workers=256"]).task.options == {"partition": 1, "workers": 256}


def test_heartbeat_is_a_study_property_with_a_default():
    assert load_template("starsse-demo").heartbeat == 60
    assert load_template("starsse-demo", ["heartbeat=5"]).heartbeat == 5


def test_a_whole_number_range_by_hand_samples_whole_numbers():
    import optuna

    from enstune.config import validate
    from enstune.study import trial_config

    spec = validate(_by_hand({"space": {"epochs": Param(low=1, high=5)}}, (TPE, "method=finetune", "members=1")))
    cfg = trial_config(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), spec)
    assert isinstance(cfg.recipe.epochs, int) and 1 <= cfg.recipe.epochs <= 5


def test_a_methods_option_is_a_search_axis():
    import optuna

    from enstune.study import grid_points, trial_config

    spec = load_checked("distilled-demo", ["space.beta.choices=[0.2, 0.6]"])
    points = grid_points(spec)
    assert sorted({p["beta"] for p in points}) == [0.2, 0.6] and len(points) == 4  # x 2 seeds
    # The axis sets the option for its trial, over the template's options.beta = 0.2.
    options = [dict(trial_config(optuna.trial.FixedTrial(p), spec).options) for p in points]
    assert sorted(o["beta"] for o in options) == [0.2, 0.2, 0.6, 0.6] and {o["tau"] for o in options} == {3.0}


@pytest.mark.parametrize("template, overrides, message", [
    ("distilled-demo", ["space.beta.choices=[0.2, 1.6]"], "space.beta must be a finite number in 0..1, got 1.6"),
    ("starsse-demo", ["space.beta.choices=[0.2]"], "unknown search parameter 'beta'; expected one of: method, "
                                                   "lr_mult, epoch_mult, alpha, freeze, scale, seed, epochs, lr, "
                                                   "weight_decay or an option of this study's plugins: div_color"),
    ("starsse-demo", ["space.partition.choices=[1, 2]"], "unknown search parameter 'partition'"),
    ("distilled-demo", ["space.tau.choices=[1, 0]"], "space.tau = 0: options.beta must be in [0, 1] and options.tau > 0"),
    ("distilled-demo", ['space.tau.choices=["x"]'], "space.tau must be a finite number >= 0, got 'x'"),
    ("distilled-demo", ["space.2x.choices=[1]"], "unknown search parameter '2x'"),
])
def test_an_option_axis_is_checked_where_the_study_is_created(template, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_checked(template, overrides)
