import io
import threading
import time

import optuna
import pytest
import torch
from optuna.storages.journal import JournalFileBackend

from cli_helpers import TINY
from enstune import study as st
from enstune.objective import OverBudget, _admit
from enstune.worker import _open_trials, run
from enstune.config import Task, load_template
from enstune.data import demo
from enstune.errors import DivergedError, EnstuneError
from enstune.executor import Executor, parse_devices
from enstune.members import Workspace
from enstune.methods import get_method
from enstune.recipe import Recipe
from enstune.models import create_model, from_pretrained
from enstune.training import predict, train


@pytest.fixture
def ws(home):
    return Workspace(load_template("starsse-demo", []).task, home)


def test_demo_splits_are_disjoint_and_few_labelled(ws):
    d = ws.data
    assert d.num_classes == 10 and d.source is not None
    assert len(d.train) <= 10 * d.num_classes, "few target labels"
    assert len(d.val) >= 200 and len(d.test) >= 300, "splits large enough to rank trials"
    rows = {tuple(x.flatten().tolist()) for s in (d.train, d.val, d.test) for x in s.x}
    assert len(rows) == len(d.train) + len(d.val) + len(d.test)
    for split in (d.val, d.test):  # each digit seen through demo.CAPTURES noise draws, in capture-major order
        labels = split.y.view(demo.CAPTURES, -1)
        assert (labels == labels[0]).all() and len(labels[0]) >= 300


def test_cache_keys_follow_the_data_and_checkpoints_their_source(home, monkeypatch):
    job = get_method("starsse").plan(st.trial_config(optuna.trial.FixedTrial({"lr_mult": 2, "epoch_mult": 1}),
                                                     load_template("starsse-demo", TINY)))[0]
    task = load_template("starsse-demo", []).task
    before = Workspace(task, home)
    key, path = before.job_key(job, None), before.checkpoints.path(0)
    assert Workspace(task, home).job_key(job, None) == key, "the same data, the same key"
    monkeypatch.setattr(demo, "NOISE_STD", 0.2)  # the target task changes, its source does not
    after = Workspace(task, home)
    assert after.checkpoints.path(0) == path and after.job_key(job, None) != key
    monkeypatch.setattr(demo, "SOURCE_SIZE", 800)
    assert Workspace(task, home).checkpoints.path(0) != path, "a checkpoint is named by what it was trained on"


@pytest.mark.bare_home  # the demo pre-trains its checkpoints on first use
def test_checkpoints_are_ordinary_files_loaded_like_downloads(ws):
    rng = torch.get_rng_state()
    path = ws.checkpoints.path(0)  # pre-trains on first use, then finds the file
    assert path.is_file() and ws.checkpoints.path(0) == path
    assert torch.equal(torch.get_rng_state(), rng), "a member's seeded draws do not depend on a checkpoint's history"
    state = torch.load(path, weights_only=True)["state_dict"]
    model = from_pretrained("demo_mlp", path, num_classes=10)
    trunk = {k for k in state if not k.startswith("head.")}
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in trunk)
    other = torch.load(ws.checkpoints.path(1), weights_only=True)["state_dict"]
    assert not torch.equal(other["features.1.weight"], state["features.1.weight"]), "independent pre-trainings"


def test_missing_checkpoint_is_a_clear_error(home):
    ws = Workspace(Task(checkpoints=("{home}/nope.pt",)), home)
    with pytest.raises(EnstuneError, match="checkpoint not found: .*nope.pt"):
        ws.checkpoints.path(0)


def test_training_lowers_the_loss_and_is_deterministic(ws):
    recipe = Recipe(epochs=5, lr=0.03, weight_decay=5e-4, batch_size=16, warmup_epochs=1)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("demo_mlp", 10)
        losses = []
        train(model, ws.split("train", torch.device("cpu")), recipe, seed=1, on_epoch=lambda e, n, loss: losses.append(loss))
        results.append((losses, predict(model, ws.split("val", torch.device("cpu")))))
    (losses, probs), (losses2, probs2) = results
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert losses == losses2 and torch.equal(probs, probs2)
    assert probs.shape == (len(ws.data.val), 10) and torch.allclose(probs.sum(1), torch.ones(len(probs)))


