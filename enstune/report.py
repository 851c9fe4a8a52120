"""Pictures of a study: the StarSSE paper's Figures 1-4 and the regime map.

Each picture is built once as a ``Chart`` (plain data) and drawn twice: as a Plotly figure for
optuna-dashboard and as a PNG (matplotlib) for ``enstune report --out DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enstune.regimes import LABELS, UNSURE, Regime, cell_text

COLOURS = {"more-local": "#4C72B0", "optimal": "#55A868", "semi-local": "#C44E52"}


@dataclass
class Series:
    """One line (x numeric) or one group of bars (x categorical)."""

    name: str
    x: list[Any]
    y: list[float]
    dashed: bool = False


@dataclass
class Chart:
    """What a picture shows: ``kind`` is lines, bars or grid (a regime map, ``cells`` by (row, column))."""

    key: str
    title: str
    xlabel: str
    ylabel: str
    kind: str = "lines"
    series: list[Series] = field(default_factory=list)
    cells: dict[tuple[Any, Any], tuple[str, str]] = field(default_factory=dict)  # (label, text)


def _name(params: dict[str, Any]) -> str:
    parts = [f"{k.removesuffix('_mult')}×{v}" for k, v in params.items() if k in ("lr_mult", "epoch_mult")]
    return " ".join(parts) or ", ".join(f"{k}={v}" for k, v in params.items()) or "trial"


def charts(rows: list[dict[str, Any]], regimes: list[Regime]) -> list[Chart]:
    """Every picture of a study from its trial rows (``enstune.study.trial_rows``) and regimes."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r["user_attrs"].get("val_ens_acc")]
    label = {g.number: g.label for g in regimes}

    def each(key: str, dashed: bool = False, suffix: str = "") -> list[Series]:
        out = []
        for r in done:
            y = r["user_attrs"].get(key)
            if y:
                x = list(range(1, len(y) + 1)) if "interp" not in key else [i / (len(y) - 1) for i in range(len(y))]
                out.append(Series(f"#{r['number']} {_name(r['params'])} ({label.get(r['number'], '?')}){suffix}",
                                  x, y, dashed))
        return out

    pictures = [
        Chart("ensemble_accuracy", "Ensemble accuracy vs ensemble size (test)", "ensemble size", "accuracy",
              series=each("test_ens_acc")),
        Chart("member_accuracy", "Member accuracy by index (test)", "member", "accuracy",
              series=each("test_member_acc")),
        Chart("interpolation", "Accuracy from member 1 to member K (solid: validation, dashed: train)",
              "t", "accuracy", series=each("interp_val_acc") + each("interp_train_acc", True, " train")),
    ]
    bars = [("test_ens_acc", "ensemble ID"), ("soup_test_acc", "soup ID"), ("ood_ens_acc", "ensemble OOD"),
            ("ood_soup_acc", "soup OOD")]
    names = [f"#{r['number']} {_name(r['params'])}" for r in done]
    soups = Chart("soups_vs_ensembles", "Soups vs ensembles, in and out of distribution", "trial", "accuracy",
                  kind="bars")
    for key, what in bars:
        values = [_last(r["user_attrs"].get(key)) for r in done]
        if any(v is not None for v in values):
            soups.series.append(Series(what, names, [v if v is not None else 0.0 for v in values]))
    pictures.append(soups)
    for method in sorted({g.method for g in regimes}):
        grid = Chart(f"regime_map_{method}", f"Regime map ({method})", "epoch_mult", "lr_mult", kind="grid")
        for g in regimes:
            if g.method == method and g.lr_mult is not None:
                grid.cells[(g.lr_mult, g.epoch_mult)] = (g.label, cell_text(g).replace(" ", "\n", 1))
        for r in rows:
            key = (r["params"].get("lr_mult"), r["params"].get("epoch_mult"))
            if r["state"] != "COMPLETE" and key[0] is not None and key not in grid.cells:
                grid.cells[key] = ("", r["state"].lower())
        pictures.append(grid)
    return [c for c in pictures if c.series or c.cells]


def _last(value: Any) -> float | None:
    return value[-1] if isinstance(value, list) and value else value


