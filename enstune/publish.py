"""A study read back from storage: its regimes, and its pictures saved into optuna-dashboard and PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enstune import study as st
from enstune.errors import EnstuneError
from enstune.regimes import Regime, Thresholds, classify
from enstune.report import charts, regimes_note, to_plotly, to_png
from enstune.storage import open_storage


def publish(name: str, storage_url: str | None = None, out: Path | None = None,
            thresholds: Any = None) -> list[Path]:
    """Save study ``name``'s pictures and regime note to the study (optuna-dashboard); with ``out``, also PNGs."""
    if out is not None:
        _writable(Path(out))  # before the storage is opened, let alone written to
    return publish_study(st._load(name, open_storage(storage_url)), out, thresholds)


def publish_study(study: Any, out: Path | None = None, thresholds: Any = None) -> list[Path]:
    """``publish`` for a study already loaded (a worker's, on the storage it holds open)."""
    import optuna_dashboard

    if out is not None:
        out = _writable(Path(out))
    name, spec = study.study_name, st.load_spec(study)
    rows = st.trial_rows(study)
    th = thresholds or Thresholds()
    regimes = classify(rows, spec.method, th, spec.members)
    pictures = charts(rows, regimes)
    for chart in pictures:
        optuna_dashboard.save_plotly_graph_object(study, to_plotly(chart), graph_object_id=chart.key)
    optuna_dashboard.save_note(study, regimes_note(name, regimes, th.describe()))
    if out is None:
        return []
    return [to_png(chart, out / f"{chart.key}.png") for chart in pictures]


def _writable(out: Path) -> Path:
    """``out``, made if missing; one that cannot be is a one-line error."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnstuneError(f"cannot write pictures to {out}: {exc.strerror or exc}") from None
    return out


def study_regimes(name: str, storage_url: str | None = None,
                  thresholds: Thresholds = Thresholds()) -> tuple[list[Regime], dict[str, Any]]:
    """The regimes of study ``name``'s completed trials, and the study as ``study.show`` gives it."""
    info = st.show(name, storage_url)
    return classify(info["trials"], info["spec"]["method"], thresholds, info["spec"]["members"]), info