def test_non_finite_loss_raises(ws):
    model = create_model("demo_mlp", 10)
    with pytest.raises(DivergedError):
        train(model, ws.split("train", torch.device("cpu")), Recipe(epochs=3, lr=1e12, weight_decay=0, batch_size=8), seed=0)


def test_shared_members_come_from_the_cache(ws):
    cfg = st.trial_config(optuna.trial.FixedTrial({"lr_mult": 2, "epoch_mult": 1}),
                          load_template("starsse-demo", TINY))
    job = get_method("starsse").plan(cfg)[0]
    first = ws.run(job, None, torch.device("cpu"))
    again = ws.run(job, None, torch.device("cpu"))
    assert not first.cached and again.cached and again.key == first.key
    assert torch.equal(first.val_probs, again.val_probs)


def test_every_member_is_cached_and_a_damaged_entry_is_retrained(ws):
    cfg = st.trial_config(optuna.trial.FixedTrial({"lr_mult": 2, "epoch_mult": 1}),
                          load_template("starsse-demo", TINY))
    first, second = get_method("sse").plan(cfg)[:2]
    one = ws.run(first, None, torch.device("cpu"))
    two = ws.run(second, one, torch.device("cpu"))
    assert ws.run(second, one, torch.device("cpu")).cached, "a member started from another is cached too"
    # a worker killed mid-upload leaves a truncated artifact: it counts as missing
    aid = ws.cache.artifact_id(two.key)
    with ws.cache.store.open_reader(aid) as f:
        blob = f.read()
    ws.cache.store.write(aid, io.BytesIO(blob[: len(blob) // 2]))
    again = ws.run(second, one, torch.device("cpu"))
    assert not again.cached and torch.equal(again.val_probs, two.val_probs)
    assert ws.run(second, one, torch.device("cpu")).cached, "the retrained member replaced the damaged one"


def test_a_trial_sampled_past_the_study_wide_budget_is_refused(home):
    st.create("starsse-demo", name="b", overrides=TINY + ["sampler='random'", "n_trials=2"])
    study = optuna.load_study(study_name="b", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(home / "studies.journal"))))
    spec = st.load_spec(study)
    first, second, third = study.ask(), study.ask(), study.ask()  # three workers asked at once
    study.tell(first, 0.5)
    assert "fixed_params" not in _admit(second, spec), "a sampled trial within the budget"
    with pytest.raises(OverBudget):
        _admit(third, spec)
    assert study.trials[2].user_attrs["over_budget"] is True
    study.tell(third, state=optuna.trial.TrialState.FAIL)
    assert _open_trials(study, spec) == (0, 1), "nothing left to start, one trial still running"


def test_diverged_trial_is_pruned_and_the_worker_goes_on(home):
    # lr 0.5 x 1000 for the cycles: the loss turns non-finite (the largest lr_mult a spec admits)
    overrides = TINY + ["finetune.lr=0.5", "space.lr_mult.choices=[1000, 0.5]", "space.epoch_mult.choices=[1]",
                        "n_trials=2", "pruner='none'"]
    st.create("starsse-demo", name="div", overrides=overrides)
    study = run("div")
    states = {t.params["lr_mult"]: (t.state, t.user_attrs.get("diverged")) for t in study.trials}
    assert states[1000] == (optuna.trial.TrialState.PRUNED, True)
    assert states[0.5] == (optuna.trial.TrialState.COMPLETE, None)
    plain = optuna.load_study(study_name="div", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(home / "studies.journal"))))
    assert len(plain.trials) == 2


def test_devices_are_checked():
    assert parse_devices("cpu") == [torch.device("cpu")]
    for bad in ("", "gpu", "cuda:99"):
        with pytest.raises(EnstuneError):
            parse_devices(bad)


