"""Which sampler and pruner find the best of the starsse-demo grid at half its cost? Seed-averaged.

    python benchmarks/half_cost.py                                   # seeds 0-3, a fresh temporary ENSTUNE_HOME
    python benchmarks/half_cost.py --seeds 0 --home runs-half        # keep (and reuse) the members
    python benchmarks/half_cost.py --only grid-median,grid-halving   # some strategies only

For each seed it runs the whole ``starsse-demo`` grid without pruning, then each strategy (a
sampler, a pruner, a number of trials) as a study of its own on the same member cache: a member
one study trained is read back by the others, but the cost counted is what a strategy asks for,
cached or not: the epochs of members 2..K (``member_epochs``) of every trial, pruned ones too.
Member 1 is the ×1 fine-tune every trial shares. A seed is a study seed (the grid's order, the
sampler's draws) and the trials' seed (their members' seeds), so seed s of every strategy meets
the same members. The unpruned grids train every member (about 10,000 epochs of the demo net per
seed: minutes on a free CPU); the strategies then read them back in seconds.

A strategy finds the optimum when its best completed trial is within one paired standard error
(``enstune.regimes.paired_se`` of the two ensembles' per-image correctness on validation) of the
best trial of the unpruned grid; the table gives, per strategy, the cost as a share of the grid's,
the seeds on which it found the optimum (a seed where it did not is starred), and its shortfall in
accuracy and in standard errors.

Measured on a 2-core CPU (``--seeds 0,1,2,3``, then ``--seeds 4,5,6,7``; ~150 s per unpruned grid,
9,600 cycle member-epochs each), mean cost share and seeds where the optimum was found:

    strategy                  seeds 0-3      seeds 4-7
    grid-median (default)     0.726  4/4     -
    grid-halving              0.595  4/4     0.599  4/4
    grid8-halving             0.357  4/4     0.330  4/4
    tpe8-halving              0.435  4/4     0.356  3/4
    recommend-tpe12-halving   0.443  4/4     0.459  3/4

Successive halving with a reduction factor of 3 or 4 on the whole grid cost 0.581 and 0.572
(seeds 0-3): Optuna's pruners are asynchronous and promote the first trials at a rung, and
every trial pays for its member 2. Half the grid holds one of its four settings within a
standard error of the best on almost every shuffle, which is what the cheap strategies use.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from typing import Any

LANDSCAPES = ("starsse-demo", "sse-demo")  # the templates whose grids are searched
UNPRUNED = "grid-unpruned"
TEMPLATE = "template"  # the template's own strategy, as `enstune study create` makes it
# name -> overrides of the template: the sampler, the pruner and the study's number of trials
STRATEGIES: dict[str, list[str]] = {
    UNPRUNED: ['pruner="none"'],
    TEMPLATE: [],
    "grid-median": ['pruner="median"'],
    "grid-halving": ['pruner="halving"'],
    "grid-hyperband": ['pruner="hyperband"'],
    # the first 8 points of the grid's seeded shuffle: random search without repeats
    "grid8-halving": ["n_trials=8", 'pruner="halving"'],
    "grid8-bound": ["n_trials=8", 'pruner="bound"'],
    "tpe8-halving": ['sampler="tpe"', "n_trials=8", 'pruner="halving"'],
}


def _name(landscape: str, strategy: str, seed: int) -> str:
    return f"half-{landscape}-{strategy}-s{seed}"


def _run(landscapes: list[str], strategies: list[str], seeds: list[int], extra: list[str]) -> None:
    from enstune.study import create
    from enstune.worker import run

    for seed in seeds:
        for landscape in landscapes:
            for strategy in [UNPRUNED, *strategies]:  # the unpruned grid first: it trains every member
                start = time.perf_counter()
                name = _name(landscape, strategy, seed)
                create(landscape, name, overrides=[f"space.seed.choices=[{seed}]", f"seed={seed}", "evaluate=[]",
                                                   *STRATEGIES[strategy], *extra])
                study = run(name)
                print(f"{name}: {len(study.trials)} trials in {time.perf_counter() - start:.0f} s", flush=True)


def _cost(trials: list[dict[str, Any]]) -> int:
    """Epochs of members 2..K the trials asked for (member 1 is every trial's shared fine-tune)."""
    return sum(sum(t["user_attrs"].get("member_epochs", [])[1:]) for t in trials)


def _best(trials: list[dict[str, Any]]) -> dict[str, Any]:
    return max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])


