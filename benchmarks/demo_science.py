"""Does the demo task show the StarSSE paper's findings? Seed-averaged, with paired statistics.

    python benchmarks/demo_science.py                        # seeds 0-3, a fresh temporary ENSTUNE_HOME
    python benchmarks/demo_science.py --seeds 0,1 --home runs-science   # keep (and reuse) the members
    python benchmarks/demo_science.py --set finetune.epochs=320         # another x1 recipe, for all three
    python benchmarks/demo_science.py --confirm ""                      # skip the fresh-seed check of (c)

Runs three studies on the embedded storage, each over a ``seed`` axis, without pruning or
evaluators: ``localde-demo``, the whole ``starsse-demo`` grid and the ``sse-demo`` grid.
Seed s trains the same member 1 in all three (its job, and so its cache key, is the same),
so every comparison below is paired by seed. Then it prints:

(a) the gain of the K-member StarSSE ensemble over member 1 at the grid's lowest multipliers,
    beside the gain of the best setting (the paper: the more-local regime barely gains);
(b) member test accuracy k = 1..K of SSE and StarSSE at the highest multipliers (SSE's
    falls cycle after cycle, StarSSE's does not);
(c) the best StarSSE setting (the highest validation accuracy averaged over the seeds)
    against Local DE: per seed the difference and McNemar's z on validation, then the mean
    difference with its standard error over seeds, on validation and on test;
(c') the same comparison on fresh seeds (``--confirm``, default 4-11): the best of the grid's
    settings, picked on the first seeds' validation accuracy, is judged on members it was not
    picked with, so its lead is not the maximum of sixteen noisy means.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from typing import Any

Setting = tuple[float, float]


def _studies(seeds: list[int], overrides: list[str], methods: tuple[str, ...] = ("localde", "starsse", "sse"),
             suffix: str = "") -> dict[str, tuple[str, list[str]]]:
    # n_trials above any grid's size: the budget is then the whole grid (the template's points × the seeds)
    common = [f"space.seed.choices={seeds}", "n_trials=100000", "evaluate=[]", 'pruner="none"', *overrides]
    # Local DE has no cycles: study create refuses a multiplier axis for it.
    plain = [o for o in common if not o.startswith(("space.lr_mult", "space.epoch_mult"))]
    return {f"science-{m}{suffix}": (f"{m}-demo", plain if m == "localde" else common) for m in methods}


def _run(studies: dict[str, tuple[str, list[str]]]) -> None:
    from enstune.study import create
    from enstune.worker import run

    for name, (template, overrides) in studies.items():
        start = time.perf_counter()
        create(template, name, overrides=overrides)
        study = run(name)
        print(f"{name}: {len(study.trials)} trials in {time.perf_counter() - start:.0f} s", flush=True)


def _complete(name: str) -> list[dict[str, Any]]:
    from enstune.study import show

    return [t for t in show(name)["trials"] if t["state"] == "COMPLETE"]


def _by_setting(trials: list[dict[str, Any]]) -> dict[Setting, dict[int, dict[str, Any]]]:
    out: dict[Setting, dict[int, dict[str, Any]]] = defaultdict(dict)
    for t in trials:
        out[(t["params"]["lr_mult"], t["params"]["epoch_mult"])][t["params"]["seed"]] = t
    return out


def _mcnemar(a: str, b: str) -> float:
    """McNemar's z of two ensembles' packed per-image correctness: accuracy difference over its paired SE."""
    from enstune.evaluation import unpack_correct
    from enstune.regimes import paired_se

    ca, cb = unpack_correct(a), unpack_correct(b)
    se = paired_se(ca, cb)
    return (sum(ca) - sum(cb)) / len(ca) / se if se else 0.0


def _mean_se(values: list[float]) -> str:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):+.4f} ± {se:.4f}"


def _gain(t: dict[str, Any], split: str) -> float:
    curve = t["user_attrs"][f"{split}_ens_acc"]
    return curve[-1] - curve[0]


def _row(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def _versus(star: dict[int, dict[str, Any]], lde: dict[int, dict[str, Any]], seeds: list[int]) -> None:
    """Per seed, then as a mean difference ± SE: StarSSE's ensemble against Local DE's."""
    diffs: dict[str, list[float]] = {"val": [], "test": []}
    for s in seeds:
        a, b = star[s], lde[s]
        for split in diffs:
            diffs[split].append(a["user_attrs"][f"{split}_ens_acc"][-1] - b["user_attrs"][f"{split}_ens_acc"][-1])
        z = _mcnemar(a["user_attrs"]["val_correct"], b["user_attrs"]["val_correct"])
        print(f"  seed {s}: validation {a['value']:.4f} vs {b['value']:.4f} (z {z:+.2f}), "
              f"test {a['user_attrs']['test_ens_acc'][-1]:.4f} vs {b['user_attrs']['test_ens_acc'][-1]:.4f}")
    print(f"  StarSSE − Local DE: validation {_mean_se(diffs['val'])}, test {_mean_se(diffs['test'])}")


def _by_seed(name: str) -> dict[int, dict[str, Any]]:
    return {t["params"]["seed"]: t for t in _complete(name)}


def report(seeds: list[int]) -> Setting:
    """Print (a), (b) and (c) from the finished studies; return the best StarSSE setting."""
    lde = _by_seed("science-localde")
    star, sse = _by_setting(_complete("science-starsse")), _by_setting(_complete("science-sse"))
    full = {k: v for k, v in star.items() if sorted(v) == sorted(seeds)}
    mean_val = {k: statistics.mean(t["value"] for t in v.values()) for k, v in full.items()}
    best = max(mean_val, key=mean_val.__getitem__)
    lowest = min(full)  # the smallest lr_mult, then the smallest epoch_mult
    highest = max(full)

    print("\n(a) StarSSE ensemble gain over member 1 (mean ± SE over seeds)")
    for name, k in (("lowest", lowest), ("best", best)):
        print(f"  {name:<7} lr×{k[0]:g} ep×{k[1]:g}: validation {_mean_se([_gain(t, 'val') for t in full[k].values()])}"
              f"  test {_mean_se([_gain(t, 'test') for t in full[k].values()])}")

    print(f"\n(b) member test accuracy k = 1..K at lr×{highest[0]:g} ep×{highest[1]:g}, mean over seeds")
    for name, by in (("SSE", sse), ("StarSSE", star)):
        runs = list(by.get(highest, {}).values())
        if runs:
            members = [statistics.mean(col) for col in zip(*(t["user_attrs"]["test_member_acc"] for t in runs))]
            ens = statistics.mean(t["user_attrs"]["test_ens_acc"][-1] for t in runs)
            print(f"  {name:<8} {_row(members)}   ensemble {ens:.3f}")

    print(f"\n(c) best StarSSE (lr×{best[0]:g} ep×{best[1]:g}, by mean validation) against Local DE, same member 1")
    _versus(full[best], lde, seeds)
    print("\n  every StarSSE setting, mean validation over seeds (Local DE "
          f"{statistics.mean(t['value'] for t in lde.values()):.4f}):")
    for k in sorted(full):
        print(f"    lr×{k[0]:<5g} ep×{k[1]:<5g} {mean_val[k]:.4f}")
    return best


def confirm(best: Setting, seeds: list[int], overrides: list[str]) -> None:
    """Run Local DE and StarSSE at ``best`` on fresh seeds and print (c')."""
    axes = [f"space.lr_mult.choices=[{best[0]}]", f"space.epoch_mult.choices=[{best[1]}]"]
    _run(_studies(seeds, [*overrides, *axes], ("localde", "starsse"), "-confirm"))
    print(f"\n(c') StarSSE lr×{best[0]:g} ep×{best[1]:g}, chosen above, against Local DE on fresh seeds")
    _versus(_by_seed("science-starsse-confirm"), _by_seed("science-localde-confirm"), seeds)


def main() -> None:
    """Run the studies (members already in the home's cache are reused), then print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated trial seeds")
    parser.add_argument("--confirm", default="4,5,6,7,8,9,10,11",
                        help="comma-separated fresh seeds, none of them in --seeds, that check (c); empty: skip")
    parser.add_argument("--home", help="ENSTUNE_HOME to use (default: a fresh temporary directory)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a template override, as in `enstune study create --set`: for all three studies, "
                             "except that multiplier axes skip Local DE")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    fresh = [int(s) for s in args.confirm.split(",") if s.strip()]
    if set(fresh) & set(seeds):
        parser.error("--confirm seeds must differ from --seeds")
    os.environ["ENSTUNE_HOME"] = args.home or tempfile.mkdtemp(prefix="enstune-science-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _run(_studies(seeds, args.set))
    best = report(seeds)
    if fresh:
        confirm(best, fresh, args.set)


if __name__ == "__main__":
    main()
