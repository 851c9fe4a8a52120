"""Per-trial storage cost of enstune's workers beside plain Optuna's: the same trivial trial, on the same storage.

A trial samples the study's two parameters and reports five values, asking the pruner after
steps 2-4, and trains nothing. Plain Optuna runs it as an Optuna user would: ``optimize`` on the
storage's URL (or on ``GrpcStorageProxy``). enstune runs it in its own worker loop
(``enstune.worker.work``) and objective (``enstune.objective.Objective``, training replaced by the
trial's reports), so with every storage call a real enstune trial makes around it: the study's
census before each trial (its trials by state and best value, for the budget and the progress
line; taken with the previous trial's results), the budget check at admission, heartbeats (the
first one names the worker) and the stale-trial check, the result attributes once at the end.
Both run at each width (concurrent worker processes, started together once all are ready), on
PostgreSQL directly and through ``enstune storage proxy`` in front of it, one after the other in
the same run. Then it reads the largest enstune study's trials as every worker's storage cache
does, by Optuna's ORM and by enstune's plain rows (``enstune.storage.trials``).

    python benchmarks/storage_overhead.py                    # a throwaway local PostgreSQL
    python benchmarks/storage_overhead.py --storage URL      # a given PostgreSQL
    python benchmarks/storage_overhead.py --workers 1,8,32 --trials 20

Prints, per path and width: milliseconds per trial (mean over workers of their wall time over
their trials) for plain Optuna and for enstune, their ratio, and errors (exceptions, or trials
that did not end COMPLETE or PRUNED) of each. On a shared machine one run of each moves with
everything else running there, so each width runs ``--rounds`` times, the two in alternating
order; the figures are medians over the rounds, and each round's ratio is printed after them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

MEMBERS = 5
LR_MULT, EPOCH_MULT = [0.25, 0.5, 1, 2, 4, 8, 16], [0.25, 0.5, 1, 2, 4]
SPEC = [f"members={MEMBERS}", "sampler='random'", "prune_startup_trials=4", "heartbeat=60",
        f"space.lr_mult.choices={LR_MULT}", f"space.epoch_mult.choices={EPOCH_MULT}"]
# What a trial of K members writes at its end (before any evaluator's): the values are the size they have.
ATTRS = ("val_ens_acc", "test_ens_acc", "val_member_acc", "test_member_acc", "member_epochs", "train_seconds",
         "cached_members", "member_keys", "trained_members", "val_correct", "val_size", "input_size")
ENSTUNE = str(Path(sys.executable).with_name("enstune"))


def _curve(lr_mult: float, epoch_mult: float) -> list[float]:
    return [1 / (1 + lr_mult * epoch_mult / k) for k in range(1, MEMBERS + 1)]


def _plain(url: str, name: str, trials: int, ready: Any) -> tuple[float, int]:
    """Plain Optuna: (wall seconds, errors) for ``trials`` trials."""
    import optuna

    from enstune.storage import proxy_address

    storage: Any = url
    if url.startswith("grpc://"):
        host, port = proxy_address(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.GrpcStorageProxy(host=host, port=port)
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0))

    def objective(trial: optuna.Trial) -> float:
        acc = _curve(trial.suggest_categorical("lr_mult", LR_MULT), trial.suggest_categorical("epoch_mult", EPOCH_MULT))
        for k in range(1, MEMBERS + 1):
            trial.report(acc[k - 1], step=k)
            if 1 < k < MEMBERS and trial.should_prune():
                raise optuna.TrialPruned()
        return acc[-1]

    ready.wait()
    start = time.perf_counter()
    try:
        study.optimize(objective, n_trials=trials)
        errors = 0
    except Exception:  # noqa: BLE001 - counted and reported
        errors = 1
    return time.perf_counter() - start, errors


def _enstune(url: str, name: str, trials: int, ready: Any) -> tuple[float, int]:
    """enstune's worker loop (``enstune.worker.work``), the trivial trial for training: (wall seconds, errors)."""
    import optuna

    from enstune.objective import Objective
    from enstune.progress import Reporter
    from enstune.storage import enable_heartbeat, open_storage
    from enstune.study import spec_of, trial_config
    from enstune.pruning import make_pruner, make_sampler
    from enstune.worker import work

    storage = open_storage(url)  # as the worker does: one storage, one study load
    spec = spec_of(storage, name)
    storage = enable_heartbeat(storage, spec.heartbeat)
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(spec),
                              pruner=make_pruner(spec))

    class Trivial(Objective):
        """The worker's objective (admission, outcome), its members replaced by the trivial trial's reports."""

        def run(self, trial: optuna.Trial, retry: bool) -> float:
            cfg = trial_config(trial, spec)
            acc = _curve(cfg.lr_mult, cfg.epoch_mult)
            try:
                for k in range(1, MEMBERS + 1):
                    trial.report(acc[k - 1], step=k)
                    if 1 < k < MEMBERS and trial.should_prune():
                        raise optuna.TrialPruned()
            finally:
                self.record(trial, dict.fromkeys(ATTRS, acc))
            return acc[-1]

    reporter = Reporter()
    objective = Trivial(spec, None, None, reporter)  # type: ignore[arg-type] - it trains nothing
    ready.wait()
    start = time.perf_counter()
    try:
        work(study, spec, objective, reporter, n_trials=trials)
        errors = 0
    except Exception:  # noqa: BLE001 - counted and reported; its missing trials count too
        errors = 1
    return time.perf_counter() - start, errors


