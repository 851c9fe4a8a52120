"""Cycle multipliers for a new dataset: from the optimal trials of finished studies and the paper's Table 3.

Ranking, for a method:
1. optimal trials of studies on the same dataset (best validation accuracy first);
2. the paper's optima for that dataset (Table 3, one per pre-training);
3. every other known optimum of the method, pooled: a setting optimal in more places ranks
   higher, ties broken towards the middle of the known optima (log scale).
Each proposal lists where it came from. A study's dataset is its task's dataset, or, for a tree of
class folders (``imagefolder``), the last component of its data_dir: pets and cars are two datasets.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

# StarSSE paper, Table 3: (pre-training, dataset, method) -> optimal (lr_mult, epoch_mult).
PAPER_OPTIMA: dict[tuple[str, str, str], tuple[float, float]] = {}
_TABLE3 = [  # pre-training, dataset, SSE optimal, StarSSE optimal
    ("SV ResNet-50", "cifar10", (2, 0.25), (2, 0.5)),
    ("SV ResNet-50", "cifar100", (2, 1), (4, 1)),
    ("SV ResNet-50", "sun397", (32, 0.125), (32, 0.125)),
    ("SV ResNet-50", "chestx", (4, 2), (2, 2)),
    ("SV ResNet-50", "clipart", (1, 0.5), (2, 0.5)),
    ("SSL ResNet-50", "cifar10", (1, 1), (2, 1)),
    ("SSL ResNet-50", "cifar100", (2, 0.5), (4, 0.5)),
    ("SSL ResNet-50", "sun397", (1, 1), (2, 1)),
    ("SSL ResNet-50", "chestx", (1, 1), (1, 2)),
    ("SSL ResNet-50", "clipart", (4, 0.5), (4, 0.5)),
    ("SV Swin-T", "cifar100", (2, 0.25), (4, 0.5)),
    ("SV Swin-T", "sun397", (16, 0.125), (16, 0.25)),
    ("CLIP ViT-B/32", "imagenet", (2, 1), (2, 1)),
]
for _pre, _data, _sse, _star in _TABLE3:
    PAPER_OPTIMA[(_pre, _data, "sse")] = _sse
    PAPER_OPTIMA[(_pre, _data, "starsse")] = _star


@dataclass(frozen=True)
class Optimum:
    """One known optimal setting and where it is from."""

    dataset: str
    method: str
    lr_mult: float
    epoch_mult: float
    source: str
    val_ens_acc: float | None = None


@dataclass
class Proposal:
    """A ranked (lr_mult, epoch_mult) with its evidence."""

    lr_mult: float
    epoch_mult: float
    tier: str
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"lr_mult": self.lr_mult, "epoch_mult": self.epoch_mult, "tier": self.tier, "sources": self.sources}


def paper_optima() -> list[Optimum]:
    """Table 3 of the StarSSE paper as optima."""
    return [Optimum(d, m, float(lr), float(ep), f"paper Table 3 ({pre}, {d})")
            for (pre, d, m), (lr, ep) in PAPER_OPTIMA.items()]


def propose(dataset: str, method: str = "starsse", top: int = 5, storage_url: str | None = None) -> list[Proposal]:
    """The ``top`` (lr_mult, epoch_mult) proposals for ``method`` on ``dataset``, from finished studies and the paper."""
    from enstune.errors import EnstuneError
    from enstune.methods import get_method

    if not dataset.strip():
        raise EnstuneError("--dataset must name a dataset, e.g. cifar100 or demo")
    if "lr_mult" not in get_method(method).reads:
        raise EnstuneError(f"recommend proposes cycle multipliers: --method must be sse or starsse, got {method!r}")
    if top < 1:
        raise EnstuneError(f"--top must be >= 1, got {top}")
    return rank(dataset.lower(), method, study_optima(storage_url) + paper_optima())[:top]


def known_datasets(storage_url: str | None = None) -> list[str]:
    """The datasets some evidence is about: the paper's and those of the storage's studies (folders by their name)."""
    return sorted({o.dataset for o in study_optima(storage_url) + paper_optima()})


def knows(proposals: list[Proposal]) -> bool:
    """Whether any proposal comes from the dataset itself (its own studies or the paper), not only from others."""
    return any(p.tier.startswith("this dataset") for p in proposals)


def unknown_note(dataset: str, storage_url: str | None = None) -> str:
    """What a dataset nothing is known of gets instead: the other datasets' pooled optima."""
    return (f"note: nothing is known of dataset {dataset!r} (no finished study of it, not in the paper's Table 3; "
            f"known: {', '.join(known_datasets(storage_url))}): the proposals pool the other datasets' optima")


def proposals_dict(dataset: str, method: str, proposals: list[Proposal], queued: list[Proposal]) -> dict[str, Any]:
    """The proposals for ``method`` on ``dataset`` and those ``enqueue`` queued, as JSON-serialisable data."""
    return {"dataset": dataset, "method": method, "known": knows(proposals),
            "proposals": [p.to_dict() for p in proposals], "enqueued": [p.to_dict() for p in queued]}


