"""SPRO (Benton et al. 2021): a simplex of low loss grown from member 1, and members drawn uniformly from it.

Member 1 is the ×1 fine-tune and the simplex's first vertex. Each further vertex is a step job trained
with the cycle recipe so that uniform random points of the simplex spanned by the vertices so far
(earlier ones frozen) have low loss, minus ``volume_weight`` × log of the simplex's volume, which
keeps it from collapsing. Members 2..K are uniform random points of the finished simplex with their
BatchNorm statistics re-estimated (StarSSE paper, Appendix C: two vertices, a 2-simplex).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from enstune.config import TrialConfig
from enstune.errors import ConfigError
from enstune.methods._base import (BN_IMAGES, Bench, Made, MemberJob, MemberResult, Method, State, first_member, member_seed,
                                   recalibrated)
from enstune.methods._registry import register_maker, register_method
from enstune.settings import Setting

# Added to the Gram matrix of the edges (squared weight distance): a vertex starts at the centroid of
# the earlier ones, where the simplex is flat and its log volume -inf. The reference code adds 1e-4
# to the squared volume for the same reason.
JITTER = 1e-4


def log_volume(vertices: torch.Tensor, jitter: float = 0.0) -> torch.Tensor:
    """Log of the k-volume of the simplex whose k+1 vertices are the rows of ``vertices``."""
    edges = vertices[1:] - vertices[:1]
    return gram_log_volume(edges @ edges.T, jitter)


def gram_log_volume(gram: torch.Tensor, jitter: float = 0.0) -> torch.Tensor:
    """Log of the k-volume of a simplex from the k×k Gram matrix of its edges from one vertex: sqrt(det) / k!."""
    k = len(gram)
    # In float64: the determinant multiplies k squared lengths of possibly similar size.
    eye = torch.eye(k, dtype=torch.float64, device=gram.device)
    return 0.5 * torch.logdet(gram.double() + jitter * eye) - math.lgamma(k + 1)


def simplex_weights(n: int, generator: torch.Generator) -> torch.Tensor:
    """Weights of a uniform random point of a simplex with ``n`` vertices: Dirichlet(1), drawn from ``generator``."""
    # Normalised Exp(1) draws are Dirichlet(1); torch.distributions cannot take a generator, and a
    # member's point must follow from its seed alone.
    draws = torch.empty(n, dtype=torch.float64).exponential_(generator=generator)
    return (draws / draws.sum()).float()


def _place(model: nn.Module, vertices: list[State], weights: torch.Tensor) -> None:
    """Set ``model``'s parameters (not its buffers) to the point ``weights`` of the simplex of ``vertices``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(sum(float(w) * v[name].to(p.device, p.dtype) for w, v in zip(weights, vertices)))


class _Point(nn.Module):
    """A parameter read as ``weights @ (fixed vertices, trainable vertex)``: its original is the trainable vertex."""

    def __init__(self, fixed: list[torch.Tensor], weights: torch.Tensor) -> None:
        super().__init__()
        # Plain attributes: no state dict entry, no DDP broadcast. The weights stay on the CPU, where
        # they are drawn, and enter as numbers: no copy to the device, and autocast leaves the point alone.
        self.fixed, self.weights = fixed, weights

    def forward(self, vertex: torch.Tensor) -> torch.Tensor:
        *fixed, last = self.weights.tolist()
        point = vertex * last
        for w, f in zip(fixed, self.fixed):
            point = point.add(f, alpha=w)
        return point