def _close(storage: Any) -> None:
    """Let go of a storage's connection (a database pool's, or a proxy's channel)."""
    if hasattr(storage, "engine"):
        storage.engine.dispose()
    elif hasattr(storage, "close"):
        storage.close()


def _worker(kind: str, url: str, name: str, trials: int, ready: Any, queue: Any) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        queue.put((*(_plain if kind == "optuna" else _enstune)(url, name, trials, ready), ""))
    except Exception as exc:  # noqa: BLE001 - a worker that could not start: all its trials count as errors
        ready.abort()
        queue.put((float("nan"), trials, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))


def measure(ctx: Any, kind: str, url: str, workers: int, trials: int) -> tuple[float, int, set[str], str]:
    """(ms per trial, errors, why workers failed, its study) of ``workers`` processes of ``kind`` (optuna, enstune)."""
    import gc

    import optuna

    from enstune import study as st
    from enstune.storage import open_storage

    name = f"bench-{kind}-{workers}-{time.time_ns()}"
    if kind == "optuna":
        optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    else:
        st.create("starsse-demo", name=name, storage_url=url, overrides=SPEC + [f"n_trials={workers * trials}"])
    gc.collect()  # the storages opened to create it: their connections would count against the workers' limit
    ready, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kind, url, name, trials, ready, queue)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    storage = open_storage(url)
    done = optuna.load_study(study_name=name, storage=storage).get_trials()
    _close(storage)
    errors = sum(e for _, e, _ in results) + sum(t.state.name not in ("COMPLETE", "PRUNED") for t in done)
    errors += max(workers * trials - len(done), 0)
    return (sum(seconds / trials for seconds, _, _ in results) / workers * 1000, errors,
            {w for *_, w in results if w}, name)


def reads(url: str, name: str, repeats: int = 5) -> str:
    """Milliseconds to read every trial of study ``name``, by Optuna's ORM and by enstune's rows (medians)."""
    from optuna.storages import RDBStorage

    from enstune.storage import open_storage

    storage = open_storage(url)
    study_id = storage.get_study_id_from_name(name)
    ms = {}
    for how, read in (("Optuna's ORM", RDBStorage._get_trials), ("enstune's rows", type(storage)._get_trials)):
        took = []
        for _ in range(repeats):
            start = time.perf_counter()
            n = len(read(storage, study_id, None, set(), -1))
            took.append((time.perf_counter() - start) * 1000)
        ms[how] = statistics.median(took)
    _close(storage)
    return f"reading the {n} trials of a {n}-trial study (every worker reads each once it ends): " + \
        ", ".join(f"{how} {t:.0f} ms" for how, t in ms.items())


