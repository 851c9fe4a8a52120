"""Studies stored by an earlier enstune stay readable when today's checks grow stricter."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
from typer.testing import CliRunner

from cli_helpers import TINY_SET
from enstune import study as st
from enstune.cli import app
from enstune.storage import open_storage

runner = CliRunner()
ENSTUNE = str(Path(sys.executable).parent / "enstune")


def _store(name: str, change) -> None:
    """Rewrite study ``name``'s stored spec as an earlier version could have stored it."""
    study = optuna.load_study(study_name=name, storage=open_storage(None))
    spec = study.user_attrs[st.SPEC_ATTR]
    change(spec)
    study.set_user_attr(st.SPEC_ATTR, spec)


def test_a_spec_todays_checks_refuse_is_shown_and_run_with_a_warning(home):
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "old", *TINY_SET,
                               "--set", "n_trials=1", "--set", "evaluate=[]"]).exit_code == 0
    # Today a cycle of one example per batch is refused at create (BatchNorm cannot train on it);
    # a study stored before that rule still holds its spec.
    _store("old", lambda spec: spec["finetune"].update(batch_size=1))
    # The console script, as a user meets it: the warning is one line on stderr.
    shown = subprocess.run([ENSTUNE, "study", "show", "old", "--json"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["spec"]["finetune"]["batch_size"] == 1
    assert shown.stderr.strip().splitlines() == [
        "warning: study 'old' was created by an earlier enstune and today's checks refuse its spec (finetune.batch_size "
        "must be in 2..2**20 (BatchNorm cannot train on one example), got 1); it is read as stored"]


def test_a_spec_whose_keys_no_longer_fit_is_one_line(home):
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "odd", *TINY_SET]).exit_code == 0
    _store("odd", lambda spec: spec.update(no_such_key=1))
    shown = runner.invoke(app, ["study", "show", "odd"])
    assert shown.exit_code == 1 and "no_such_key" in shown.stderr and "Traceback" not in shown.output


def test_a_spec_stored_before_plugin_settings_moved_runs_with_them_in_options(home):
    create = ["study", "create", "sse-rtd-demo", "--name", "moved", *TINY_SET, "--set", "n_trials=1",
              "--set", "evaluate=[]", "--set", "sampler=\"tpe\"", "--set", "space={}"]
    assert runner.invoke(app, create).exit_code == 0

    def earlier(spec):  # every Task field and the spec's own RTD field were stored
        del spec["options"], spec["task"]["options"]
        spec["task"] |= {"partition": 1, "decode": "auto", "head": "new", "workers": 8, "drop_path_rate": None}
        spec["subsample"] = 16

    _store("moved", earlier)
    shown = runner.invoke(app, ["study", "show", "moved", "--json"])
    assert shown.exit_code == 0, shown.output
    assert "warning" not in shown.stderr  # migrated, not merely tolerated
    spec = json.loads(shown.stdout)["spec"]
    assert spec["options"] == {"subsample": 16} and spec["task"]["options"] == {}
    ran = runner.invoke(app, ["study", "run", "moved"])
    assert ran.exit_code == 0, ran.output
    trial = optuna.load_study(study_name="moved", storage=open_storage(None)).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
