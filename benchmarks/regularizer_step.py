"""Training-step time with each regularizer, relative to the plain step (CPU).

    python benchmarks/regularizer_step.py                  # demo MLP and timm resnet50 at 32x32
    python benchmarks/regularizer_step.py --models demo_mlp --steps 20

Each row: a model, a regularizer (RTD at batch subsamples 32, 64 and 128), the median time of
one SGD step (forward, loss with the term, backward, update) and its ratio to the plain step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from enstune.models import classifier_prefix, create_model
from enstune.regularizers import Context, get_regularizer, list_regularizers
from enstune.training import tap_features

SHAPES = {"demo_mlp": ((1, 8, 8), 10, 128), "resnet50": ((3, 32, 32), 100, 128)}  # input, classes, batch


def _step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, extra: Callable | None, steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    features: list[torch.Tensor] = []
    hook = tap_features(model, "", features)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        features.clear()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if extra is not None:
            loss = loss + extra(model, x, y, features[0], logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    hook.remove()
    return statistics.median(times)


def main() -> None:
    """Print the step times and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo_mlp,resnet50")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<10} {'regularizer':<12} {'step ms':>9} {'ratio':>6}")
    for name in args.models.split(","):
        shape, classes, batch = SHAPES[name]
        torch.manual_seed(0)
        x, y = torch.rand(batch, *shape), torch.randint(0, classes, (batch,))
        reference = create_model(name, classes).state_dict()

        def build(state: dict[str, torch.Tensor], name: str = name, classes: int = classes) -> torch.nn.Module:
            model = create_model(name, classes)
            model.load_state_dict(state)
            return model

        ones = {k: torch.ones_like(v) for k, v in build(reference).named_parameters()}
        ctx = Context({1: reference, 2: reference}, build, classifier_prefix(build(reference)), 0,
                      pretrained=lambda reference=reference, ones=ones: (reference, ones))
        plain = _step_time(build(reference), x, y, None, args.steps)
        print(f"{name:<10} {'plain':<12} {plain * 1000:>9.1f} {1.0:>6.2f}", flush=True)
        terms: list[tuple[str, Callable]] = [(r, get_regularizer(r).make(ctx)) for r in list_regularizers()
                                              if r != "rtd"]
        terms += [(f"rtd@{sub}", get_regularizer("rtd").make(dataclasses.replace(ctx, options={"subsample": sub})))
                  for sub in (32, 64, 128)]
        for label, term in terms:
            t = _step_time(build(reference), x, y, term, args.steps)
            print(f"{name:<10} {label:<12} {t * 1000:>9.1f} {t / plain:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