def test_executor_respects_dependencies_and_yields_in_member_order():
    jobs = get_method("starsse").plan(st.trial_config(optuna.trial.FixedTrial({"lr_mult": 4, "epoch_mult": 1}),
                                                      load_template("starsse-demo", [])))
    started, lock = [], threading.Lock()

    def work(job, parent, device, refs, wait):
        with lock:
            started.append(job.index)
        assert (parent is None) == (job.parent is None)
        time.sleep(0.05 * (6 - job.index))  # later members finish first
        return job.index * 10

    for devices in ([torch.device("cpu")], [torch.device("cpu"), torch.device("cpu")]):
        started.clear()
        out = list(Executor(devices).run(jobs, work))
        assert [j.index for j, _ in out] == [1, 2, 3, 4, 5] and [r for _, r in out] == [10, 20, 30, 40, 50]
        assert started[0] == 1


def test_a_worker_whose_trial_was_failed_elsewhere_carries_on(home):
    # After a long storage outage another worker may fail and re-queue a running trial; the
    # first worker then finds it finished under it and must go on with the next one.
    from enstune.progress import Reporter

    st.create("starsse-demo", name="taken", overrides=TINY + ["pruner='none'"])
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(home / "studies.journal")))

    class FailFirstTrial(Reporter):
        fired = False

        def member_done(self, index, val_ens_acc, cached):
            if not self.fired:
                self.fired = True
                study = optuna.load_study(study_name="taken", storage=storage)
                (running,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                # What another worker's fail_stale_trials does: fail it, then re-queue its parameters.
                storage.set_trial_state_values(running._trial_id, optuna.trial.TrialState.FAIL)
                optuna.storages.RetryHeartbeatStaleTrialCallback(3)(study, storage.get_trial(running._trial_id))

    run("taken", reporter_factory=lambda budget: FailFirstTrial())
    states = [t.state for t in optuna.load_study(study_name="taken", storage=storage).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3, states


def test_the_display_hears_which_evaluator_runs_and_each_model_it_builds(home):
    from enstune.progress import Reporter

    class Recording(Reporter):
        def __init__(self):
            self.events = []

        def evaluating(self, name, step, steps):
            self.events.append((name, step, steps))

        def weight_model_done(self):
            self.events.append("model")

    reporter = Recording()
    st.create("starsse-demo", name="shown", overrides=TINY + ["n_trials=1", 'evaluate=["calibration", "soups"]'])
    run("shown", reporter_factory=lambda budget: reporter)
    names = [e for e in reporter.events if e != "model"]
    assert names == [("calibration", 1, 2), ("soups", 1 + 1, 2)]
    after_soups = reporter.events[reporter.events.index(("soups", 2, 2)) + 1:]
    # a uniform soup, then the greedy soup's candidates (at most K = 3) and the chosen one
    assert 3 <= len(after_soups) <= 5 and set(after_soups) == {"model"}


def _demo_first(ws, **recipe):
    import dataclasses

    cfg = st.trial_config(optuna.trial.FixedTrial({"lr_mult": 4, "epoch_mult": 1}), load_template("starsse-demo", []))
    job = get_method("starsse").plan(cfg)[0]
    return dataclasses.replace(job, recipe=dataclasses.replace(job.recipe, **recipe))


def test_precisions_autocast_on_any_device_and_fp16_scales_its_gradients(ws):
    from enstune.training import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "fp32") is None, "a CPU trains in fp32 by default"
    assert amp_dtype(cpu, "fp16") is torch.float16 and amp_dtype(cpu, "bf16") is torch.bfloat16
    y = ws.data.val.y
    full = ws.train("k", _demo_first(ws, epochs=10), None, cpu)
    for precision in ("fp16", "bf16"):
        half = ws.train("k", _demo_first(ws, epochs=10, precision=precision), None, cpu)
        assert any(not torch.equal(half.state[k], full.state[k]) for k in full.state), f"{precision} autocast ran"
        # chance is 0.1; fp32 reaches about 0.9 here
        assert (half.val_probs.argmax(1) == y).float().mean() > 0.5, precision


@pytest.mark.slow
def test_a_compiled_member_trains_as_the_eager_one(ws, tmp_path):
    from torch._inductor.utils import fresh_cache

    cpu = torch.device("cpu")
    eager = ws.train("k", _demo_first(ws, epochs=2), None, cpu)
    # A cache of its own, as on a machine that never compiled: Inductor's cache key leaves out the vector ISA
    # (ATEN_CPU_CAPABILITY), so kernels cached under AVX-512 came back under avx2 and trained to NaN.
    with fresh_cache(dir=str(tmp_path)):
        compiled = ws.train("k", _demo_first(ws, epochs=2, compile=True), None, cpu)
    for k, v in eager.state.items():
        assert torch.allclose(compiled.state[k].float(), v.float(), atol=1e-4, rtol=1e-4), k
    assert torch.allclose(compiled.val_probs, eager.val_probs, atol=1e-4)


def test_a_convolutional_network_trains_channels_last_and_keeps_a_plain_state():
    import timm

    from enstune.data import TensorSplit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 5, (32,), generator=g)
    data = TensorSplit(x.float() / 255, y)
    states, seen = {}, {}
    for layout in (True, False):
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", num_classes=5)
        start = _flat(model.state_dict())
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        train(model, data, Recipe(epochs=2, batch_size=16, lr=0.05, channels_last=layout), seed=0,
              on_epoch=lambda *_: seen.setdefault(layout, conv.weight.is_contiguous(memory_format=torch.channels_last)))
        states[layout] = model.state_dict()
    assert seen == {True: True, False: False}, "the layout in training"
    assert all(v.is_contiguous() for v in states[True].values()), "saved as any other member"
    # The two layouts train the same network, up to the kernels' rounding, which two epochs amplify: their weights
    # differ by at most 0.0023 of what training moved them (6 data seeds, native, default and 1-thread kernels);
    # training on transposed images, a layout mix-up, differs by 0.12-0.13 of it.
    moved = (_flat(states[False]) - start).norm()
    assert (_flat(states[True]) - _flat(states[False])).norm() < 0.02 * moved


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.float().flatten() for v in state.values() if v.is_floating_point()])


