"""Study files (`study create PATH.toml`), `templates show`, where a spec came from, and show's trial counts."""

import json
import tomllib

import optuna
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from cli_helpers import one_line_error
from enstune.cli import app
from enstune.config import load_template, to_dict
from enstune.storage import open_storage

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_a_study_file_on_a_base_is_stored_by_content_and_named_after_the_file(tmp_path):
    path = tmp_path / "my-demo.toml"
    path.write_text('base = "starsse-demo"\nmembers = 3\n[finetune]\nepochs = 4\n')
    made = invoke("study", "create", str(path))
    assert made.exit_code == 0, made.output
    path.unlink()  # a worker never needs the file: its content is the stored spec
    info = json.loads(invoke("study", "show", "my-demo", "--json").stdout)
    spec = info["spec"]
    assert spec["members"] == 3 and spec["finetune"]["epochs"] == 4 and spec["template"] == "starsse-demo"
    assert spec["source"] == "file my-demo.toml"
    assert spec["finetune"]["lr"] == load_template("starsse-demo").finetune.lr  # the base's other keys
    shown = invoke("study", "show", "my-demo")
    assert "made from starsse-demo with file my-demo.toml" in shown.stdout


def test_set_overrides_are_recorded_and_the_same_spec_again_is_the_same_study():
    sets = ["--set", "members=3", "--set", 'task.checkpoints=[]']
    assert invoke("study", "create", "starsse-demo", *sets).exit_code == 0
    again = invoke("study", "create", "starsse-demo", *sets)
    assert again.exit_code == 0 and "exists" in again.stdout
    spec = json.loads(invoke("study", "show", "starsse-demo", "--json").stdout)["spec"]
    assert spec["source"] == "--set members=3; --set task.checkpoints=[]"
    assert spec["description"] == load_template("starsse-demo").description


def test_a_template_as_shown_is_a_study_file_of_the_same_spec(tmp_path):
    shown = invoke("templates", "show", "sse-swint-sun397")
    assert shown.exit_code == 0, shown.output
    data = tomllib.loads(shown.stdout)
    assert "base" not in data and data["method"] == "sse" and data["finetune"]["epochs"] == 256  # the base merged
    path = tmp_path / "copy.toml"
    path.write_text(shown.stdout)
    copy, template = to_dict(load_template(str(path))), to_dict(load_template("sse-swint-sun397"))
    assert copy.pop("template") == "copy" and copy.pop("source") == "file copy.toml"
    template.pop("template"), template.pop("source")
    assert copy == template


def test_templates_without_a_subcommand_still_lists_them():
    listed = invoke("templates")
    assert listed.exit_code == 0 and " starsse-demo " in listed.stdout


def test_missing_unreadable_and_malformed_study_files_are_one_line(tmp_path):
    one_line_error(invoke("study", "create", str(tmp_path / "absent.toml")), "cannot read study file")
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    one_line_error(invoke("study", "create", str(folder)), "cannot read study file")
    bad = tmp_path / "bad.toml"
    bad.write_text("members = [\n")
    one_line_error(invoke("study", "create", str(bad)), "malformed TOML in study file")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('base = "no-such-template"\n')
    one_line_error(invoke("study", "create", str(unknown)), "unknown template 'no-such-template'")
    typo = tmp_path / "typo.toml"
    typo.write_text('base = "starsse-demo"\nmembrs = 3\n')
    one_line_error(invoke("study", "create", str(typo)), "unknown key membrs")
    one_line_error(invoke("templates", "show", str(tmp_path / "absent.toml")), "cannot read study file")
    assert optuna.get_all_study_names(open_storage(None)) == []


def test_show_counts_a_failed_trial_apart_from_the_budget(home):
    assert invoke("study", "create", "starsse-demo", "--set", "n_trials=1", "--set", "sampler=tpe").exit_code == 0
    study = optuna.load_study(study_name="starsse-demo", storage=open_storage(None))
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    study.add_trial(create_trial(value=0.5, params={}, distributions={}))  # its retry, completed
    shown = invoke("study", "show", "starsse-demo")
    assert "1/1 trials (and 1 failed, their points queued again)" in shown.stdout, shown.stdout
    info = json.loads(invoke("study", "show", "starsse-demo", "--json").stdout)
    assert (info["n_trials"], info["counted"], info["failed"]) == (2, 1, 1)


def test_paths_not_found_here_warn_in_one_line_each_and_the_study_is_made(home, tmp_path):
    import warnings

    from enstune import study as st

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name, created = st.create("starsse-cifar100", overrides=["task.data_dir=/cluster/only/cifar"])
    lines = [str(w.message) for w in caught]
    assert created and len(lines) == 2, lines
    assert lines[0].startswith("task.data_dir /cluster/only/cifar does not exist here")
    assert lines[1].startswith("task.checkpoints: 5 of 5 files not found here, e.g. " + str(home / "checkpoints"))
    assert all("\n" not in line for line in lines)
    (tmp_path / "cifar").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        st.create("starsse-cifar100", name="found", overrides=[f"task.data_dir={tmp_path / 'cifar'}",
                                                                 "task.checkpoints=[]"])
    assert [str(w.message) for w in caught] == []
    with warnings.catch_warnings(record=True) as caught:  # the demo reads no data directory
        warnings.simplefilter("always")
        st.create("starsse-demo")
    assert [str(w.message) for w in caught] == []


def test_a_warm_up_longer_than_training_is_refused_in_one_line():
    one_line_error(invoke("study", "create", "starsse-demo", "--set", "finetune.warmup_epochs=200"),
                   "finetune.warmup_epochs is 200, longer than the 160 epochs it warms up")
    one_line_error(invoke("study", "create", "finetune-demo", "--set", "finetune.warmup_epochs=30"),
                   "longer than the")  # the shortest epochs of the grid
    cycles = ["--set", "finetune.cycle_warmup=true", "--set", "finetune.warmup_epochs=50"]
    one_line_error(invoke("study", "create", "starsse-demo", *cycles),
                   "cycle_warmup warms up every cycle, but a cycle of 160 x 0.25 trains 40 epoch(s)")
    assert optuna.get_all_study_names(open_storage(None)) == []
