"""The single-basin paper's ensembles: SWE, constrained and distilled ensembles (plans, Eq. 1, real training)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import enstune.methods.constrained  # noqa: F401  (registration, until the package imports it)
import enstune.methods.distilled  # noqa: F401
import enstune.methods.swe  # noqa: F401
from enstune.checks import load_checked
from enstune.config import Task, TrialConfig, load_template
from enstune.errors import ConfigError
from enstune.executor import Executor
from enstune.members import Workspace
from enstune.methods import MemberJob, first_member, get_method, regularize
from enstune.methods.distilled import TAU, distillation_term
from enstune.models import create_model
from enstune.recipe import Recipe
from enstune.storage import open_artifacts
from enstune.training import train

CPU = torch.device("cpu")
FT = Recipe(epochs=10, lr=0.1, weight_decay=1e-4, batch_size=32, warmup_epochs=1)


def cfg(method: str, members: int = 4, recipe: Recipe = FT, seed: int = 3, **options: float) -> TrialConfig:
    return TrialConfig(task=Task(), recipe=recipe, method=method, members=members, lr_mult=0.1, epoch_mult=0.5,
                       seed=seed, options=tuple(sorted(options.items())))


# ---- plans -------------------------------------------------------------------------------------


def test_swe_is_one_run_held_at_a_tenth_of_the_peak_with_a_snapshot_per_cycle():
    jobs = get_method("swe").plan(cfg("swe"))
    first = jobs[0]
    assert first.checkpoint == 0 and first.seed == first_member(cfg("swe")).seed and first.make == "train"
    assert first.recipe == dataclasses.replace(FT, schedule="swe"), "the x1 recipe, its decay held, not annealed"
    assert first.option("carry_optimizer") is True, "member 1 keeps its momentum for the run to go on"
    assert first != first_member(cfg("swe")), "not the shared x1 fine-tune, which anneals to 0"
    assert [j.parent for j in jobs] == [None, 1, 2, 3] and all(j.member for j in jobs)
    for j in jobs[1:]:
        assert j.recipe.schedule == "constant" and j.recipe.lr == pytest.approx(0.1 * FT.lr), "held where it stopped"
        assert j.recipe.epochs == 5 and j.recipe.warmup_epochs == 0 and j.recipe.warmup_steps == 0
        assert j.option("carry_optimizer") is True and j.make == "train"
    assert jobs[1:] == get_method("swe").plan(dataclasses.replace(cfg("swe"), lr_mult=4.0))[1:], "no lr_mult"
    assert get_method("swe").reads == frozenset({"alpha", "freeze", "epoch_mult"})
    # A recipe that warms up every cycle still runs on without a warm-up between snapshots.
    warm = get_method("swe").plan(cfg("swe", recipe=dataclasses.replace(FT, cycle_warmup=True)))
    assert warm[1].recipe.warmup_epochs == 0


def test_the_swe_schedule_is_the_warm_cosine_held_at_a_tenth_of_the_peak():
    from enstune.methods.swe import FLOOR
    from enstune.schedules import cosine, get_schedule

    swe = get_schedule("swe")
    assert FLOOR == 0.1, "App. C: the decay from a 0.1 peak stops at 0.01"
    # 100 steps, 10 of warm-up: the cosine over 90 steps falls below 0.1 between steps 81 (71/90 of the
    # way, 0.1060) and 82 (72/90, 0.0955), and the lr stays at 0.1 of the peak from there to the end.
    assert [swe(s, 100, 10) for s in range(82)] == [cosine(s, 100, 10) for s in range(82)]
    assert cosine(81, 100, 10) == pytest.approx(0.1060, abs=1e-4) and cosine(82, 100, 10) < FLOOR
    assert [swe(s, 100, 10) for s in range(82, 110)] == [FLOOR] * 28
    assert swe(0, 100, 20) == 0.05, "the warm-up starts below the floor, as the x1 recipe's does"


def test_swe_runs_on_at_the_lr_where_member_one_stopped(ws):
    """Through the training loop: member 1's last steps and every step of member 2 at 0.1 of the peak."""
    recipe = dataclasses.replace(SHORT, epochs=4, warmup_epochs=1)
    first, second = get_method("swe").plan(cfg("swe", members=2, recipe=recipe))
    lrs: list[list[float]] = [[], []]
    for job, seen in zip((first, second), lrs):
        model = ws.checkpoints.backbone(0)
        train(model, ws.split("train", CPU), job.recipe, seed=0, after_step=lambda _m, lr, seen=seen: seen.append(lr))
    assert len(lrs[0]) == 16 and len(lrs[1]) == 8  # 4 steps an epoch (99 digits in batches of 32)
    assert lrs[0][3] == pytest.approx(recipe.lr), "the warm-up's peak"
    assert lrs[0][-1] == pytest.approx(0.1 * recipe.lr) and min(lrs[0]) == pytest.approx(0.1 * recipe.lr)
    assert lrs[1] == pytest.approx([0.1 * recipe.lr] * 8)


