"""Real tasks end to end: datasets in their on-disk layouts, checkpoints in their release layouts,
members trained and evaluated at the backbone's own resolution."""

import json
import warnings

import optuna
import pytest
import timm
import torch
from typer.testing import CliRunner

from cli_helpers import TINY
from enstune import study as st
from enstune.checks import load_checked
from enstune.cli import app
from enstune.members import Workspace
from enstune.methods import get_method
from test_data import _tree, _write_cifar10

CPU = torch.device("cpu")


def _checkpoint(path, model_name: str, layout: str, seed: int = 0):
    """A pre-trained file of ``model_name`` with random weights, saved as its release would be."""
    torch.manual_seed(seed)
    state = timm.create_model(model_name, pretrained=False, num_classes=7).state_dict()
    obj = {"bare": state, "ddp": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
           "byol": {"model_state": state}}[layout]
    torch.save(obj, path)
    return state


def _shapes(model):
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[1:])))
    return seen


@pytest.mark.parametrize("model_name, size", [("test_resnet", 160), ("mobilenetv3_small_050", 224)])
def test_cifar_members_train_and_predict_at_the_backbones_resolution(tmp_path, home, model_name, size):
    _write_cifar10(tmp_path / "data", per_batch=4, n_test=6)
    _checkpoint(tmp_path / "ckpt.pth", model_name, "ddp")
    overrides = TINY + ["task.dataset=cifar10", f"task.model={model_name}", f"task.data_dir={str(tmp_path / 'data')!r}",
                        f"task.checkpoints=[{str(tmp_path / 'ckpt.pth')!r}]", "finetune.epochs=1",
                        "finetune.batch_size=8", "task.val_fraction=0.25"]
    spec = load_checked("starsse-demo", overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test's pickles are not the official files
        ws = Workspace(spec.task, home)
    assert ws.split("train", CPU).x.dtype == torch.uint8, "CIFAR stays uint8 at 32 px; batches are made at the input"
    cfg = st.trial_config(optuna.trial.FixedTrial({"lr_mult": 2, "epoch_mult": 1}), spec)
    job = get_method("starsse").plan(cfg)[0]
    model = ws.checkpoints.backbone(0)
    seen = _shapes(model)
    # Train and predict through the workspace's own path with this hooked model.
    ws.checkpoints.backbone = lambda index: model
    result = ws.run(job, None, CPU)
    assert set(seen) == {(3, size, size)} and len(seen) > 2
    assert ws.input_size == [3, size, size]
    assert result.val_probs.shape == (len(ws.data.val), 10)


def test_a_cached_body_gives_the_member_from_pretrained_would(tmp_path, home):
    _write_cifar10(tmp_path / "data", per_batch=2, n_test=2)
    state = _checkpoint(tmp_path / "ckpt.pth", "test_resnet", "byol")
    spec = load_checked("starsse-demo", TINY + ["task.dataset=cifar10", "task.model=test_resnet",
                                                f"task.data_dir={str(tmp_path / 'data')!r}",
                                                f"task.checkpoints=[{str(tmp_path / 'ckpt.pth')!r}]"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = Workspace(spec.task, home)
    models = []
    for _ in range(2):  # the first call reads the file, the second the body it kept
        torch.manual_seed(3)
        models.append(ws.checkpoints.backbone(0).state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert torch.equal(models[0]["conv1.0.weight"], state["conv1.0.weight"]), "the body is the file's"
    torch.manual_seed(4)
    other = ws.checkpoints.backbone(0).state_dict()
    assert not torch.equal(other["fc.weight"], models[0]["fc.weight"]), "each member draws its own head"


def test_a_study_runs_end_to_end_on_an_imagefolder_at_224(tmp_path, home):
    classes = ["ant", "bee", "cow"]
    _tree(tmp_path / "data" / "train", classes, 6)
    _tree(tmp_path / "data" / "test", classes, 2, seed=50)
    _checkpoint(tmp_path / "mobilenet.pth", "mobilenetv3_small_050", "bare")
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sets = ["task.dataset=imagefolder", "task.model=mobilenetv3_small_050", "task.workers=0",
            f"task.data_dir={str(tmp_path / 'data')!r}", f"task.checkpoints=[{str(tmp_path / 'mobilenet.pth')!r}]",
            "task.val_fraction=0.25", "members=2", "n_trials=1", "space.lr_mult.choices=[2]",
            "space.epoch_mult.choices=[1]", "finetune.epochs=1", "finetune.batch_size=4",
            "bn_images=8", "curve_images=8", "interp_points=3", 'evaluate=["calibration", "diversity", "soups"]']
    args = [a for s in sets for a in ("--set", s)]
    runner = CliRunner()
    created = runner.invoke(app, ["study", "create", "starsse-demo", "--name", "folders", "--storage", storage, *args])
    assert created.exit_code == 0, created.output
    ran = runner.invoke(app, ["study", "run", "folders", "--storage", storage])
    assert ran.exit_code == 0, ran.output
    shown = runner.invoke(app, ["study", "show", "folders", "--storage", storage, "--json"])
    (trial,) = json.loads(shown.stdout)["trials"]
    assert trial["state"] == "COMPLETE", trial
    attrs = trial["user_attrs"]
    assert attrs["input_size"] == [3, 224, 224]
    assert len(attrs["val_ens_acc"]) == 2 and 0 <= attrs["soup_test_acc"] <= 1


def test_preflight_refuses_a_checkpoint_of_another_network_before_taking_a_trial(tmp_path, home):
    classes = ["ant", "bee"]
    _tree(tmp_path / "data" / "train", classes, 3)
    _tree(tmp_path / "data" / "test", classes, 1, seed=9)
    _checkpoint(tmp_path / "vit.pth", "test_vit", "bare")
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sets = ["task.dataset=imagefolder", "task.model=test_resnet", "task.workers=0", "task.val_fraction=0.34",
            f"task.data_dir={str(tmp_path / 'data')!r}", f"task.checkpoints=[{str(tmp_path / 'vit.pth')!r}]"]
    runner = CliRunner()
    args = [a for s in sets for a in ("--set", s)]
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--storage", storage, *args]).exit_code == 0
    ran = runner.invoke(app, ["study", "run", "starsse-demo", "--storage", storage])
    assert ran.exit_code == 1 and "does not fit test_resnet" in ran.output and "missing keys (" in ran.output
    states = {t.state for t in optuna.load_study(study_name="starsse-demo", storage=storage).trials}
    assert states == {optuna.trial.TrialState.WAITING}, "no trial was taken"


def test_an_unreadable_image_is_named_counted_and_never_fails_the_trial(tmp_path, home):
    # 120 images a class, one of them a JPEG cut short: under the 1% a split may lose.
    classes = ["ant", "bee"]
    _tree(tmp_path / "data" / "train", classes, 120)
    _tree(tmp_path / "data" / "test", classes, 3, seed=50)
    whole = (tmp_path / "data" / "train" / "ant").iterdir().__next__().read_bytes()
    (tmp_path / "data" / "train" / "ant" / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    _checkpoint(tmp_path / "resnet.pth", "test_resnet", "bare")
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sets = ["task.dataset=imagefolder", "task.model=test_resnet", "task.workers=0", "task.val_fraction=0.25",
            f"task.data_dir={str(tmp_path / 'data')!r}", f"task.checkpoints=[{str(tmp_path / 'resnet.pth')!r}]",
            "members=2", "n_trials=1", "space.lr_mult.choices=[2]", "space.epoch_mult.choices=[1]",
            "finetune.epochs=1", "finetune.batch_size=16", 'evaluate=["calibration"]']
    args = [a for s in sets for a in ("--set", s)]
    runner = CliRunner()
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "dirty", "--storage", storage,
                               *args]).exit_code == 0
    ran = runner.invoke(app, ["study", "run", "dirty", "--storage", storage])
    assert ran.exit_code == 0, ran.output
    named = [line for line in ran.output.splitlines() if "cut.jpg" in line]
    assert len(named) == 1, ran.output
    (trial,) = json.loads(runner.invoke(app, ["study", "show", "dirty", "--storage", storage, "--json"]).stdout)["trials"]
    assert trial["state"] == "COMPLETE" and trial["user_attrs"]["unreadable_images"] == 1, trial["user_attrs"]
