"""The cyclical variants of the StarSSE paper's Appendix D: Standard SSE, FGE and cSGLD."""

import dataclasses
import math

import pytest
import torch
from torch import nn

import enstune.methods.csgld  # noqa: F401  (registration)
import enstune.methods.fge  # noqa: F401
import enstune.methods.standard_sse  # noqa: F401
from conftest import with_pretrained
from enstune.checks import load_checked
from enstune.config import Task, TrialConfig
from enstune.members import Workspace
from enstune.methods import MemberJob, first_member, get_method
from enstune.errors import ConfigError
from enstune.methods.csgld import TEMPERATURE, langevin_noise, sgld_cycle
from enstune.optim import make_optimizer
from enstune.recipe import Recipe
from enstune.schedules import get_schedule
from enstune.storage import open_artifacts
from enstune.training import train

FT = Recipe(epochs=10, lr=0.1, weight_decay=1e-4, batch_size=32, warmup_epochs=1)
CPU = torch.device("cpu")


def cfg(method: str, members: int = 5, lr_mult: float = 4.0, epoch_mult: float = 0.35, recipe: Recipe = FT,
        options: tuple = ()) -> TrialConfig:
    return TrialConfig(task=Task(), recipe=recipe, method=method, members=members, lr_mult=lr_mult,
                       epoch_mult=epoch_mult, seed=3, options=options)


# --- plans -----------------------------------------------------------------------------------------------


def test_standard_sse_is_a_chain_of_equal_cycles_from_the_checkpoint():
    jobs = get_method("standard-sse").plan(cfg("standard-sse"))
    assert get_method("standard-sse").shared_members == 0
    assert [j.parent for j in jobs] == [None, 1, 2, 3, 4] and jobs[0].checkpoint == 0
    assert all(j.recipe.lr == pytest.approx(0.4) and j.recipe.epochs == 3 and j.recipe.schedule == "cosine"
               for j in jobs)
    assert jobs[0].recipe.warmup_epochs == 1, "the first cycle keeps the x1 warm-up"
    assert all(j.recipe.warmup_epochs == 0 for j in jobs[1:])
    assert jobs[0] != first_member(cfg("standard-sse")), "member 1 trains with the trial's cycle"
    unit = get_method("standard-sse").plan(cfg("standard-sse", lr_mult=1, epoch_mult=1))[0]
    assert unit == first_member(cfg("standard-sse")), "at x1 / x1 it is the shared fine-tune"


def test_fge_cycles_are_triangular_and_carry_momentum():
    jobs = get_method("fge").plan(cfg("fge", recipe=dataclasses.replace(FT, cycle_warmup=True)))
    assert jobs[0] == first_member(cfg("fge", recipe=dataclasses.replace(FT, cycle_warmup=True)))
    assert [j.parent for j in jobs] == [None, 1, 2, 3, 4]
    for j in jobs[1:]:
        assert (j.recipe.schedule, j.recipe.epochs, j.recipe.lr) == ("fge", 3, pytest.approx(0.4))
        assert j.recipe.warmup_epochs == 0 and j.recipe.warmup_steps == 0, "the triangle's rise is the warm-up"
        assert j.make == "train" and j.options == (("carry_optimizer", True),)


