"""SPRO: the simplex's volume, its vertices' training, the members sampled from it, a trial on the demo task."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from conftest import with_pretrained
from enstune.bench import JobBench
from enstune.checks import load_checked
from enstune.config import TrialConfig
from enstune.errors import ConfigError
from enstune.members import Workspace
from enstune.methods import MemberJob, MemberResult, get_maker, get_method
from enstune.methods.spro import JITTER, _volume_term, log_volume, simplex_weights  # registers spro, its makers
from enstune.recipe import Recipe
from enstune.storage import open_artifacts

CPU = torch.device("cpu")


def cayley_menger_volume(v: torch.Tensor) -> float:
    """The k-volume of the simplex with vertices ``v`` by the Cayley–Menger determinant (pairwise distances only)."""
    k = len(v) - 1
    cm = torch.ones(k + 2, k + 2, dtype=torch.float64)
    cm[0, 0] = 0
    cm[1:, 1:] = torch.cdist(v.double(), v.double()) ** 2
    return math.sqrt((-1) ** (k + 1) * torch.linalg.det(cm).item() / (2**k * math.factorial(k) ** 2))


def test_log_volume_of_simplexes_computed_by_hand():
    rotation, _ = torch.linalg.qr(torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    shift = torch.arange(7.0, dtype=torch.float64)

    def placed(points):  # the same simplex anywhere in a 7-dimensional space
        p = torch.zeros(len(points), 7, dtype=torch.float64)
        p[:, : len(points[0])] = torch.tensor(points, dtype=torch.float64)
        return p @ rotation.T + shift

    assert log_volume(placed([[0, 0], [3, 0], [0, 4]])).exp().item() == pytest.approx(6.0)  # a right triangle
    assert log_volume(placed([[1], [6]])).exp().item() == pytest.approx(5.0)  # a segment: its length
    regular = [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]  # edge 2√2: volume (2√2)³ / (6√2) = 8/3
    assert log_volume(placed(regular)).exp().item() == pytest.approx(8 / 3)
    v = torch.randn(4, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert log_volume(v).exp().item() == pytest.approx(cayley_menger_volume(v), rel=1e-9)
    flat = placed([[0, 0], [1, 1], [2, 2]])
    assert log_volume(flat) < -10 and math.isfinite(log_volume(flat, JITTER).item()), "collinear: no area"


def test_the_training_term_is_minus_weight_log_volume_and_pushes_the_vertex_away():
    g = torch.Generator().manual_seed(2)
    fixed = [{"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)} for _ in range(2)]
    vertex = [torch.randn(3, 4, generator=g, requires_grad=True), torch.randn(5, generator=g, requires_grad=True)]
    term = _volume_term(fixed, ["a", "b"], vertex, 0.5, CPU)()
    corners = torch.stack([torch.cat([v["a"].flatten(), v["b"].flatten()]) for v in fixed]
                          + [torch.cat([t.detach().flatten() for t in vertex])])
    assert term.item() == pytest.approx(-0.5 * log_volume(corners, JITTER).item(), rel=1e-5)
    term.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in vertex)
    with torch.no_grad():  # a step down the term moves the vertex off the other two: more area
        for t in vertex:
            t -= 0.1 * t.grad
    assert _volume_term(fixed, ["a", "b"], vertex, 0.5, CPU)() < term


def test_simplex_weights_are_uniform_convex_weights_fixed_by_the_seed():
    draws = torch.stack([simplex_weights(3, g) for g in [torch.Generator().manual_seed(0)] for _ in range(4000)])
    assert (draws >= 0).all() and torch.allclose(draws.sum(1), torch.ones(4000))
    assert torch.allclose(draws.mean(0), torch.full((3,), 1 / 3), atol=0.02)
    assert (draws[:, 0] > 0.5).float().mean().item() == pytest.approx(0.25, abs=0.03), "Dirichlet(1): (1/2)^2"
    one, same, other = (simplex_weights(4, torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    assert torch.equal(one, same) and not torch.equal(one, other)


def cfg(members: int = 4, **options: float) -> TrialConfig:
    spec = load_checked("spro-demo", ["finetune.epochs=12", "finetune.lr=0.01"])
    return TrialConfig(task=spec.task, recipe=spec.finetune, method="spro", members=members, lr_mult=4,
                       epoch_mult=0.25, seed=3, options=tuple(sorted({**spec.options, **options}.items())))


def test_the_plan_is_member_one_vertices_then_samples():
    jobs = get_method("spro").plan(cfg(members=4))
    assert [(j.index, j.make, j.member) for j in jobs] == [
        (1, "train", True), (2, "spro-vertex", False), (3, "spro-vertex", False),
        (4, "spro-sample", True), (5, "spro-sample", True), (6, "spro-sample", True)]
    assert jobs[0] == get_method("starsse").plan(cfg(members=4))[0], "member 1 is shared with the other methods"
    assert [j.refs for j in jobs[1:]] == [(1,), (1, 2)] + [(1, 2, 3)] * 3
    assert all(j.parent == 1 and j.recipe == jobs[0].recipe.cycle(4, 0.25) for j in jobs[1:])
    assert jobs[1].option("volume_weight") == 1e-2 and jobs[3].option("simplex_dim") == 2
    assert len(get_method("spro").plan(cfg(members=2, simplex_dim=3))) == 5
    assert len(get_method("spro").plan(cfg(members=1))) == 1
    for bad in ({"simplex_dim": 1.5}, {"simplex_dim": 0}, {"volume_weight": -1}):
        with pytest.raises(ConfigError):
            get_method("spro").plan(cfg(**bad))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, pretrained):
    """One demo workspace for the tests that train."""
    home = with_pretrained(tmp_path_factory.mktemp("spro"), pretrained)
    return Workspace(load_checked("spro-demo").task, home, artifacts=open_artifacts(str(home / "artifacts")))


def simplex_loss(ws: Workspace, vertices: list[dict[str, torch.Tensor]], points: int = 12) -> float:
    """Mean training cross-entropy at ``points`` uniform random points of the simplex (BatchNorm on the batch)."""
    model = ws.model_from(vertices[0], CPU).train()
    x, y = next(ws.split("train", CPU).batches(10**6))
    g, losses = torch.Generator().manual_seed(99), []
    for _ in range(points):
        w = simplex_weights(len(vertices), g)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(sum(float(a) * v[name] for a, v in zip(w, vertices)))
            losses.append(F.cross_entropy(model(x), y).item())
    return sum(losses) / points


def flat(ws: Workspace, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The parameters of ``state`` as one vector (buffers left out)."""
    return torch.cat([state[n].flatten() for n, _ in ws.model_from(state, CPU).named_parameters()])