def start_proxy(url: str, home: Path) -> tuple[subprocess.Popen[str], str]:
    """``enstune storage proxy`` in front of ``url`` on a free port; its process and its grpc:// URL."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([ENSTUNE, "storage", "proxy", "--storage", url, "--port", str(port)], text=True,
                            stderr=subprocess.PIPE, env={**os.environ, "ENSTUNE_HOME": str(home)})
    line = proc.stderr.readline() if proc.stderr else ""
    if not line.startswith("gRPC storage proxy on "):
        raise SystemExit(f"the storage proxy did not start: {line.strip()}")
    return proc, f"grpc://127.0.0.1:{port}"


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="a PostgreSQL URL (default: a throwaway local PostgreSQL)")
    parser.add_argument("--workers", default="1,8,32", help="widths: concurrent worker processes")
    parser.add_argument("--trials", type=int, default=20, help="trials per worker")
    parser.add_argument("--rounds", type=int, default=3, help="runs of both at each width, in alternating order")
    args = parser.parse_args()
    widths = [int(w) for w in args.workers.split(",")]

    from enstune.storage import mask_url, mask_url_text
    from enstune.storage.postgres import cluster

    home = Path(tempfile.mkdtemp(prefix="enstune-bench-"))
    home.chmod(0o755)  # the server runs as user postgres when this runs as root
    os.environ["ENSTUNE_HOME"] = str(home)
    local = None if args.storage else cluster(home)
    url = args.storage or local.up()
    # Workers fork from one process that imported enstune once: 32 copies of torch would not fit.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["enstune.worker", "enstune.objective", "enstune.storage.heartbeat"])
    proxy, proxy_url = start_proxy(url, home)
    print(f"PostgreSQL {mask_url(url)}, {args.trials} trials per worker, {os.cpu_count()} cores, {args.rounds} "
          f"round(s); ms per trial and enstune/optuna ratio: medians over the rounds (each round's ratio after "
          f"them); goal: enstune at most 1.2x plain Optuna", flush=True)
    print(f"{'path':<10} {'workers':>7} {'optuna ms':>10} {'enstune ms':>10} {'ratio':>6}  errors (optuna/enstune)  "
          f"rounds", flush=True)
    try:
        for path, target in (("database", url), ("proxy", proxy_url)):
            for i, n in enumerate(widths):
                ms: dict[str, list[float]] = {"optuna": [], "enstune": []}
                errors, why = {"optuna": 0, "enstune": 0}, set()
                for r in range(args.rounds):
                    # Each kind goes first as often as the other: a machine growing busier or quieter cancels out.
                    for kind in ("optuna", "enstune") if (i + r) % 2 == 0 else ("enstune", "optuna"):
                        took, failures, failed, name = measure(ctx, kind, target, n, args.trials)
                        if kind == "enstune" and path == "database" and n == max(widths):
                            largest = name
                        ms[kind].append(took)
                        errors[kind] += failures
                        why |= {f"{kind}: {w}" for w in failed}
                ratios = [e / o for e, o in zip(ms["enstune"], ms["optuna"])]
                print(f"{path:<10} {n:>7} {statistics.median(ms['optuna']):>10.1f} "
                      f"{statistics.median(ms['enstune']):>10.1f} {statistics.median(ratios):>6.2f}  "
                      f"{errors['optuna']}/{errors['enstune']:<20} {' '.join(f'{x:.2f}' for x in ratios)}", flush=True)
                for line in sorted(why):
                    print(f"  a worker failed to start: {mask_url_text(line, url)}", flush=True)
        print(reads(url, largest), flush=True)
    finally:
        proxy.terminate()
        proxy.wait()
        if local is not None:
            local.down(purge=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
