"""Ensembles chosen across a study's trials from cached predictions (Caruana et al.), and a greedy soup of them."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from optuna.trial import TrialState
from rich.table import Table

from enstune import study as st
from enstune.cache import MemberCache
from enstune.config import StudySpec
from enstune.data import load_task_data
from enstune.errors import EnstuneError
from enstune.evaluation import accuracy
from enstune.evaluation.evaluators import evaluate
from enstune.evaluation.metrics import ece, nll
from enstune.evaluation.trial import trial_members
from enstune.members import Workspace
from enstune.methods import MemberResult
from enstune.storage import home_dir, open_artifacts, open_storage


@dataclass
class Candidate:
    """A distinct member of the study: the first trial and member index (1-based) holding it, its predictions."""

    trial: int
    index: int
    key: str
    val: torch.Tensor
    test: torch.Tensor

    def ref(self) -> dict[str, Any]:
        """Where the member comes from, as JSON."""
        return {"trial": self.trial, "index": self.index, "key": self.key}


@dataclass
class Selection:
    """The chosen ensemble, its metrics, and what it is compared with."""

    study: str
    size: int  # at most this many members (the study's K unless asked otherwise)
    candidates: int  # distinct members read from the cache
    skipped: int  # members whose cache entry is missing or damaged
    members: list[dict[str, Any]]  # {trial, index, key, weight}, in the order first taken
    metrics: dict[str, float]  # val_/test_ acc, nll, ece
    best_trial: dict[str, Any]
    best_member: dict[str, Any]
    at_trial_size: dict[str, Any]  # the selection of at most K members, K the best trial's ensemble size
    soup: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out = {"study": self.study, "size": self.size, "members_per_trial": self.at_trial_size["size"],
               "candidates": self.candidates, "skipped": self.skipped, **self.metrics, "members": self.members,
               "best_trial": self.best_trial, "at_trial_size": self.at_trial_size, "best_member": self.best_member}
        return out if self.soup is None else out | {"soup": self.soup}

    def rows(self) -> list[tuple[str, ...]]:
        """The selection beside what it is compared with: name, size, val acc, val nll, test acc, nll, ece."""
        def row(name: str, size: int, m: dict[str, Any]) -> tuple[str, ...]:
            return (name, str(size), *(_fmt(m.get(k)) for k in ("val_acc", "val_nll", "test_acc", "test_nll",
                                                                 "test_ece")))

        def weight(members: list[dict[str, Any]]) -> int:
            return sum(r["weight"] for r in members)

        out = [row(f"selected, ≤ {self.size}", weight(self.members), self.metrics)]
        same = self.at_trial_size
        if same["size"] != self.size:  # like with like: the selection at the best trial's size
            out.append(row(f"selected, ≤ {same['size']}", weight(same["members"]), same))
        t, b = self.best_trial, self.best_member
        out += [row(f"best trial ({t['trial']})", t["members"], t),
                row(f"best member ({b['trial']} #{b['index']})", 1, b)]
        if self.soup is not None:
            out.append(row("greedy soup", len(self.soup["members"]), self.soup))
        return out

    def table(self) -> Table:
        """``rows`` as a rich table."""
        table = Table("", "size", "val acc", "val nll", "test acc", "test nll", "test ece",
                      title=f"selection from {self.study}")
        for row in self.rows():
            table.add_row(*row)
        return table

    def summary_lines(self) -> list[str]:
        """The members taken (with their weights) and, when there is one, the soup's."""
        taken = ", ".join(f"trial {r['trial']} #{r['index']}" + (f" ×{r['weight']}" if r["weight"] > 1 else "")
                          for r in self.members)
        lines = [f"members ({self.candidates} distinct read): {taken}"]
        if self.soup is not None:
            lines.append("soup: " + ", ".join(f"trial {r['trial']} #{r['index']}" for r in self.soup["members"]))
        return lines

    def skipped_note(self) -> str:
        """How many members could not be read, and why."""
        return (f"warning: {self.skipped} of {self.skipped + self.candidates} members skipped: their cache entries "
                f"are missing or damaged")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _score(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Higher is better: accuracy, then minus NLL."""
    return accuracy(probs, labels), -nll(probs, labels)


def greedy_selection(val_probs: Sequence[torch.Tensor], labels: torch.Tensor, size: int) -> list[int]:
    """Caruana et al.'s forward selection with replacement on validation: the indices taken, repeats included."""
    if size < 1:
        raise EnstuneError(f"--size must be >= 1, got {size}")
    if not val_probs:
        raise ValueError("no candidate to select from")
    total = torch.zeros_like(val_probs[0])
    taken: list[int] = []
    best_prefix, best = 0, (-1.0, -float("inf"))
    for step in range(1, size + 1):
        # max() keeps the first of equal scores: ties go to the earlier candidate.
        scores = [_score((total + p) / step, labels) for p in val_probs]
        pick = max(range(len(val_probs)), key=scores.__getitem__)
        taken.append(pick)
        total += val_probs[pick]
        if scores[pick] > best:  # strictly: of equal prefixes, the shorter
            best_prefix, best = step, scores[pick]
    return taken[:best_prefix]


def ensemble_metrics(probs: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    """Accuracy, NLL and ECE of ``probs`` as ``{prefix}_acc``, ``{prefix}_nll``, ``{prefix}_ece``."""
    return {f"{prefix}_acc": accuracy(probs, labels), f"{prefix}_nll": nll(probs, labels),
            f"{prefix}_ece": ece(probs, labels)}


def _read(cache: MemberCache, key: str) -> dict[str, Any] | None:
    """The cache entry of ``key``, silently None when missing or damaged (the caller counts those)."""
    with warnings.catch_warnings():
        # The cache's own notice promises a retraining that selection does not do.
        warnings.simplefilter("ignore")
        return cache.get(key)


def _candidates(trials: list[Any], cache: MemberCache, val_y: torch.Tensor,
                test_y: torch.Tensor) -> tuple[list[Candidate], int, int]:
    """Distinct members of ``trials`` (by key, first trial first) read from the cache; (found, skipped, total)."""
    where: dict[str, tuple[int, int]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        for index, key in enumerate(t.user_attrs.get("member_keys", []), 1):
            where.setdefault(key, (t.number, index))
    found: list[Candidate] = []
    for key, (trial, index) in where.items():
        entry = _read(cache, key)
        val, test = (entry.get("val"), entry.get("test")) if isinstance(entry, dict) else (None, None)
        # Predictions of other data (or none) would be compared with the wrong labels.
        if (isinstance(val, torch.Tensor) and isinstance(test, torch.Tensor) and val.dim() == 2 and test.dim() == 2
                and len(val) == len(val_y) and len(test) == len(test_y) and val.shape[1] == test.shape[1]):
            found.append(Candidate(trial, index, key, val.float(), test.float()))
    return found, len(where) - len(found), len(where)


def _best_trial(trials: list[Any]) -> dict[str, Any]:
    """The completed trial with the best objective (its final ensemble), the first of equals."""
    t = max(sorted(trials, key=lambda t: t.number), key=lambda t: t.value)
    test = t.user_attrs.get("test_ens_acc") or [None]
    return {"trial": t.number, "val_acc": t.value, "test_acc": test[-1], "members": len(test)}


def _taken(found: list[Candidate], taken: list[int], val_y: torch.Tensor, test_y: torch.Tensor) -> dict[str, Any]:
    """Members taken (each with its weight, in the order first taken) and the metrics of their average."""
    weights = collections.Counter(taken)  # insertion order: the order first taken
    return {"members": [found[i].ref() | {"weight": w} for i, w in weights.items()],
            "metrics": ensemble_metrics(torch.stack([found[i].val for i in taken]).mean(0), val_y, "val")
            | ensemble_metrics(torch.stack([found[i].test for i in taken]).mean(0), test_y, "test")}


def _soup(spec: StudySpec, ws: Workspace, chosen: list[Candidate]) -> dict[str, Any]:
    """Greedy soup over ``chosen`` through the ``soups`` evaluator: weight averages, BN recalibrated."""
    results = []
    for c in chosen:
        entry = _read(ws.cache, c.key)
        if entry is None or "state" not in entry:
            raise EnstuneError(f"member {c.key} (trial {c.trial}, member {c.index}) left the member cache "
                               f"while the soup was made")
        results.append(MemberResult(c.key, entry["state"], c.val, c.test, int(entry.get("epochs", 0)), 0.0, True))
    members = trial_members(ws, results, torch.device("cpu"), spec.seed, spec)
    attrs = evaluate(members, ["soups"])
    return {"val_acc": attrs["greedy_soup_val_acc"], "test_acc": attrs["greedy_soup_test_acc"],
            "members": [chosen[i - 1].ref() for i in attrs["greedy_soup_members"]],
            "uniform_val_acc": attrs["soup_val_acc"], "uniform_test_acc": attrs["soup_test_acc"]}


def select(name: str, size: int | None = None, storage_url: str | None = None, artifacts: str | None = None,
           soup: bool = False) -> Selection:
    """The best ensemble of at most ``size`` (default: the study's K) members of study ``name``'s completed trials.

    Chosen on validation; beside it, the selection of at most as many members as the best trial has,
    so that the best trial's ensemble is compared with an ensemble of its own size.
    """
    if size is not None and size < 1:
        raise EnstuneError(f"--size must be >= 1, got {size}")
    study = st._load(name, open_storage(storage_url))
    spec = st.load_spec(study)
    size = spec.members if size is None else size
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        raise EnstuneError(f"study {name!r} has no completed trial: no member to select from")
    store = open_artifacts(artifacts)
    ws = Workspace(spec.task, home_dir(), store) if soup else None
    data = ws.data if ws is not None else load_task_data(spec.task, home_dir())
    val_y, test_y = data.val.y.cpu(), data.test.y.cpu()
    found, skipped, total = _candidates(trials, MemberCache(store), val_y, test_y)
    if not found:
        raise EnstuneError(f"none of the {total} members of study {name!r} could be read from the member cache "
                           f"(missing or damaged)")
    vals = [c.val for c in found]
    taken = greedy_selection(vals, val_y, size)
    chosen = _taken(found, taken, val_y, test_y)
    best = _best_trial(trials)
    k = best["members"]
    same = chosen if k == size else _taken(found, greedy_selection(vals, val_y, k), val_y, test_y)
    first = found[taken[0]]  # the first step takes the best single member on validation
    best_member = (first.ref() | ensemble_metrics(first.val, val_y, "val")
                   | ensemble_metrics(first.test, test_y, "test"))
    picked = list(dict.fromkeys(taken))
    return Selection(name, size, len(found), skipped, chosen["members"], chosen["metrics"], best, best_member,
                     {"size": k, "members": same["members"]} | same["metrics"],
                     _soup(spec, ws, [found[i] for i in picked]) if ws is not None else None)
