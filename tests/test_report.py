"""Pictures: charts from trial rows, PNG files, and graphs and a note in optuna-dashboard's storage."""

import optuna
import optuna_dashboard
from optuna.artifacts import get_all_artifact_meta
from optuna.storages.journal import JournalFileBackend
from typer.testing import CliRunner

from cli_helpers import TINY_SET
from enstune.cli import app
from enstune.regimes import classify
from enstune.report import charts, to_plotly
from test_regimes import BEST, row


def test_charts_show_every_completed_trial_and_the_map_marks_the_rest():
    rows = [row(0, BEST, lr=2, ep=1), row(1, "1" * 60 + "0" * 40, lr=16, ep=1),
            row(2, BEST, lr=16, ep=4, state="PRUNED")]
    for r in rows:
        r["user_attrs"].update(test_ens_acc=[0.7, 0.8], test_member_acc=[0.7, 0.6], soup_test_acc=0.75,
                               interp_val_acc=[0.7, 0.65, 0.6])
    pictures = {c.key: c for c in charts(rows, classify(rows, "sse"))}
    assert set(pictures) == {"ensemble_accuracy", "member_accuracy", "interpolation", "soups_vs_ensembles",
                             "regime_map_sse"}
    assert len(pictures["ensemble_accuracy"].series) == 2  # the pruned trial is not drawn
    assert pictures["interpolation"].series[0].x == [0.0, 0.5, 1.0]
    cells = pictures["regime_map_sse"].cells
    assert cells[(2, 1)][0] == "optimal" and cells[(16, 1)][0] == "more-local"
    assert cells[(16, 4)][0] == "optimal" and cells[(16, 4)][1].startswith("optimal*\n")  # pruned: partial
    fig = to_plotly(pictures["regime_map_sse"])
    assert fig.data[0].type == "heatmap"


def test_report_writes_images_and_the_dashboard_gets_graphs_and_a_note(home, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["study", "create", "starsse-demo", "--name", "pic", *TINY_SET]).exit_code == 0
    assert runner.invoke(app, ["study", "run", "pic"]).exit_code == 0
    result = runner.invoke(app, ["report", "pic", "--out", str(tmp_path / "pics")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "pics").glob("*.png"))
    assert [f.stem for f in files] == ["ensemble_accuracy", "interpolation", "member_accuracy",
                                       "regime_map_starsse", "soups_vs_ensembles"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000 for f in files)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies.journal")))
    study = optuna.load_study(study_name="pic", storage=storage)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("pic"))
    plots = {k.split(":")[2] for k in attrs if k.startswith("dashboard:plot_data:")}
    assert {"ensemble_accuracy", "regime_map_starsse"} <= plots
    assert "Regimes of pic" in optuna_dashboard.get_note(study)
    # each completed trial carries its own pictures as artifacts
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        metas = get_all_artifact_meta(t, storage=storage)
        assert sorted(m.filename for m in metas) == [f"trial{t.number}_members.png", f"trial{t.number}_segment.png"]
        with open(home / "artifacts" / metas[0].artifact_id, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