def proposals_table(proposals: list[Proposal], dataset: str, method: str) -> Table:
    """The proposals, ranked, each with where it comes from, as a rich table."""
    # Only the command line draws it: importing this module stays light.
    from rich.table import Table

    table = Table("rank", "lr_mult", "epoch_mult", "from", "evidence", title=f"{method} on {dataset}")
    for i, p in enumerate(proposals, 1):
        table.add_row(str(i), str(p.lr_mult), str(p.epoch_mult), p.tier, "; ".join(p.sources))
    return table


def queued_line(name: str, queued: list[Proposal], proposals: list[Proposal]) -> str:
    """What ``enqueue`` of ``proposals`` into study ``name`` did, in one line."""
    if len(queued) < len(proposals):
        return f"queued {len(queued)} of {len(proposals)} in study {name} (the others are outside its search space)"
    return f"queued {len(queued)} in study {name}"


def rank(dataset: str, method: str, known: list[Optimum]) -> list[Proposal]:
    """Proposals for ``dataset`` and ``method`` from ``known`` optima (studies first, then the paper)."""
    same = [o for o in known if o.method == method]
    out: dict[tuple[float, float], Proposal] = {}

    def add(o: Optimum, tier: str) -> None:
        key = (o.lr_mult, o.epoch_mult)
        p = out.setdefault(key, Proposal(o.lr_mult, o.epoch_mult, tier))
        p.sources.append(o.source)

    studies = sorted((o for o in same if o.dataset == dataset and o.val_ens_acc is not None),
                     key=lambda o: -(o.val_ens_acc or 0))
    for o in studies:
        add(o, "this dataset, own studies")
    for o in same:
        if o.dataset == dataset and o.val_ens_acc is None:
            add(o, "this dataset, paper")
    pooled = [o for o in same if o.dataset != dataset]
    if pooled:
        centre = (sum(math.log2(o.lr_mult) for o in pooled) / len(pooled),
                  sum(math.log2(o.epoch_mult) for o in pooled) / len(pooled))
        votes: dict[tuple[float, float], list[Optimum]] = {}
        for o in pooled:
            votes.setdefault((o.lr_mult, o.epoch_mult), []).append(o)

        def order(key: tuple[float, float]) -> tuple[int, float]:
            return -len(votes[key]), math.dist((math.log2(key[0]), math.log2(key[1])), centre)

        for key in sorted(votes, key=order):
            for o in votes[key]:
                add(o, "other datasets")
    return list(out.values())


def study_optima(storage_url: str | None = None) -> list[Optimum]:
    """Optimal trials (by ``enstune.regimes``) of every enstune study in the storage."""
    import optuna

    from enstune import study as st
    from enstune.data import dataset_label
    from enstune.errors import EnstuneError
    from enstune.regimes import classify
    from enstune.storage import open_storage

    storage = open_storage(storage_url)
    out = []
    for summary in optuna.get_all_study_summaries(storage):
        data = summary.user_attrs.get(st.SPEC_ATTR)
        if data is None:
            continue
        try:
            with warnings.catch_warnings():  # an earlier enstune's study counts as evidence all the same
                warnings.simplefilter("ignore")
                spec = st.stored_spec(data, summary.study_name)
        except EnstuneError:  # keys or types no longer fit: its evidence cannot be read safely
            continue
        rows = st.trial_rows(optuna.load_study(study_name=summary.study_name, storage=storage))
        for g in classify(rows, spec.method, members=spec.members):
            if g.label == "optimal" and not g.partial and g.lr_mult is not None and g.epoch_mult is not None:
                out.append(Optimum(dataset_label(spec.task), g.method, float(g.lr_mult), float(g.epoch_mult),
                                   f"study {summary.study_name} ({spec.task.model}, trial {g.number}, "
                                   f"val {g.val_ens_acc:.3f})", g.val_ens_acc))
    return out


def enqueue(name: str, proposals: list[Proposal], method: str, storage_url: str | None = None) -> list[Proposal]:
    """Queue ``proposals`` for ``method`` as the next trials of study ``name``; return those its space admits."""
    from enstune import study as st
    from enstune.config import study_methods
    from enstune.errors import EnstuneError
    from enstune.storage import open_storage

    study = st._load(name, open_storage(storage_url))
    spec = st.load_spec(study)
    if spec.sampler == "grid":
        raise EnstuneError(f"study {name!r} queues its whole grid already; enqueue into a tpe or random study")
    methods = study_methods(spec)
    if method not in methods:
        raise EnstuneError(f"study {name!r} runs {', '.join(methods)}, not {method}: recommend with --method "
                           f"{methods[0]}")
    admitted = [p for p in proposals if all(_admits(spec.space.get(k), v) for k, v in
                                            (("lr_mult", p.lr_mult), ("epoch_mult", p.epoch_mult)))]
    # in a study of several methods the queued trial must also name the method, or it may sample another
    pick = {"method": method} if "method" in spec.space else {}
    for p in admitted:
        study.enqueue_trial({**pick, "lr_mult": p.lr_mult, "epoch_mult": p.epoch_mult}, skip_if_exists=True)
    return admitted


def _admits(param: Any, value: float) -> bool:
    if param is None:
        return False
    if param.choices:
        return value in param.choices
    return param.low <= value <= param.high