def test_constrained_members_branch_off_one_trunk_at_t():
    jobs = get_method("constrained").plan(cfg("constrained", t=0.3))
    trunk, members = jobs[0], jobs[1:]
    assert not trunk.member and trunk.checkpoint == 0 and trunk.recipe == FT
    assert trunk.seed == first_member(cfg("constrained")).seed, "the trunk is the start of the shared ×1 run"
    assert trunk.options == (("carry_optimizer", True), ("span", (0, 3)))
    assert len(members) == 4 and all(j.member and j.parent == 1 and j.recipe == FT for j in members)
    assert all(j.options == (("carry_optimizer", True), ("span", (3, 10))) for j in members)
    assert len({j.seed for j in jobs}) == 5, "each member its own batch order"
    # Short runs still split inside the schedule; a one-epoch run cannot split.
    short = get_method("constrained").plan(cfg("constrained", recipe=dataclasses.replace(FT, epochs=3), t=0.05))
    assert short[0].option("span") == (0, 1) and short[1].option("span") == (1, 3)
    with pytest.raises(ConfigError, match="finetune.epochs >= 2"):
        get_method("constrained").plan(cfg("constrained", recipe=dataclasses.replace(FT, epochs=1)))
    with pytest.raises(ConfigError, match="options.t"):
        get_method("constrained").plan(cfg("constrained", t=1.0))


def test_distilled_members_start_from_member_ones_trunk_and_read_a_global_de_teacher():
    plan = get_method("distilled").plan(cfg("distilled", beta=0.3, tau=2.0, t=0.2))
    first, teachers, trunk, students = plan[0], plan[1:4], plan[4], plan[5:]
    assert first == first_member(cfg("distilled")) and first.member
    global_de = get_method("global_de").plan(cfg("global_de"))
    assert teachers == [dataclasses.replace(j, member=False) for j in global_de[1:]], "a Global DE's members 2..K"
    assert trunk == dataclasses.replace(get_method("constrained").plan(cfg("constrained", t=0.2))[0], index=5)
    assert trunk.seed == first.seed and not trunk.member, "θ1 at epoch t: member 1's own run"
    assert [s.refs for s in students] == [(2,), (3,), (4,)] and all(s.parent == 5 for s in students)
    assert all(s.make == "distill" and s.member for s in students)
    assert all(s.options == (("beta", 0.3), ("span", (2, 10)), ("tau", 2.0)) for s in students)
    assert sum(j.member for j in plan) == 4
    assert len({j.seed for j in plan if j.member}) == 4
    assert get_method("distilled").plan(cfg("distilled", members=1)) == [first]
    with pytest.raises(ConfigError, match="options.beta"):
        get_method("distilled").plan(cfg("distilled", beta=1.5))


def test_the_first_members_ignore_every_axis_and_distillation_takes_no_regularizer():
    for name in ("swe", "constrained", "distilled"):
        method = get_method(name)
        plans = [[j for j in regularize(method.plan(c), c) if j.member] for c in (
            dataclasses.replace(cfg(name), regularizer="mse", alpha=0.1, freeze=0),
            dataclasses.replace(cfg(name), regularizer="mse", alpha=1.0, freeze=1, lr_mult=8.0, epoch_mult=2.0))]
        assert plans[0][:method.shared_members] == plans[1][:method.shared_members], name
    assert get_method("distilled").reads == frozenset()


def test_the_templates_load_with_the_papers_settings():
    for name in ("swe", "constrained", "distilled"):
        demo, paper = load_checked(f"{name}-demo"), load_checked(f"{name}-cifar100")
        assert demo.method == paper.method == name and demo.task.dataset == "demo"
        assert paper.task.dataset == "cifar100" and paper.members == 5
    assert load_template("constrained-cifar100").options["t"] == pytest.approx(40 / 190, abs=1e-3)
    assert load_template("distilled-cifar100").options == pytest.approx({"beta": 0.2, "tau": 3.0, "t": 40 / 190},
                                                                        abs=1e-3)
    assert 1 in load_template("swe-cifar100").space["epoch_mult"].choices, "Table 5: a member every T epochs"
    with pytest.raises(ConfigError, match="space.lr_mult: method swe never reads it"):
        load_checked("swe-demo", ["space.lr_mult.choices=[0.1]"])
    load_checked("constrained-demo", ["space.freeze.choices=[0, 1]"])  # momentum is carried by weight name