def test_a_member_held_by_another_worker_goes_last_and_is_then_waited_for():
    from enstune.errors import Deferred

    cfg = st.trial_config(optuna.trial.FixedTrial({}), load_template("localde-demo", ["space={}"]))
    jobs = get_method(cfg.method).plan(cfg)
    assert all(j.parent is None and not j.refs for j in jobs) and len(jobs) >= 3, "independent members"
    for slots in ([torch.device("cpu")], [torch.device("cpu"), torch.device("cpu")]):
        calls = []

        def work(job, parent, slot, refs, wait):
            calls.append((job.index, wait))
            if job.index == 1 and not wait:
                raise Deferred("member 1 is being trained elsewhere")
            return job.index

        out = list(Executor(slots).run(jobs, work))
        assert [j.index for j, _ in out] == [j.index for j in jobs], "still yielded in member order"
        assert calls[0] == (1, False) and calls[-1] == (1, True), "tried, the others first, then waited for"
        assert sorted(i for i, w in calls if i != 1) == [j.index for j in jobs[1:]]


def test_a_last_batch_of_one_is_left_out_and_no_batch_of_two_is_an_error():
    # BatchNorm cannot train on one example: 9 examples in batches of 4 train on 4 and 4; one example alone is refused.
    from enstune.data import TensorSplit

    torch.manual_seed(0)
    model = create_model("demo_mlp", 10)
    split = TensorSplit(torch.randn(9, 1, 8, 8), torch.arange(9) % 10)
    seen = []
    stats = train(model, split, Recipe(epochs=2, lr=0.01, batch_size=4), seed=0,
                  after_step=lambda _m, _lr: seen.append(1))
    assert stats.steps == len(seen) == 4
    with pytest.raises(EnstuneError, match="batches of 4 of 1 examples over 1 process"):
        train(model, split.subset(torch.arange(1)), Recipe(epochs=1, lr=0.01, batch_size=4), seed=0)