@pytest.mark.parametrize("epoch_mult, epochs, spans", [
    (0.6, 6, [(0, 4), (4, 5), (5, 6), (0, 4), (4, 5), (5, 6), (0, 4)]),  # exploration in each first job
    (0.35, 3, [(0, 1), (1, 2), (2, 3), (0, 1), (1, 2), (2, 3), (0, 1)]),
    (0.25, 2, [(0, 1), (1, 2), (0, 1), (1, 2), (0, 1), (1, 2), (0, 1)]),  # shorter than 3: a sample per epoch
    (0.15, 1, [(0, 1)] * 7),
])
def test_csgld_samples_the_last_three_epochs_of_each_cycle(epoch_mult, epochs, spans):
    jobs = get_method("csgld").plan(cfg("csgld", members=8, epoch_mult=epoch_mult))
    assert len(jobs) == 8 and all(j.member for j in jobs) and jobs[0] == first_member(cfg("csgld"))
    assert [j.parent for j in jobs] == [None, 1, 2, 3, 4, 5, 6, 7], "one trajectory"
    later = jobs[1:]
    assert [j.option("span") for j in later] == spans
    assert all(j.make == "langevin" and j.recipe.epochs == epochs and j.recipe.schedule == "cosine" for j in later)
    # csgmcmc's cSGLD is plain SGD (momentum 1 - alpha, alpha 1) at the cycle's lr.
    assert all(j.recipe.momentum == 0 and j.recipe.lr == pytest.approx(0.4) for j in later)
    assert all(j.recipe == sgld_cycle(FT, 4.0, epoch_mult) for j in later)
    assert {j.option("sampling_from") for j in later} == {epochs - min(3, epochs)}
    assert {j.option("temperature") for j in later} == {TEMPERATURE} and TEMPERATURE == pytest.approx(1 / 50000)


def test_csgld_refuses_an_optimizer_without_an_sgld_step():
    with pytest.raises(ConfigError, match="method csgld samples with SGD; finetune.optimizer is 'adamw'"):
        load_checked("csgld-demo", ["finetune.optimizer='adamw'"])


def test_csgld_reads_its_temperature_from_the_spec_options():
    jobs = get_method("csgld").plan(cfg("csgld", options=(("temperature", 0.5),)))
    assert {j.option("temperature") for j in jobs[1:]} == {0.5}
    assert {k: s.default for k, s in get_method("csgld").options.items()} == {"temperature": TEMPERATURE}


@pytest.mark.parametrize("name", ["standard-sse", "fge", "csgld"])
def test_templates_load(name):
    demo, cifar = load_checked(f"{name}-demo"), load_checked(f"{name}-cifar100")
    assert demo.method == cifar.method == name and demo.task.dataset == "demo" and cifar.task.dataset == "cifar100"
    assert cifar.finetune.epochs == 25 and cifar.finetune.lr == 5e-3, "Table 2's x1 recipe (SV ResNet-50)"
    if name == "csgld":
        assert cifar.options == {"temperature": 2e-5} and cifar.members == 13


# --- Langevin noise --------------------------------------------------------------------------------------


def test_langevin_noise_has_the_sgld_scale_on_trainable_weights_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(200, 500), nn.Linear(500, 10))
    net[1].requires_grad_(False)
    lr, temperature, examples = 0.05, 0.5, 100
    add = langevin_noise(temperature, examples, torch.Generator().manual_seed(1), quiet=2)
    before = [p.detach().clone() for p in net.parameters()]
    add(net, lr)
    add(net, lr)
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters())), "no noise in the quiet steps"
    add(net, lr)
    delta = net[0].weight.detach() - before[0]
    expected = math.sqrt(2 * lr * temperature / examples)  # 0.0224
    assert delta.std().item() == pytest.approx(expected, rel=0.1)
    assert abs(delta.mean().item()) < 0.05 * expected
    assert torch.equal(net[1].weight, before[2]), "frozen weights stay"
    held = net[0].weight.detach().clone()
    add(net, 4 * lr)
    assert (net[0].weight.detach() - held).std().item() == pytest.approx(2 * expected, rel=0.1), "std ∝ sqrt(lr)"
    still = [p.detach().clone() for p in net.parameters()]
    langevin_noise(0.0, examples, torch.Generator())(net, lr)
    assert all(torch.equal(a, p) for a, p in zip(still, net.parameters())), "temperature 0: plain SGD"


