"""Members trained once across workers: four `enstune study run` workers started at once on one StarSSE study.

    python benchmarks/claims.py                              # embedded journal in a fresh runs directory
    python benchmarks/claims.py --storage URL                # any storage (a fresh study name each run)
    python benchmarks/claims.py --workers 8 --set members=5  # more workers, other spec values

Every worker needs member 1 (the plain fine-tune all StarSSE trials share) at the start of its
first trial. Prints how many trials trained member 1 (goal: 1), the member trainings of all
trials against the number of distinct member keys (goal: equal), how many claims found another worker
training the member, and the wall time of the workers (the demo checkpoints
are pre-trained before they start).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# A StarSSE demo study of a few minutes on 2 CPU cores with four workers.
DEFAULT_SET = ["n_trials=8", "members=3", "pruner='none'", 'evaluate=["calibration"]']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=None, help="storage URL (default: an embedded journal)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=None,
                        help=f"spec values (default: {' '.join(DEFAULT_SET)})")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="enstune-claims-bench-"))
    os.environ["ENSTUNE_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optuna

    from enstune import study as st
    from enstune.claims import companion_name
    from enstune.members import Workspace
    from enstune.storage import mask_url, open_storage

    name = f"claims-bench-{time.time_ns()}"
    st.create("starsse-demo", name=name, storage_url=args.storage, overrides=args.overrides or DEFAULT_SET)
    spec = st.load_spec(optuna.load_study(study_name=name, storage=open_storage(args.storage)))
    ws = Workspace(spec.task, home)
    for i in range(len(spec.task.checkpoints)):
        ws.checkpoints.path(i)  # pre-trained once here, not by every worker at once

    enstune = str(Path(sys.executable).parent / "enstune")
    env = {**os.environ, **({"ENSTUNE_STORAGE": args.storage} if args.storage else {})}
    start = time.perf_counter()
    workers = [subprocess.Popen([enstune, "study", "run", name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env) for _ in range(args.workers)]
    errors = [err.strip().splitlines()[-1] for w in workers if (err := w.communicate()[1]) and w.returncode]
    wall = time.perf_counter() - start

    storage = open_storage(args.storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    done = [t for t in trials if "member_keys" in t.user_attrs]
    trained = Counter(t.user_attrs["member_keys"][i - 1] for t in done for i in t.user_attrs["trained_members"])
    keys = {k for t in done for k in t.user_attrs["member_keys"]}
    member_1 = {t.user_attrs["member_keys"][0] for t in done}
    try:
        claims = storage.get_all_trials(storage.get_study_id_from_name(companion_name(name)))
    except KeyError:  # workers that claim nothing (no heartbeats, or a version without claims)
        claims = []
    waits = sum(c.state == optuna.trial.TrialState.FAIL for c in claims)
    print(f"storage {mask_url(args.storage)}, {args.workers} workers, spec {' '.join(args.overrides or DEFAULT_SET)}")
    print(f"trials: {len(trials)} ({sum(t.state.name == 'COMPLETE' for t in trials)} complete)")
    print(f"member 1 trainings: {sum(trained[k] for k in member_1)} (goal: 1)")
    print(f"member trainings: {sum(trained.values())} for {len(keys)} distinct member keys (goal: equal)")
    print(f"claims: {len(claims)}; ended FAIL (a worker found another one training the member): {waits}")
    print(f"wall time of the workers: {wall:.1f} s")
    for e in errors:
        print(f"worker error: {e}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
