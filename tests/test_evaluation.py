import pytest
import torch

from enstune.evaluation import EnsembleCurve, accuracy


def test_accuracy_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert accuracy(probs, torch.tensor([0, 1, 1, 1])) == 0.75


def test_accuracy_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_ensemble_averages_probabilities_not_votes():
    labels = torch.tensor([0, 0, 1])
    a = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55]])  # right, wrong, right -> 2/3
    b = torch.tensor([[0.4, 0.6], [0.7, 0.3], [0.6, 0.4]])  # wrong, right, wrong -> 1/3
    c = torch.tensor([[0.45, 0.55], [0.45, 0.55], [0.9, 0.1]])  # wrong, wrong, wrong -> 0
    curve = EnsembleCurve(labels)
    # mean(a, b) = [[.65,.35],[.55,.45],[.525,.475]] -> right, right, wrong
    assert curve.add(a) == pytest.approx(2 / 3)
    assert curve.add(b) == pytest.approx(2 / 3)
    # mean(a, b, c) = [[.583,.417],[.517,.483],[.65,.35]] -> right, right, wrong
    assert curve.add(c) == pytest.approx(2 / 3)
    assert curve.members == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert len(curve.ensembles) == 3


def test_ensemble_can_beat_every_member():
    labels = torch.tensor([0, 1])
    a = torch.tensor([[0.9, 0.1], [0.55, 0.45]])
    b = torch.tensor([[0.45, 0.55], [0.1, 0.9]])
    curve = EnsembleCurve(labels)
    curve.add(a)
    assert curve.add(b) == 1.0 and curve.members == [0.5, 0.5]


def test_forward_passes_count_each_evaluators_models_and_images():
    from enstune.evaluation.evaluators import JOINT_SAMPLES, forward_passes

    cost = forward_passes(["calibration", "diversity", "soups", "connectivity", "ood"], 5, 11,
                          train=54, val=100, test=200, curve=100)
    assert cost["calibration"] == cost["diversity"] == (0, 0)
    # uniform soup (BN, val, test), 5 greedy candidates (BN, val), the greedy soup (BN, test)
    assert cost["soups"] == (7, 7 * 54 + 100 + 200 + 5 * 100 + 200)
    models = 2 * 11 + 5 + JOINT_SAMPLES  # two segments, K singles, the Dirichlet mixtures
    assert cost["connectivity"] == (models, models * 54 + 2 * 11 * (54 + 100) + (5 + JOINT_SAMPLES) * 100)
    assert forward_passes(["connectivity"], 1, 11, train=1, val=1, test=1, curve=1) == {"connectivity": (0, 0)}


def test_bn_recalibration_draws_at_most_the_training_set_once(home):
    import torch

    from enstune.config import load_template
    from enstune.evaluation.trial import evaluation_cost, trial_members
    from enstune.members import Workspace

    spec = load_template("starsse-demo", ["bn_images=1024"])
    ws = Workspace(spec.task, home)
    n = len(ws.data.train)
    assert n < 1024
    done = []

    class Owner:  # a reporter: weight_model_done hears of models, weight_model_progress of one's BN pass
        def weight_model_done(self):
            done.append("model")

        def weight_model_progress(self, images, total):
            done.append((images, total))

    members = trial_members(ws, [], torch.device("cpu"), 0, spec, on_model=Owner().weight_model_done)
    seen = sum(len(x) for x in members.weights.bn_batches())
    assert seen == n and len(members.train) == n  # one pass over the training set, not 1024 images of it cycled
    assert done[-1] == (n, n)
    assert f"BN recalibrated on {n:,} training images each" in evaluation_cost(ws.data, spec)
    few = load_template("starsse-demo", ["bn_images=16"])
    assert sum(len(x) for x in trial_members(ws, [], torch.device("cpu"), 0, few).weights.bn_batches()) == 16


def test_a_workers_ood_sets_are_made_once_and_only_for_the_ood_evaluator(home, monkeypatch):
    from enstune.checks import load_checked
    from enstune.data import demo
    from enstune.evaluation.evaluators import evaluate
    from enstune.evaluation.trial import trial_members
    from enstune.members import Workspace
    from enstune.methods import MemberResult
    from enstune.training import predict

    made = []
    real = demo.corrupt
    monkeypatch.setattr(demo, "corrupt", lambda *a, **kw: made.append(1) or real(*a, **kw))
    spec = load_checked("starsse-demo", ["ood_images=50"])
    ws, cpu = Workspace(spec.task, home), torch.device("cpu")
    model = ws.checkpoints.backbone(0).eval()
    one = MemberResult("m", model.state_dict(), predict(model, ws.split("val", cpu)),
                       predict(model, ws.split("test", cpu)), epochs=0, seconds=0.0)
    members = trial_members(ws, [one, one], cpu, 0, spec)
    assert evaluate(members, ["calibration", "diversity"]) and made == [], "no OOD sets for evaluators that read none"
    first = evaluate(members, ["ood"])
    assert len(first["ood_ens_acc_by_severity"]) == 5 and made == [1]
    again = evaluate(trial_members(ws, [one, one], cpu, 0, spec), ["ood"])
    assert made == [1] and again["ood_ens_acc"] == first["ood_ens_acc"], "made once per worker"