@pytest.mark.parametrize("seed", [0, 1])
def test_the_cycles_plain_sgd_with_langevin_noise_samples_the_posterior_at_its_temperature(seed):
    # A quadratic loss k θ²/2 per weight: the posterior exp(-N loss / T) has variance T / (N k). The cycle's
    # plain SGD with the noise reaches it (1 / (1 - lr k / 2) = 1.005 of it at lr k = 0.01); the recipe's
    # momentum 0.9 at a tenth of the lr, which moves as far, with the same noise rule samples it 1 - 0.9 as hot.
    k, temperature, examples = 2.0, 0.5, 100
    ratios = []
    for recipe in (sgld_cycle(Recipe(lr=5e-3, weight_decay=0.0), 1.0, 1.0), Recipe(lr=5e-4, weight_decay=0.0)):
        model = nn.Module()
        model.theta = nn.Parameter(torch.zeros(20000))
        opt = make_optimizer(model, recipe)
        add = langevin_noise(temperature, examples, torch.Generator().manual_seed(seed))
        for _ in range(1500):  # mixed after a few hundred steps (1 / (lr k) = 100)
            opt.zero_grad()
            (0.5 * k * model.theta.square().sum()).backward()
            opt.step()
            add(model, opt.param_groups[0]["lr"])
        ratios.append(model.theta.detach().var().item() / (temperature / (examples * k)))
    # Measured at seeds 0-3 (ATEN_CPU_CAPABILITY default and avx2 alike): 0.987-1.012 and 0.108-0.110.
    assert recipe.momentum == 0.9 and 0.97 < ratios[0] < 1.04 and 0.08 < ratios[1] < 0.14, ratios


# --- through the workspace on the demo task --------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory, pretrained):
    root = with_pretrained(tmp_path_factory.mktemp("cyclical"), pretrained)
    return Workspace(load_checked("starsse-demo").task, root, artifacts=open_artifacts(str(root / "artifacts")))


def demo_cfg(method: str, members: int, epoch_mult: float = 1.0, **kw) -> TrialConfig:
    recipe = dataclasses.replace(load_checked("starsse-demo").finetune, epochs=6, lr=0.01)
    return TrialConfig(task=Task(), recipe=recipe, method=method, members=members, lr_mult=2.0,
                       epoch_mult=epoch_mult, seed=0, **kw)


def run_plan(ws, jobs: list[MemberJob]) -> dict:
    done = {}
    for job in jobs:
        done[job.index] = ws.run(job, done.get(job.parent), CPU, refs={r: done[r] for r in job.refs})
    return done


def fresh(result):
    """``result`` with its own copy of the extras: the "train" maker hands them to the optimizer, which steps them."""
    return dataclasses.replace(result, extras={k: v.clone() for k, v in result.extras.items()})


def momentum(extras: dict) -> dict:
    return {k: v for k, v in extras.items() if k.endswith("/momentum_buffer")}


def check_members(ws, results: dict) -> None:
    """Distinct members that fit the task, and an ensemble at least as good as its average member."""
    labels = ws.data.val.y
    accs = [(r.val_probs.argmax(1) == labels).float().mean().item() for r in results.values()]
    ens = (torch.stack([r.val_probs for r in results.values()]).mean(0).argmax(1) == labels).float().mean().item()
    assert min(accs) > 0.5, accs  # ten classes: chance is 0.1
    assert ens >= sum(accs) / len(accs) - 0.01
    states = [r.state for r in results.values()]
    assert all(not torch.equal(a["head.weight"], b["head.weight"]) for a, b in zip(states, states[1:]))


def test_standard_sse_trains_every_cycle_alike_through_the_workspace(ws):
    jobs = get_method("standard-sse").plan(demo_cfg("standard-sse", members=3, epoch_mult=2.0))
    results = run_plan(ws, jobs)
    check_members(ws, results)
    assert [r.epochs for r in results.values()] == [12, 12, 12], "x2 epochs in every cycle, the first included"


