"""Per-trial storage overhead of enstune workers: 1, 2, 4, 8 processes, trivial trials.

Each worker runs enstune's worker loop on a StarSSE study of K=5 members whose objective
trains nothing but makes every storage call a real trial makes: the budget and admission
checks, the worker attribute, one report per member, the pruner where it may cut, the
attributes once at the end, and heartbeats on a database storage.

    python benchmarks/storage_overhead.py                 # embedded journal + a local PostgreSQL
    python benchmarks/storage_overhead.py --storage URL   # one given storage only

Prints, per storage and worker count: trials, wall seconds, per-trial overhead (mean over
workers of their wall time divided by their trials), the CPU time one trial costs in its
worker and in the local PostgreSQL server, and errors. With W workers on C cores
a worker's wall time per trial cannot fall below W/C times that CPU time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

TRIALS_PER_WORKER = 40
MEMBERS = 5
SPEC = [f"members={MEMBERS}", "sampler='random'", "prune_startup_trials=4",
        "space.lr_mult.choices=[0.25, 0.5, 1, 2, 4, 8, 16]", "space.epoch_mult.choices=[0.25, 0.5, 1, 2, 4]"]
ATTRS = ("val_ens_acc", "test_ens_acc", "val_member_acc", "test_member_acc", "member_epochs", "train_seconds",
         "cached_members")


def _worker(url: str | None, name: str, trials: int, queue: mp.Queue) -> None:
    import optuna

    from enstune.storage import open_storage
    from enstune.objective import _admit
    from enstune.study import load_spec, set_user_attrs, trial_config
    from enstune.worker import _open_trials, _pruner, _sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url, heartbeat=60)
    spec = load_spec(optuna.load_study(study_name=name, storage=storage))
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(spec), pruner=_pruner(spec))

    def objective(trial: optuna.Trial) -> float:
        _admit(trial, spec)
        trial.set_user_attr("worker", f"bench:{os.getpid()}")
        cfg = trial_config(trial, spec)
        acc: list[float] = []
        try:
            for k in range(1, MEMBERS + 1):
                acc.append(1 / (1 + cfg.lr_mult * cfg.epoch_mult / k))
                trial.report(acc[-1], step=k)
                if 1 < k < MEMBERS and trial.should_prune():
                    raise optuna.TrialPruned()
        finally:
            set_user_attrs(trial, dict.fromkeys(ATTRS, acc))
        return acc[-1]

    errors = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(trials):
        try:
            _open_trials(study, spec)
            study.optimize(objective, n_trials=1)
        except Exception:  # noqa: BLE001 - counted and reported
            errors += 1
    queue.put((time.perf_counter() - start, time.process_time() - cpu, trials, errors))


def server_cpu(server: Path | None) -> float:
    """CPU seconds the local PostgreSQL has used so far: the postmaster, its live and its ended backends."""
    if server is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((server / "data" / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:  # its own time and that of reaped backends (cutime, cstime)
            total += sum(int(f) for f in fields[11:15]) / tick
        elif ppid == postmaster:
            total += sum(int(f) for f in fields[11:13]) / tick
    return total


def measure(url: str | None, workers: int, server: Path | None) -> tuple[int, float, float, float, float, int]:
    """(trials, wall s, per-trial ms, worker and server CPU ms per trial, errors) for ``workers`` processes."""
    import optuna

    from enstune import study as st
    from enstune.storage import open_storage

    name = f"bench-{workers}-{time.time_ns()}"
    st.create("starsse-demo", name=name, storage_url=url, overrides=SPEC + [f"n_trials={workers * TRIALS_PER_WORKER}"])
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, name, TRIALS_PER_WORKER, queue)) for _ in range(workers)]
    start, server_start = time.perf_counter(), server_cpu(server)
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall, server_used = time.perf_counter() - start, server_cpu(server) - server_start
    done = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    errors = sum(e for *_, e in results) + sum(t.state.name not in ("COMPLETE", "PRUNED") for t in done)
    per_trial = sum(seconds / n for seconds, _, n, _ in results) / len(results) * 1000
    ran = sum(n for _, _, n, _ in results)
    cpu = sum(c for _, c, _, _ in results) / ran * 1000
    return len(done), wall, per_trial, cpu, server_used / ran * 1000, errors


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="one storage URL to measure (default: embedded and a local PostgreSQL)")
    parser.add_argument("--workers", default="1,2,4,8")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    from enstune.storage import mask_url
    from enstune.storage.postgres import cluster

    home = Path(tempfile.mkdtemp(prefix="enstune-bench-"))
    home.chmod(0o755)  # the server runs as user postgres when this runs as root
    os.environ["ENSTUNE_HOME"] = str(home)
    local = None
    if args.storage:
        targets = [args.storage]
    else:
        local = cluster(home)
        targets = [None, local.up()]
    print(f"{'storage':<52} {'workers':>7} {'trials':>6} {'wall s':>7} {'ms/trial':>9} {'cpu worker':>10} "
          f"{'cpu server':>10} {'errors':>6}   (CPU ms per trial; {os.cpu_count()} cores)")
    try:
        for url in targets:
            server = local.root if local is not None and url is not None else None
            for n in counts:
                trials, wall, per_trial, cpu, server_ms, errors = measure(url, n, server)
                print(f"{mask_url(url):<52} {n:>7} {trials:>6} {wall:>7.1f} {per_trial:>9.1f} {cpu:>10.1f} "
                      f"{server_ms:>10.1f} {errors:>6}", flush=True)
    finally:
        if local is not None:
            local.down(purge=True)


if __name__ == "__main__":
    main()