def _outcome(landscape: str, strategy: str, seed: int) -> tuple[float, bool, float, dict[str, Any]]:
    """One strategy on one seed: cost share, optimum found, shortfall in paired SEs, the best trial."""
    from enstune.evaluation import unpack_correct
    from enstune.regimes import paired_se
    from enstune.study import show

    grid, trials = show(_name(landscape, UNPRUNED, seed))["trials"], show(_name(landscape, strategy, seed))["trials"]
    ref, best = _best(grid), _best(trials)
    se = paired_se(unpack_correct(ref["user_attrs"]["val_correct"]), unpack_correct(best["user_attrs"]["val_correct"]))
    gap = ref["value"] - best["value"]
    return _cost(trials) / _cost(grid), gap <= se + 1e-12, gap / se if se else 0.0, best


def largest_growth(trials: list[dict[str, Any]]) -> float | None:
    """The largest growth, in ``enstune.forecast`` spreads, from any step of a finished ensemble to its K members."""
    from enstune.forecast import spread

    out = None
    for t in trials:
        a = t["user_attrs"]
        accs, contested = a.get("val_ens_acc") or [], a.get("val_contested") or []
        if t["state"] != "COMPLETE" or len(contested) != len(accs):
            continue
        for m in range(2, len(accs)):
            if (s := spread(contested[m - 1], a["val_size"], m, len(accs))) > 0:
                out = max(out if out is not None else -math.inf, (accs[-1] - accs[m - 1]) / s)
    return out


def report(landscapes: list[str], strategies: list[str], seeds: list[int]) -> None:
    """Print, per landscape and strategy, each seed's cost share and whether it found the optimum."""
    from enstune.study import show

    for landscape in landscapes:
        grids = {s: show(_name(landscape, UNPRUNED, s))["trials"] for s in seeds}
        print(f"\n{landscape}: unpruned grid's cycle member-epochs (members 2..K) and best validation setting: "
              + ", ".join(f"seed {s} {_cost(g)} {_setting(_best(g))} {_best(g)['value']:.4f}" for s, g in grids.items()))
        print(f"{'strategy':<15} " + " ".join(f"{'seed ' + str(s):>12}" for s in seeds)
              + "   found   cost share (min-max)   (a star: the optimum missed, with its shortfall in paired SEs)")
        for strategy in strategies:
            rows = [_outcome(landscape, strategy, s) for s in seeds]
            cells = [f"{share:.3f}" + ("" if found else f"*{units:+.1f}") for share, found, units, _ in rows]
            shares = [r[0] for r in rows]
            print(f"{strategy:<15} " + " ".join(f"{c:>12}" for c in cells)
                  + f"   {sum(r[1] for r in rows)}/{len(rows)}     {min(shares):.3f}-{max(shares):.3f}")
        if TEMPLATE in strategies:
            growth = [largest_growth(show(_name(landscape, TEMPLATE, s))["trials"]) for s in seeds]
            print(f"{'largest growth':<15} " + " ".join(f"{'-' if g is None else f'{g:.2f}':>12}" for g in growth)
                  + f"   in spreads, from any step of the template's finished trials (its bound: z = {_z()})")


def _z() -> float:
    from enstune.forecast import Z

    return Z


def _setting(trial: dict[str, Any]) -> str:
    p = trial["params"]
    return f"lr×{p['lr_mult']:g}/ep×{p['epoch_mult']:g}"


def main() -> None:
    """Run the studies (members already in the home's cache are reused), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="comma-separated seeds")
    parser.add_argument("--home", help="ENSTUNE_HOME to use (default: a fresh temporary directory)")
    parser.add_argument("--landscapes", default=",".join(LANDSCAPES), help="comma-separated templates")
    parser.add_argument("--only", default=f"{TEMPLATE},grid-median",
                        help=f"comma-separated strategies: {', '.join(s for s in STRATEGIES if s != UNPRUNED)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a template override for every study, as in `enstune study create --set`")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = [s for s in args.only.split(",") if s != UNPRUNED]
    if unknown := [s for s in strategies if s not in STRATEGIES]:
        parser.error(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    os.environ["ENSTUNE_HOME"] = args.home or tempfile.mkdtemp(prefix="enstune-half-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    landscapes = args.landscapes.split(",")
    _run(landscapes, strategies, seeds, args.set)
    report(landscapes, strategies, seeds)


if __name__ == "__main__":
    main()
