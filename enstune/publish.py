"""A study read back from storage: its regimes, and its pictures saved into optuna-dashboard and PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enstune import study as st
from enstune.errors import EnstuneError
from enstune.regimes import Regime, Thresholds, classify
from enstune.report import Chart, charts, regimes_note, to_plotly, to_png
from enstune.storage import open_storage


def publish(name: str, storage_url: str | None = None, out: Path | None = None,
            thresholds: Any = None) -> list[Path]:
    """Save study ``name``'s pictures and regime note to the study (optuna-dashboard); with ``out``, also PNGs."""
    if out is not None:
        out = Path(out)
        try:  # before the storage is opened, let alone written to
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EnstuneError(f"cannot write pictures to {out}: {exc.strerror or exc}") from None
    pictures = publish_study(st._load(name, open_storage(storage_url)), thresholds)
    return [] if out is None else [to_png(chart, out / f"{chart.key}.png") for chart in pictures]


def publish_study(study: Any, thresholds: Any = None) -> list[Chart]:
    """Save a loaded study's pictures and regime note to it (a worker's, on the storage it holds open); the pictures."""
    import optuna_dashboard

    spec = st.load_spec(study)
    rows = st.trial_rows(study)
    th = thresholds or Thresholds()
    regimes = classify(rows, spec.method, th, spec.members)
    pictures = charts(rows, regimes)
    for chart in pictures:
        optuna_dashboard.save_plotly_graph_object(study, to_plotly(chart), graph_object_id=chart.key)
    optuna_dashboard.save_note(study, regimes_note(study.study_name, regimes, th.describe()))
    return pictures


def study_regimes(name: str, storage_url: str | None = None,
                  thresholds: Thresholds = Thresholds()) -> tuple[list[Regime], dict[str, Any]]:
    """The regimes of study ``name``'s completed trials, and the study as ``study.show`` gives it."""
    info = st.show(name, storage_url)
    return classify(info["trials"], info["spec"]["method"], thresholds, info["spec"]["members"]), info
