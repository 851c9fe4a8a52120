"""Plugins' own settings: declared beside each method, regularizer, dataset, model family and optimizer, set in a
spec's ``options`` tables, searchable as ``space.<name>``, and read from specs written before they moved."""

import re

import optuna
import pytest
import torch
from test_member_keys import plan_keys

from enstune.checks import load_checked, study_settings
from enstune.config import TRIAL_PARAMS, spec_from_dict, to_dict
from enstune.data._registry import DATASETS, dataset_settings
from enstune.errors import ConfigError
from enstune.methods import get_method, regularize
from enstune.methods._registry import METHODS
from enstune.models._registry import FAMILIES
from enstune.optim import OPTIMIZERS, Optimizer, make_optimizer
from enstune.regularizers import REGULARIZERS
from enstune.settings import Setting, describe
from enstune.study import grid_points, trial_config


def _declared():
    """(registry kind, entry, setting name, setting) for every setting any registered plugin declares."""
    out = []
    for name in METHODS.names():
        out += [("method", name, k, s) for k, s in get_method(name).options.items()]
    for name in REGULARIZERS.names():
        out += [("regularizer", name, k, s) for k, s in REGULARIZERS.get(name).settings.items()]
    for name in DATASETS.names():
        out += [("dataset", name, k, s) for k, s in dataset_settings(name).items()]
    for name in FAMILIES.names():
        out += [("family", name, k, s) for k, s in FAMILIES.get(name).settings.items()]
    for name in OPTIMIZERS.names():
        out += [("optimizer", name, k, s) for k, s in OPTIMIZERS.get(name).settings.items()]
    return out


DECLARED = _declared()


def test_every_kind_of_plugin_declares_settings():
    assert {kind for kind, *_ in DECLARED} == {"method", "regularizer", "dataset", "family", "optimizer"}


@pytest.mark.parametrize("kind, entry, name, setting", DECLARED, ids=[f"{k}-{e}-{n}" for k, e, n, _ in DECLARED])
def test_a_declared_setting_is_well_formed(kind, entry, name, setting):
    assert name.isidentifier() and name not in TRIAL_PARAMS, "a setting may not shadow a search parameter"
    assert setting.help and setting.kind in (bool, int, float, str)
    if setting.default is not None:  # None: unset, the plugin's own (timm's drop_path_rate)
        assert setting.check(name, setting.default) == setting.default
    with pytest.raises(ConfigError, match=rf"^{name} must be "):
        setting.check(name, [] if setting.kind is not str else 3)


def test_one_name_means_one_thing_within_every_registry_kind():
    seen: dict[tuple[str, str], Setting] = {}
    clashes = [(kind, name) for kind, _, name, s in DECLARED if seen.setdefault((kind, name), s) != s]
    assert clashes == []


def test_a_setting_checks_its_values():
    whole = Setting(64, "rows", low=4, high=2**20)
    assert whole.check("x", 20.0) == 20 and isinstance(whole.check("x", 20.0), int)
    with pytest.raises(ConfigError, match=re.escape("x must be a whole number in 4..1048576, got 2")):
        whole.check("x", 2)
    with pytest.raises(ConfigError, match="x must be a whole number in 4..1048576, got True"):
        whole.check("x", True)
    ratio = Setting(0.5, "a share", low=0.0, high=1.0)
    assert ratio.check("r", 1) == 1.0 and isinstance(ratio.check("r", 1), float)
    with pytest.raises(ConfigError, match="r must be a finite number in 0..1, got inf"):
        ratio.check("r", float("inf"))
    choice = Setting("auto", "where", choices=("workers", "device", "auto"))
    with pytest.raises(ConfigError, match="d must be one of workers, device or auto, got 'gpu'"):
        choice.check("d", "gpu")


# sse-rtd-demo's keys with ``subsample = 32`` as the spec's own field, computed by the version before settings moved
# into ``options``: members cached with it must be found again.
RTD_32 = ['7052bc737712bda994acbf29b0337a6b', 'e140fcdda63ce16ca4dccb265d8ad3ae', '09e07b0d3ec74eb3c96143ab62f0c7c5',
          '7ce5801ce3b46fdbae68b4eeaa254768', 'fe864587296c46e2334b69453eb24a5b']


def test_a_moved_setting_keeps_its_member_keys():
    assert plan_keys("sse-rtd-demo", ["options.subsample=32"]) == RTD_32
    assert plan_keys("sse-rtd-demo", ["subsample=32"]) == RTD_32  # as an earlier study file writes it
    # A value at its default is the value left out.
    assert plan_keys("sse-rtd-demo", ["options.subsample=64"]) == plan_keys("sse-rtd-demo")