def to_plotly(chart: Chart):  # noqa: ANN201 - plotly.graph_objects.Figure
    """The chart as a Plotly figure."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if chart.kind == "lines":
        for s in chart.series:
            fig.add_trace(go.Scatter(x=s.x, y=s.y, name=s.name, mode="lines+markers",
                                     line={"dash": "dash" if s.dashed else "solid"}))
    elif chart.kind == "bars":
        for s in chart.series:
            fig.add_trace(go.Bar(x=s.x, y=s.y, name=s.name))
        fig.update_layout(barmode="group")
    else:
        rows, cols = _axes(chart)
        z = [[LABELS.index(chart.cells[(r, c)][0]) if chart.cells.get((r, c), ("",))[0] in LABELS else None
              for c in cols] for r in rows]
        text = [[chart.cells.get((r, c), ("", ""))[1].replace("\n", "<br>") for c in cols] for r in rows]
        scale = [[i / (len(LABELS) - 1), COLOURS[lab]] for i, lab in enumerate(LABELS)]
        fig.add_trace(go.Heatmap(z=z, x=[str(c) for c in cols], y=[str(r) for r in rows], text=text,
                                 texttemplate="%{text}", colorscale=scale, zmin=0, zmax=len(LABELS) - 1,
                                 showscale=False))
    fig.update_layout(title=chart.title, xaxis_title=chart.xlabel, yaxis_title=chart.ylabel)
    return fig


def _axes(chart: Chart) -> tuple[list[Any], list[Any]]:
    return sorted({k[0] for k in chart.cells}), sorted({k[1] for k in chart.cells if k[1] is not None})


def to_png(chart: Chart, path: Path) -> Path:
    """Draw the chart into a PNG file (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    if chart.kind == "lines":
        for s in chart.series:
            ax.plot(s.x, s.y, "--" if s.dashed else "-", marker="o", markersize=3, label=s.name)
        if all(isinstance(x, int) for s in chart.series for x in s.x):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6, ncol=2)
    elif chart.kind == "bars":
        width = 0.8 / max(len(chart.series), 1)
        for i, s in enumerate(chart.series):
            ax.bar([j + i * width for j in range(len(s.x))], s.y, width, label=s.name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(chart.series[0].x))], chart.series[0].x,
                      rotation=45, ha="right", fontsize=7)
        ax.set_ylim(bottom=min(min(s.y) for s in chart.series) * 0.95)
        ax.legend(fontsize=7)
    else:
        rows, cols = _axes(chart)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                lab, text = chart.cells.get((r, c), ("", ""))
                # An uncertain label (marked "?") is drawn faded, so the sure part of the map stands out.
                ax.add_patch(plt.Rectangle((j, i), 1, 1, color=COLOURS.get(lab, "#DDDDDD"),
                                           alpha=0.4 if "?" in text.split("\n")[0] else 1.0))
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8)
        ax.set_xlim(0, len(cols))
        ax.set_ylim(0, len(rows))
        ax.set_xticks([j + 0.5 for j in range(len(cols))], [str(c) for c in cols])
        ax.set_yticks([i + 0.5 for i in range(len(rows))], [str(r) for r in rows])
    ax.set_title(chart.title)
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def regimes_note(name: str, regimes: list[Regime], thresholds: str) -> str:
    """A Markdown summary of the regimes, for the study's note in optuna-dashboard."""
    lines = [f"# Regimes of {name}", "", f"Rules: {thresholds}", "",
             f"Confidence: the share of bootstrap replicates of the validation set that give the same label; "
             f"below {UNSURE} the map marks it '?'. A label marked * is partial: from the members the trial had.", "",
             "| # | method | lr_mult | epoch_mult | regime | confidence | val ens | why |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {g.number} | {g.method} | {g.lr_mult} | {g.epoch_mult} | **{g.label}**{'*' if g.partial else ''} | "
              f"{g.confidence:.2f} | {g.val_ens_acc:.3f} | {g.reason} |" for g in regimes]
    counts = {lab: sum(g.label == lab for g in regimes) for lab in LABELS}
    return "\n".join(lines + ["", ", ".join(f"{v} {k}" for k, v in counts.items())])


def trial_charts(row: dict[str, Any]) -> list[Chart]:
    """One trial's pictures: its ensemble curve and members, and its interpolation segment."""
    a, title = row["user_attrs"], f"Trial {row['number']} {_name(row['params'])}"
    size = list(range(1, len(a["val_ens_acc"]) + 1))
    out = [Chart(f"trial{row['number']}_members", title, "member / ensemble size", "accuracy", series=[
        Series("ensemble (val)", size, a["val_ens_acc"]), Series("ensemble (test)", size, a["test_ens_acc"]),
        Series("member (test)", size, a["test_member_acc"], dashed=True)])]
    if a.get("interp_val_acc"):
        t = [i / (len(a["interp_val_acc"]) - 1) for i in range(len(a["interp_val_acc"]))]
        out.append(Chart(f"trial{row['number']}_segment", title + ": member 1 to member K", "t", "accuracy",
                         series=[Series("validation", t, a["interp_val_acc"]),
                                 Series("train", t, a["interp_train_acc"], dashed=True)]))
    return out


def attach_trial_pictures(trial: Any, params: dict[str, Any], attrs: dict[str, Any], artifacts: Any) -> None:
    """Upload a running trial's pictures as its artifacts (optuna-dashboard lists them with the trial)."""
    import tempfile

    from optuna.artifacts import upload_artifact

    row = {"number": trial.number, "params": params, "user_attrs": attrs}
    with tempfile.TemporaryDirectory() as tmp:
        for chart in trial_charts(row):
            path = to_png(chart, Path(tmp) / f"{chart.key}.png")
            upload_artifact(artifact_store=artifacts, file_path=str(path), study_or_trial=trial, mimetype="image/png")
