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
import os
import statistics
import tempfile
import time
from typing import Any

TEMPLATE = "starsse-demo"
UNPRUNED = "grid-unpruned"
# name -> overrides of the template: the sampler, the pruner and the study's number of trials
STRATEGIES: dict[str, list[str]] = {
    UNPRUNED: ['pruner="none"'],
    "grid-median": ['pruner="median"'],
    "grid-halving": ['pruner="halving"'],
    "grid-hyperband": ['pruner="hyperband"'],
    # the first 8 or 10 points of the grid's seeded shuffle: random search without repeats
    "grid8-halving": ["n_trials=8", 'pruner="halving"'],
    "grid10-halving": ["n_trials=10", 'pruner="halving"'],
    "tpe8-median": ['sampler="tpe"', "n_trials=8", 'pruner="median"'],
    "tpe8-halving": ['sampler="tpe"', "n_trials=8", 'pruner="halving"'],
    "tpe10-halving": ['sampler="tpe"', "n_trials=10", 'pruner="halving"'],
    "gp8-unpruned": ['sampler="gp"', "n_trials=8", 'pruner="none"'],
    "recommend-tpe12-halving": ['sampler="tpe"', "n_trials=12", 'pruner="halving"'],
}
# These start from `enstune recommend`'s proposals that the grid's choices admit, queued before the
# sampler's: the paper's optima on other datasets (the storage's own demo studies would give the answer away).
RECOMMENDED_FIRST = {"recommend-tpe12-halving"}


def _name(strategy: str, seed: int) -> str:
    return f"half-{strategy}-s{seed}"


def _run(strategies: list[str], seeds: list[int], extra: list[str]) -> None:
    from enstune.recommend import enqueue, paper_optima, rank
    from enstune.study import create, show
    from enstune.worker import run

    for seed in seeds:
        for strategy in [UNPRUNED, *strategies]:  # the unpruned grid first: it trains every member
            start = time.perf_counter()
            name = _name(strategy, seed)
            _, created = create(TEMPLATE, name, overrides=[f"space.seed.choices=[{seed}]", f"seed={seed}",
                                                           "evaluate=[]", *STRATEGIES[strategy], *extra])
            if created and strategy in RECOMMENDED_FIRST:
                spec = show(name)["spec"]
                enqueue(name, rank(spec["task"]["dataset"], spec["method"], paper_optima())[:5], spec["method"])
            study = run(name)
            print(f"{name}: {len(study.trials)} trials in {time.perf_counter() - start:.0f} s", flush=True)


def _cost(trials: list[dict[str, Any]]) -> int:
    """Epochs of members 2..K the trials asked for (member 1 is every trial's shared fine-tune)."""
    return sum(sum(t["user_attrs"].get("member_epochs", [])[1:]) for t in trials)


def _best(trials: list[dict[str, Any]]) -> dict[str, Any]:
    return max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])


def _outcome(strategy: str, seed: int) -> tuple[int, float, float, dict[str, Any]]:
    """One strategy on one seed: cost, shortfall from the unpruned grid's best, its paired SE, the best trial."""
    from enstune.evaluation import unpack_correct
    from enstune.regimes import paired_se
    from enstune.study import show

    trials = show(_name(strategy, seed))["trials"]
    ref, best = _best(show(_name(UNPRUNED, seed))["trials"]), _best(trials)
    se = paired_se(unpack_correct(ref["user_attrs"]["val_correct"]), unpack_correct(best["user_attrs"]["val_correct"]))
    return _cost(trials), ref["value"] - best["value"], se, best


def report(strategies: list[str], seeds: list[int]) -> None:
    """Print one row per strategy: cost share per seed and mean, optimum found, shortfall."""
    from enstune.study import show

    grid = {s: show(_name(UNPRUNED, s))["trials"] for s in seeds}
    print(f"\nUnpruned {TEMPLATE} grid: cycle member-epochs (members 2..K) "
          + ", ".join(f"seed {s} {_cost(grid[s])}" for s in seeds)
          + "; best validation " + ", ".join(f"{b['value']:.4f} {_setting(b)}" for b in map(_best, grid.values())))
    print(f"\n{'strategy':<24} {'cost share per seed':<{9 * len(seeds)}} {'mean':>6}  found  "
          f"{'shortfall (acc)':>15}  {'in SE':>6}  best found per seed")
    for strategy in [UNPRUNED, *strategies]:
        rows = [_outcome(strategy, s) for s in seeds]
        shares = [row[0] / _cost(grid[s]) for row, s in zip(rows, seeds)]
        found = sum(gap <= se for _, gap, se, _ in rows)
        units = [gap / se if se else 0.0 for _, gap, se, _ in rows]
        marked = "".join(f"{x:.3f}{' ' if gap <= se else '*'}   " for x, (_, gap, se, _) in zip(shares, rows))
        print(f"{strategy:<24} {marked} {statistics.mean(shares):>6.3f}  "
              f"{found}/{len(seeds)}    {statistics.mean(row[1] for row in rows):>+15.4f}  "
              f"{statistics.mean(units):>+6.2f}  {' '.join(_setting(row[3]) for row in rows)}")


def _setting(trial: dict[str, Any]) -> str:
    p = trial["params"]
    return f"lr×{p['lr_mult']:g}/ep×{p['epoch_mult']:g}"


def main() -> None:
    """Run the studies (members already in the home's cache are reused), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds")
    parser.add_argument("--home", help="ENSTUNE_HOME to use (default: a fresh temporary directory)")
    parser.add_argument("--only", help=f"comma-separated strategies (default: all): {', '.join(STRATEGIES)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a template override for every study, as in `enstune study create --set`")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = [s for s in (args.only.split(",") if args.only else STRATEGIES) if s != UNPRUNED]
    if unknown := [s for s in strategies if s not in STRATEGIES]:
        parser.error(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    os.environ["ENSTUNE_HOME"] = args.home or tempfile.mkdtemp(prefix="enstune-half-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _run(strategies, seeds, args.set)
    report(strategies, seeds)


if __name__ == "__main__":
    main()