def train_vertex(ws: Workspace, vertices: list[dict[str, torch.Tensor]], weight: float) -> dict[str, torch.Tensor]:
    """The next vertex of the simplex of ``vertices`` with the real maker and training loop (the new head trains)."""
    n = len(vertices) + 1
    recipe = Recipe(epochs=8, lr=0.05, weight_decay=0.0, batch_size=32, warmup_epochs=0)
    job = MemberJob(n, recipe, 11, parent=1, refs=tuple(range(1, n)), make="spro-vertex",
                    options=(("volume_weight", weight),), member=False)
    model = ws.model_from(vertices[0], CPU)
    get_maker("spro-vertex")(JobBench(ws, job, CPU, {}, None), job, model, _result(vertices[0]),
                             {i + 1: _result(v) for i, v in enumerate(vertices)})
    assert not parametrize.is_parametrized(model) and model.state_dict().keys() == vertices[0].keys()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_vertex_trains_alone_and_lowers_the_loss_on_its_simplex(ws):
    # Member 1 as it starts: the pre-trained trunk and a new head, far from low loss on the target task.
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in ws.checkpoints.backbone(0).state_dict().items()}
    kept = {k: v.clone() for k, v in start.items()}
    second = train_vertex(ws, [start], weight=0.0)
    assert all(torch.equal(start[k], kept[k]) for k in kept), "the frozen vertex stays"
    assert (flat(ws, second) - flat(ws, start)).norm() > 0.1, "the new vertex left the centroid"
    before, after = simplex_loss(ws, [start, start]), simplex_loss(ws, [start, second])
    assert after < 0.7 * before, (before, after)

    # A third vertex, with and without the volume term: the term widens the simplex, the others stay.
    kept = {k: v.clone() for k, v in second.items()}
    plain, wide = (train_vertex(ws, [start, second], weight=w) for w in (0.0, 0.3))
    assert all(torch.equal(second[k], kept[k]) for k in kept)
    corners = [flat(ws, start), flat(ws, second)]
    small, large = (log_volume(torch.stack([*corners, flat(ws, v)])).item() for v in (plain, wide))
    assert large > small + 0.6, (small, large)  # measured: 0.82 and 2.05
    assert simplex_loss(ws, [start, second, plain]) < 0.7 * before


def test_a_trial_through_the_workspace(ws):
    jobs = get_method("spro").plan(cfg(members=3))
    done = {}
    for job in jobs:
        done[job.index] = ws.run(job, done.get(job.parent), CPU, refs={r: done[r] for r in job.refs})
    vertices = [done[i].state for i in (1, 2, 3)]
    params = [n for n, _ in ws.model_from(vertices[0], CPU).named_parameters()]
    y = ws.data.val.y
    for job in jobs[3:]:
        member = done[job.index]
        w = member.extras["simplex_weights"]
        assert (w >= 0).all() and w.sum().item() == pytest.approx(1.0) and len(w) == 3
        for name in params:  # a point of the simplex ...
            assert torch.allclose(member.state[name], sum(a * v[name] for a, v in zip(w, vertices)), atol=1e-6)
        bn = "features.2.running_mean"  # ... with its own BatchNorm statistics
        assert not torch.equal(member.state[bn], vertices[0][bn])
        assert (member.val_probs.argmax(1) == y).float().mean() > 0.5, "well above chance (0.1)"
        again = ws.train("again", job, done[1], CPU, refs={r: done[r] for r in job.refs})
        assert all(torch.equal(again.state[k], member.state[k]) for k in member.state), "the seed fixes the member"
    other = dataclasses.replace(jobs[3], seed=jobs[3].seed + 100)
    assert not torch.equal(ws.train("o", other, done[1], CPU, refs={r: done[r] for r in other.refs}).extras[
        "simplex_weights"], done[4].extras["simplex_weights"])
    keys = [done[j.index].key for j in jobs]
    assert len(set(keys)) == len(keys)
    assert ws.run(jobs[4], done[1], CPU, refs={r: done[r] for r in jobs[4].refs}).cached


def _result(state: dict[str, torch.Tensor]) -> MemberResult:
    """A finished job with weights ``state`` (a maker reads nothing else of it)."""
    return MemberResult("", state, torch.empty(0), torch.empty(0), 0, 0.0)