# ---- Eq. 1 -------------------------------------------------------------------------------------


def test_distillation_term_is_eq_1s_kl_part():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    tau, beta = 3.0, 0.2
    p = torch.softmax(teacher / tau, 1)
    by_hand = (1 - beta) * tau**2 * (p * (p.log() - torch.log_softmax(student / tau, 1))).sum(1).mean()
    term = distillation_term(student, teacher, beta, tau)
    assert term.item() == pytest.approx(by_hand.item(), rel=1e-5) and term.item() > 0.05
    (grad,) = torch.autograd.grad(term, student)
    assert grad.abs().sum() > 1e-3, "the student receives a gradient"
    assert distillation_term(student, teacher, 1.0, tau).item() == 0.0, "β = 1: cross-entropy alone"


def test_a_student_equal_to_its_teacher_has_zero_kl_and_no_gradient():
    teacher = torch.randn(8, 10) * 4
    student = (teacher * 1.0).requires_grad_(True)
    term = distillation_term(student, teacher, 0.2, 3.0)
    (grad,) = torch.autograd.grad(term, student)
    assert abs(term.item()) < 1e-6 and grad.abs().max() < 1e-6
    empty = torch.zeros(0, 10, requires_grad=True)
    term = distillation_term(empty, torch.zeros(0, 10), 0.2, 3.0)
    assert term.item() == 0.0 and torch.autograd.grad(term, empty)[0].shape == (0, 10)


