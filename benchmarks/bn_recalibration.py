"""What re-estimating BatchNorm statistics costs a sampled member: member 1 re-estimated against itself.

    python benchmarks/bn_recalibration.py                    # seeds 0-3 of starsse-demo's member 1
    python benchmarks/bn_recalibration.py --seeds 0,1,2,3,4,5,6,7 --images 99,1000,5000,10000

SWAG, KFAC-Laplace and SPRO members are drawn, not trained, and their BatchNorm statistics are
re-estimated on augmented training batches. Re-estimating member 1's own statistics (its weights
unchanged) isolates what the re-estimation alone costs: with one augmented epoch of the demo's 99
images it costs member 1 a point or two of validation accuracy, a handicap every sampled member
carries. For each seed this trains member 1 of ``starsse-demo`` (the cache key any study of the
demo gives it), then prints its validation accuracy as trained and after re-estimation on at least
N augmented training images (whole epochs, cumulative averages as ``update_bn`` takes them), and
the differences.

Measured (this script, seeds 0-7, OMP_NUM_THREADS=1), differences in points of validation accuracy:

    images   ATEN_CPU_CAPABILITY=avx2                    ATEN_CPU_CAPABILITY=default
    99       -2.01 mean (-3.79 .. -1.12)                 -2.11 mean (-4.20 .. -0.69)
    5,000    +0.00 mean (-0.26 .. +0.29)                 -
    10,000   +0.01 mean (-0.20 .. +0.29)                 +0.01 mean (-0.29 .. +0.37)
    20,000   +0.03 mean (-0.26 .. +0.32)                 -
    50,000   +0.00 mean (-0.23 .. +0.32)                 -

From 5,000 images on the spread no longer narrows: member 1's own statistics, a running average
of the last few dozen batches it trained on, are an estimate with noise of their own.
enstune.methods._base.BN_IMAGES is 10,000.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch


def main() -> None:
    """Print member 1's validation accuracy as trained and re-estimated, per seed and number of images."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3", help="trial seeds whose member 1 is re-estimated")
    parser.add_argument("--images", default="99,1000,3000,10000,30000", help="augmented images per re-estimation")
    parser.add_argument("--home", default="", help="ENSTUNE_HOME to keep the members in (default: a temporary one)")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="enstune-bn-"))
    os.environ["ENSTUNE_HOME"] = str(home)

    from enstune.checks import load_checked
    from enstune.config import TrialConfig
    from enstune.bench import recalibrate_on
    from enstune.members import Workspace
    from enstune.methods import first_member
    from enstune.storage import open_artifacts
    from enstune.training import predict

    spec = load_checked("starsse-demo")
    ws = Workspace(spec.task, home, artifacts=open_artifacts(str(home / "artifacts")))
    cpu = torch.device("cpu")
    val = ws.split("val", cpu)
    images = [int(n) for n in args.images.split(",")]
    diffs: dict[int, list[float]] = {n: [] for n in images}
    print(f"{'seed':>4} {'trained':>8} " + " ".join(f"{f'{n} img':>10}" for n in images))
    for seed in (int(s) for s in args.seeds.split(",")):
        job = first_member(TrialConfig(task=spec.task, recipe=spec.finetune, method="starsse", members=1, seed=seed))
        member = ws.run(job, None, cpu)
        trained = (member.val_probs.argmax(1) == val.y).float().mean().item()
        row = []
        for n in images:
            model = ws.model_from(member.state, cpu)
            recalibrate_on(ws.split("train", cpu, job.recipe.augmentation), model, job.recipe.batch_size, n,
                           torch.Generator().manual_seed(job.seed), cpu)
            acc = (predict(model, val).argmax(1) == val.y).float().mean().item()
            diffs[n].append(acc - trained)
            row.append(f"{acc:.4f}({acc - trained:+.4f})")
        print(f"{seed:>4} {trained:8.4f} " + " ".join(f"{r:>10}" for r in row), flush=True)
    print("mean difference (min, max) per number of images:")
    for n in images:
        print(f"  {n:>6}: {statistics.mean(diffs[n]):+.4f} ({min(diffs[n]):+.4f}, {max(diffs[n]):+.4f})")


if __name__ == "__main__":
    main()