def test_a_spec_stored_before_the_settings_moved_is_read_with_them_in_options():
    old = to_dict(load_checked("starsse-demo"))
    del old["options"], old["task"]["options"]
    old |= {"subsample": 32, "regularizer": "rtd"}
    # every Task field was stored, at its default too
    old["task"] |= {"partition": 1, "decode": "workers", "head": "new", "workers": 8, "drop_path_rate": None}
    old["task"]["dataset"] = "imagefolder"
    spec = spec_from_dict(old)
    # The old defaults are dropped (the dataset does not read them); a value away from one moves.
    assert spec.options == {"subsample": 32} and spec.task.options == {"decode": "workers"}
    assert spec_from_dict(to_dict(spec)) == spec
    old["task"] |= {"workers": 0, "drop_path_rate": 0.2, "model": "test_vit"}
    spec = spec_from_dict(old)
    assert spec.task.options == {"decode": "workers", "workers": 0, "drop_path_rate": 0.2}
    assert spec_from_dict(to_dict(spec)) == spec


def test_a_setting_without_a_default_names_its_type_and_checks_values_of_it():
    with pytest.raises(ValueError, match="names the type"):
        Setting(None, "a rate")
    rate = Setting(None, "a rate", low=0.0, high=0.99, of=float)
    assert rate.kind is float and rate.check("r", 0) == 0.0 and isinstance(rate.check("r", 0), float)
    with pytest.raises(ConfigError, match=re.escape("r must be a finite number in 0..0.99, got 1.0")):
        rate.check("r", 1)
    assert describe("task.options", {"rate": rate}) == ["# [task.options] rate = (unset)  (a finite number in 0..0.99): a rate"]


def test_an_option_axis_of_a_regularizer_reaches_its_term():
    spec = load_checked("sse-rtd-demo", ["sampler=\"tpe\"", "space.subsample={low=8, high=128}", "n_trials=2"])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    cfg = trial_config(study.ask(), spec)
    value = dict(cfg.options)["subsample"]
    assert isinstance(value, int) and 8 <= value <= 128  # a whole-number setting samples whole numbers
    jobs = regularize(get_method(cfg.method).plan(cfg), cfg)
    later = [j for j in jobs if j.regularizer == "rtd"]
    assert later and all(dict(j.reg_options) == ({"subsample": value} if value != 64 else {}) for j in later)


def test_an_option_axis_of_an_optimizer_reaches_torch():
    spec = load_checked("starsse-demo", ["space.nesterov.choices=[false, true]"])
    assert "nesterov" in study_settings(spec)
    made = {}
    for point in grid_points(spec)[:4]:
        cfg = trial_config(optuna.trial.FixedTrial(point), spec)
        opt = make_optimizer(torch.nn.Linear(2, 2), cfg.recipe)
        made[point["nesterov"]] = opt.defaults["nesterov"]
    assert made == {False: False, True: True}


def test_a_task_setting_is_refused_as_an_axis_with_the_reason():
    with pytest.raises(ConfigError, match=re.escape("space.decode: a setting of the task is one per study")):
        load_checked("starsse-demo", ["task.dataset=\"imagefolder\"", "space.decode.choices=[\"workers\", \"device\"]"])


def test_a_new_optimizer_with_its_own_searchable_setting_is_one_entry(monkeypatch):
    def rmsprop(groups, recipe, settings):
        return torch.optim.RMSprop(groups, lr=recipe.lr, alpha=settings["smoothing"], weight_decay=recipe.weight_decay)

    # The registry's own table, restored after the test: every other test sees the registered optimizers only.
    monkeypatch.setitem(OPTIMIZERS._entries, "rmsprop",
                        Optimizer(rmsprop, {"smoothing": Setting(0.99, "RMSprop's alpha", low=0.0, high=1.0)}))
    spec = load_checked("starsse-demo", ["finetune.optimizer=\"rmsprop\"", "space.smoothing.choices=[0.9, 0.99]"])
    alphas = {make_optimizer(torch.nn.Linear(2, 2), trial_config(optuna.trial.FixedTrial(p), spec).recipe)
              .defaults["alpha"] for p in grid_points(spec)}
    assert alphas == {0.9, 0.99}
    with pytest.raises(ConfigError, match="space.smoothing must be a finite number in 0..1, got 2"):
        load_checked("starsse-demo", ["finetune.optimizer=\"rmsprop\"", "space.smoothing.choices=[0.9, 2]"])