# ---- real training on the demo task ------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """One workspace on the demo task for the module; its checkpoints are freshly drawn demo nets, so that
    nothing is pre-trained here (the mechanics do not need pre-trained features)."""
    root = tmp_path_factory.mktemp("single-basin")
    for i in range(3):
        torch.manual_seed(100 + i)
        torch.save({"state_dict": create_model("demo_mlp", 10).state_dict()}, root / f"init-{i}.pt")
    task = dataclasses.replace(load_template("starsse-demo").task,
                               checkpoints=tuple(f"{{home}}/init-{i}.pt" for i in range(3)))
    return Workspace(task, root, artifacts=open_artifacts(str(root / "artifacts")))


SHORT = Recipe(epochs=6, lr=0.05, weight_decay=5e-4, batch_size=32)


def run_plan(ws: Workspace, jobs: list[MemberJob]) -> dict[int, object]:
    """Every job of a plan through the executor and the member cache, as a trial runs them."""
    work = lambda job, parent, slot, refs, wait: ws.run(job, parent, slot.device, refs=refs, wait=wait)  # noqa: E731
    return {job.index: res for job, res in Executor([CPU]).run(jobs, work)}


def states_close(a: dict, b: dict, atol: float) -> bool:
    return all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0) for k in a)


def test_the_trunk_is_the_first_t_epochs_of_the_shared_fine_tune(ws):
    c = cfg("constrained", members=2, recipe=SHORT, t=0.5)
    trunk = ws.run(get_method("constrained").plan(c)[0], None, CPU)
    first = first_member(c)
    torch.manual_seed(first.seed)  # as the workspace does before building a member's new head
    model, at_t = ws.checkpoints.backbone(0), {}
    snapshot = lambda epoch, _n, _loss: epoch == 3 and at_t.update(  # noqa: E731
        {k: v.detach().clone() for k, v in model.state_dict().items()})
    train(model, ws.split("train", CPU, SHORT.augmentation), SHORT, seed=first.seed, on_epoch=snapshot)
    assert trunk.epochs == 3
    assert all(torch.equal(trunk.state[k], at_t[k]) for k in at_t), "the trunk replays member 1's first t epochs"
    assert not states_close(trunk.state, model.state_dict(), 1e-3), "and stops there"


def test_a_branch_continues_the_trunks_run_where_it_stopped(ws):
    # One full batch and no augmentation: batch order no longer matters, so trunk + branch must
    # be the unsplit ×1 run, up to float rounding, when the branch goes on with the trunk's
    # momentum and the trunk's place in the lr schedule.
    whole = Recipe(epochs=6, lr=0.05, weight_decay=5e-4, batch_size=256, augment="none")
    c = cfg("constrained", members=1, recipe=whole, t=0.5)
    trunk, branch = get_method("constrained").plan(c)
    got = run_plan(ws, [trunk, branch])
    unsplit = ws.run(first_member(c), None, CPU).state
    assert states_close(got[2].state, unsplit, 1e-5)
    fresh = ws.run(dataclasses.replace(branch, options=(("span", (3, 6)),)), got[1], CPU).state
    assert not states_close(fresh, unsplit, 1e-3), "without the trunk's momentum the run differs"


def test_a_branch_with_frozen_stages_takes_the_trunks_momentum_by_weight_name(ws):
    from enstune.models import stage_modules

    c = cfg("constrained", members=2, recipe=SHORT, t=0.5)
    trunk, branch = get_method("constrained").plan(c)[:2]
    start = ws.run(trunk, None, CPU)
    frozen = ws.run(dataclasses.replace(branch, freeze=1), start, CPU)
    model = ws.model_from(start.state, CPU)
    ids = {id(p) for m in stage_modules(model, 1) for p in m.parameters()}
    stage = {n for n, p in model.named_parameters() if id(p) in ids}
    kept = {k.split("/")[1] for k in frozen.extras}
    assert stage and kept and not kept & stage, "a frozen weight keeps no momentum"
    assert all(torch.equal(frozen.state[k], start.state[k]) for k in stage)
    assert any(not torch.equal(frozen.state[k], start.state[k]) for k in kept)


def test_branches_leave_the_trunks_optimizer_state_as_it_was(ws):
    c = cfg("constrained", members=2, recipe=SHORT, t=0.5)
    trunk, *branches = get_method("constrained").plan(c)
    start = ws.run(trunk, None, CPU)
    momentum = {k: v.clone() for k, v in start.extras.items()}
    assert momentum and all(v.abs().sum() > 0 for v in momentum.values())
    for branch in branches:
        ws.run(branch, start, CPU)
    assert all(torch.equal(start.extras[k], v) for k, v in momentum.items()), "every branch starts where it stopped"


def kl(p: torch.Tensor, q: torch.Tensor, tau: float = 1.0) -> float:
    """Mean KL(p ‖ q) over rows of class probabilities, both softened at temperature ``tau`` first."""
    p, q = (torch.softmax(r.clamp_min(1e-12).log() / tau, dim=1) for r in (p, q))
    return float((p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(1).mean())


def test_distillation_pulls_a_branch_towards_its_teacher_and_beta_1_is_the_constrained_branch(ws):
    recipe = dataclasses.replace(SHORT, epochs=20)
    plan = get_method("distilled").plan(cfg("distilled", members=2, recipe=recipe, t=0.25, beta=0.2))
    got = run_plan(ws, plan)
    teacher, trunk, student = got[2], got[3], got[4]
    assert [j.index for j in plan if j.member] == [1, 4] and teacher.epochs == 20 and student.epochs == 15
    branch = dataclasses.replace(plan[3], make="train", refs=(), options=(("carry_optimizer", True), ("span", (5, 20))))
    plain = ws.run(branch, trunk, CPU)
    beta_one = ws.run(dataclasses.replace(plan[3], options=(("beta", 1.0), ("span", (5, 20)), ("tau", 3.0))),
                      trunk, CPU, refs={2: teacher})
    assert states_close(beta_one.state, plain.state, 1e-6), "β = 1 is the constrained branch"
    # At the temperature Eq. 1 matches (its KL at τ = 1 moves more with the seed: 0.24-0.57).
    # Measured on validation over seeds 1, 2, 3, 4, 5, 7, 11, 23: 0.24-0.50 of the constrained
    # branch's; 0.38 at this seed, with 1 and 2 threads alike.
    assert kl(teacher.val_probs, student.val_probs, TAU) < 0.6 * kl(teacher.val_probs, plain.val_probs, TAU)


@pytest.mark.parametrize("name", ["swe", "constrained", "distilled"])
def test_a_tiny_trial_of_each_method_through_the_workspace(ws, name):
    jobs = get_method(name).plan(cfg(name, members=3, recipe=dataclasses.replace(SHORT, epochs=12), t=0.25))
    got = run_plan(ws, jobs)
    members = [got[j.index] for j in jobs if j.member]
    assert len(members) == 3 and all(m.val_probs.shape == (len(ws.data.val), 10) for m in members)
    accuracy = [float((m.val_probs.argmax(1) == ws.data.val.y).float().mean()) for m in members]
    assert min(accuracy) > 0.2, accuracy  # ten classes: chance is 0.1
    assert all(not torch.equal(a.val_probs, b.val_probs) for a, b in zip(members, members[1:])), "distinct"
    spans = [j.option("span", (0, j.recipe.epochs)) for j in jobs]
    assert [got[j.index].epochs for j in jobs] == [b - a for a, b in spans]
    assert all(bool(got[j.index].extras) == bool(j.option("carry_optimizer")) for j in jobs), "momentum kept to carry"
