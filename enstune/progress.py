"""Live progress of a worker: trial, member, epoch and the current best, on a rich display."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """Receives a worker's events; this base class ignores them."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def trial_started(self, number: int, params: dict[str, Any], members: int) -> None:
        """A trial begins."""

    def member_started(self, index: int, members: int, epochs: int) -> None:
        """Member ``index`` of ``members`` begins training for ``epochs``."""

    def epoch_done(self, epoch: int, epochs: int, loss: float) -> None:
        """An epoch of the current member ended."""

    def member_done(self, index: int, val_ens_acc: float, cached: bool) -> None:
        """Member ``index`` is done; the ensemble of 1..index reached ``val_ens_acc``."""

    def evaluating(self, name: str, step: int, steps: int) -> None:
        """Evaluator ``name``, ``step`` of ``steps``, begins on the trial's members."""

    def weight_model_done(self) -> None:
        """One more weight-space model (a soup, a point on a segment) was built and its BN recalibrated."""

    def trial_done(self, state: str, value: float | None, best: float | None) -> None:
        """The trial ended in ``state``."""


class RichReporter(Reporter):
    """Two bars: trials of this worker's budget, epochs of the member in training."""

    def __init__(self, budget: int, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console or Console(stderr=True), transient=False,
        )
        self._trials = self._progress.add_task("trials", total=budget)
        self._member = self._progress.add_task("member", total=1, visible=False)
        self._best: float | None = None
        self._evaluator, self._models = "", 0
        self._trial = ""

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _best_text(self) -> str:
        return "best —" if self._best is None else f"best {self._best:.4f}"

    def trial_started(self, number: int, params: dict[str, Any], members: int) -> None:
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        self._trial = f"trial {number} [dim]{shown}[/]"
        self._progress.update(self._trials, description=f"{self._trial} · {self._best_text()}")

    def member_started(self, index: int, members: int, epochs: int) -> None:
        self._progress.update(self._member, description=f"  member {index}/{members} epochs",
                              total=epochs, completed=0, visible=True)

    def epoch_done(self, epoch: int, epochs: int, loss: float) -> None:
        self._progress.update(self._member, completed=epoch)

    def member_done(self, index: int, val_ens_acc: float, cached: bool) -> None:
        note = " (cached)" if cached else ""
        self._progress.update(self._member, description=f"  member {index} val ens {val_ens_acc:.4f}{note}")

    def evaluating(self, name: str, step: int, steps: int) -> None:
        # Soups, segments and OOD sets can take longer than training: the bar says which and how far.
        self._evaluator, self._models = name, 0
        self._progress.update(self._member, description=f"  evaluating {name}", total=steps, completed=step - 1,
                              visible=True)

    def weight_model_done(self) -> None:
        self._models += 1
        self._progress.update(self._member, description=f"  evaluating {self._evaluator} · {self._models} models")

    def trial_done(self, state: str, value: float | None, best: float | None) -> None:
        self._best = best
        self._progress.update(self._member, visible=False)
        self._progress.update(self._trials, advance=1, description=f"{self._trial} {state} · {self._best_text()}")