@contextlib.contextmanager
def on_simplex(model: nn.Module, fixed: list[State], weights: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Within: each parameter of ``model`` is the point ``weights`` of the simplex of ``fixed`` and its own value.

    Yields the trainable vertex's tensors (what the optimizer sees); on exit the parameters hold them again.
    """
    owners = dict(model.named_modules())
    names = [name for name, _ in model.named_parameters()]
    placed: list[tuple[nn.Module, str]] = []
    try:
        for name in names:
            owner, _, leaf = name.rpartition(".")
            module = owners[owner]
            p = getattr(module, leaf)
            parametrize.register_parametrization(module, leaf, _Point([v[name].to(p.device, p.dtype) for v in fixed],
                                                                      weights))
            placed.append((module, leaf))
        yield [module.parametrizations[leaf].original for module, leaf in placed]
    finally:
        for module, leaf in placed:
            parametrize.remove_parametrizations(module, leaf, leave_parametrized=False)


def _volume_term(fixed: list[State], names: list[str], vertex: list[torch.Tensor], weight: float,
                 device: torch.device) -> Callable[..., torch.Tensor]:
    """The loop's extra loss: −``weight`` × log volume of the simplex of ``fixed`` and the trainable ``vertex``."""
    corners = [torch.cat([v[n].to(device, torch.float32).reshape(-1) for n in names]) for v in fixed]
    base = corners[0]
    edges = torch.stack([c - base for c in corners])[1:]  # from member 1 to the frozen vertices
    fixed_gram = edges @ edges.T

    def term(*_: object) -> torch.Tensor:
        with torch.autocast(device.type, enabled=False):  # a Gram matrix of weight vectors, not of activations
            edge = torch.cat([t.float().reshape(-1) for t in vertex]) - base
            # The trainable edge's row and column of the Gram matrix by dot products: the backward of a
            # matrix product of all the edges is many times slower on a CPU.
            cross = edges @ edge
            last = torch.cat([cross, (edge @ edge)[None]])
            gram = torch.cat([torch.cat([fixed_gram, cross[:, None]], 1), last[None]])
            return -weight * gram_log_volume(gram, JITTER).float()

    return term


@register_maker("spro-vertex")
def train_vertex(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """The simplex's next vertex: starts at the centroid of the vertices ``refs`` and trains, with them frozen, the
    loss at a uniform random point of their simplex with it (one point per step) minus λ log the simplex's volume."""
    fixed = [refs[i].state for i in sorted(refs)]
    _place(model, fixed, torch.full((len(fixed),), 1 / len(fixed)))  # the reference code's start
    generator = torch.Generator().manual_seed(job.seed)
    weights = simplex_weights(len(fixed) + 1, generator)

    def resample(*_: object) -> None:
        weights.copy_(simplex_weights(len(weights), generator))

    names = [name for name, _ in model.named_parameters()]
    with on_simplex(model, fixed, weights) as vertex:
        weight = float(job.option("volume_weight", 0.0))
        extra = _volume_term(fixed, names, vertex, weight, bench.device) if weight else None
        stats = bench.train(model, job, extra=extra, after_step=resample)
    return Made(stats.epochs)


@register_maker("spro-sample")
def sample_point(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """A uniform random point of the simplex of the vertices ``refs`` (drawn from the job's seed), BatchNorm
    re-estimated; its simplex weights are kept in the extras."""
    weights = simplex_weights(len(refs), torch.Generator().manual_seed(job.seed))
    _place(model, [refs[i].state for i in sorted(refs)], weights)
    bench.recalibrate(model, int(job.option("bn_images", BN_IMAGES)))
    return Made(0, {"simplex_weights": weights})


@register_method
class SPRO(Method):
    name = "spro"
    description = ("member 1 with the ×1 recipe; a simplex grown from it, one vertex at a time, with the cycle "
                   "recipe and a volume reward; members 2..K uniform random points of it")
    shared_members = 1
    reads = frozenset({"lr_mult", "epoch_mult"})
    # simplex_dim: vertices trained besides member 1 (2: a 2-simplex, Appendix C); volume_weight: λ.
    options = {"simplex_dim": Setting(2, "vertices trained besides member 1", low=1, high=64),
               "volume_weight": Setting(1e-5, "λ, the weight of the simplex's log-volume", low=0.0)}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        first = first_member(cfg)
        if cfg.members == 1:
            return [first]
        dim = cfg.option("simplex_dim", self.options["simplex_dim"].default)
        weight = cfg.option("volume_weight", self.options["volume_weight"].default)
        if dim != int(dim) or not 1 <= dim <= 64:
            raise ConfigError(f"options.simplex_dim must be a whole number in [1, 64], got {dim=}")
        if not weight >= 0:
            raise ConfigError(f"options.volume_weight must be >= 0, got {weight=}")
        dim = int(dim)
        cycle = first.recipe.cycle(cfg.lr_mult, cfg.epoch_mult)
        vertices = [MemberJob(j, cycle, member_seed(cfg.seed, j), parent=1, refs=tuple(range(1, j)), make="spro-vertex",
                              options=(("volume_weight", weight),), member=False) for j in range(2, dim + 2)]
        # The vertices' recipe and settings are in each sample's key, which names its parent, not the vertices it reads.
        samples = [MemberJob(k, cycle, member_seed(cfg.seed, k), parent=1, refs=tuple(range(1, dim + 2)),
                             make="spro-sample",
                             options=recalibrated((("simplex_dim", dim), ("volume_weight", weight))))
                   for k in range(dim + 2, dim + 1 + cfg.members)]
        return [first, *vertices, *samples]