def test_fge_hands_one_momentum_buffer_per_trainable_weight_to_the_next_member(ws):
    cfg = demo_cfg("fge", members=3, epoch_mult=0.5)
    jobs = get_method("fge").plan(cfg)
    results = run_plan(ws, jobs)
    check_members(ws, results)
    assert results[1].extras == {}, "the shared fine-tune keeps no optimizer state"
    model = ws.model_from(results[2].state, CPU)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    buffers = momentum(results[2].extras)
    assert len(buffers) == len(trainable) == len(results[2].extras)
    assert [buffers[f"optimizer/{n}/momentum_buffer"].shape for n, _ in trainable] == [p.shape for _, p in trainable]
    assert all(b.abs().sum() > 0 for b in buffers.values())
    # Member 3 again, with and without member 2's momentum: the carried state changes the weights.
    carried = ws.train("k", jobs[2], fresh(results[2]), CPU)
    again = ws.train("k", jobs[2], fresh(results[2]), CPU)
    assert all(torch.equal(again.state[k], v) for k, v in carried.state.items()), "deterministic"
    alone = ws.train("k", dataclasses.replace(jobs[2], options=()), results[2], CPU)
    weights = [name for name, _ in model.named_parameters()]
    gap = max((carried.state[k] - alone.state[k]).abs().max().item() for k in weights)
    step = max((carried.state[k] - results[2].state[k]).abs().max().item() for k in weights)
    assert gap > 0.1 * step, (gap, step)
    assert alone.extras == {}


def test_fge_member_job_runs_low_peak_low_in_the_training_loop(ws):
    recipe = dataclasses.replace(get_method("fge").plan(demo_cfg("fge", members=2))[1].recipe, epochs=2)
    lrs = []
    train(ws.checkpoints.backbone(0), ws.split("train", CPU), recipe, seed=0, after_step=lambda _m, lr: lrs.append(lr))
    assert len(lrs) == 8 and lrs[-1] == pytest.approx(0.01 * recipe.lr) and max(lrs) == pytest.approx(recipe.lr)
    assert lrs.index(max(lrs)) == 3


def test_csgld_samples_through_the_workspace_with_langevin_noise(ws):
    cfg = demo_cfg("csgld", members=5, epoch_mult=0.5, options=(("temperature", 1.0),))
    jobs = get_method("csgld").plan(cfg)
    results = run_plan(ws, jobs)
    check_members(ws, results)
    assert [r.epochs for r in results.values()] == [6, 1, 1, 1, 1], "3-epoch cycles: samples at each epoch end"
    assert all(results[k].extras == {} for k in (2, 3, 4, 5)), "plain SGD: no momentum to carry"

    # Member 2's job over two epochs with the sampling phase from the second: without noise it is the train
    # maker over the span with the optimizer carried, bit for bit; with noise it moves by about the Langevin
    # variance summed over the second epoch's steps (over both epochs it would be 1.6 times as large).
    job = jobs[1]

    def member_two(**options):
        return dataclasses.replace(job, options=tuple(sorted(({"span": (0, 2), "sampling_from": 1} | options).items())))

    quiet = ws.train("k", member_two(temperature=0.0), results[1], CPU)
    plain = ws.train("k", dataclasses.replace(job, make="train", options=(("carry_optimizer", True), ("span", (0, 2)))),
                     results[1], CPU)
    assert all(torch.equal(plain.state[k], v) for k, v in quiet.state.items())
    noisy = ws.train("k", member_two(temperature=1.0), results[1], CPU)
    cosine = get_schedule("cosine")  # 3 epochs of 4 steps (99 digits in batches of 32)
    variance = sum(2 * job.recipe.lr * cosine(s, 12, 0) * 1.0 / len(ws.data.train) for s in range(4, 8))
    diff = noisy.state["features.1.weight"] - quiet.state["features.1.weight"]
    assert diff.std().item() == pytest.approx(math.sqrt(variance), rel=0.2)

    # A sample is its seed's: the member again from its parent, whose extras are read, not stepped.
    kept = {k: v.clone() for k, v in results[2].extras.items()}
    again = ws.train("k", jobs[2], results[2], CPU)
    assert all(torch.equal(again.state[k], v) for k, v in results[3].state.items())
    assert all(torch.equal(results[2].extras[k], v) for k, v in kept.items())
