"""The recipe: optimizers by name with their parameter groups, warm-up per cycle, gradient clipping."""

import pytest
import timm
import torch

from enstune.data import TensorSplit
from enstune.errors import ConfigError
from enstune.models import create_model
from enstune.optim import list_optimizers, make_optimizer
from enstune.recipe import Recipe
from enstune.training import train


def test_sgd_keeps_one_group_with_weight_decay_on_every_trainable_weight():
    model = create_model("demo_mlp", 10)
    model.features[1].requires_grad_(False)  # a frozen layer stays out of the optimizer
    opt = make_optimizer(model, Recipe(lr=0.1, weight_decay=1e-3, momentum=0.8))
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["weight_decay"] == 1e-3 and group["momentum"] == 0.8 and not group["nesterov"]
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters() if p.requires_grad}


def test_adamw_without_decay_on_norms_and_biases():
    model = timm.create_model("test_vit", pretrained=False, num_classes=3)
    opt = make_optimizer(model, Recipe(optimizer="adamw", lr=1e-4, weight_decay=0.05, betas=(0.8, 0.99),
                                       decay_norm_and_bias=False))
    assert isinstance(opt, torch.optim.AdamW)
    by_decay = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert set(by_decay) == {0.0, 0.05} and all(g["betas"] == (0.8, 0.99) for g in opt.param_groups)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in by_decay[0.0]}
    assert all(p.ndim > 1 for p in by_decay[0.05])
    assert "head.bias" in undecayed and "norm.weight" in undecayed
    assert {"pos_embed", "cls_token"} <= undecayed  # timm's no_weight_decay() list
    assert len(undecayed) + len(by_decay[0.05]) == len(list(model.parameters()))


def test_an_unknown_optimizer_names_the_known_ones():
    assert list_optimizers() == ["adamw", "sgd"]
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'; known: adamw, sgd"):
        make_optimizer(create_model("demo_mlp", 10), Recipe(optimizer="lamb"))


def test_warm_up_in_steps_or_epochs_and_per_cycle_only_when_asked():
    assert Recipe(warmup_epochs=1.5).warmup(steps_per_epoch=10) == 15
    assert Recipe(warmup_epochs=1.5, warmup_steps=500).warmup(10) == 500
    first = Recipe(epochs=11, lr=1e-5, warmup_steps=500, cycle_warmup=True)
    assert first.cycle(2, 0.5).warmup(10) == 500 and first.cycle(2, 0.5).lr == 2e-5 and first.cycle(2, 0.5).epochs == 5
    swin = Recipe(epochs=100, warmup_epochs=10)
    assert swin.cycle(4, 1).warmup(10) == 0 and swin.cycle(4, 1).warmup_epochs == 0


def _one_step(grad_clip: float) -> float:
    torch.manual_seed(0)
    model = create_model("demo_mlp", 10)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    data = TensorSplit(torch.rand(16, 1, 8, 8), torch.arange(16) % 10)
    train(model, data, Recipe(epochs=1, lr=0.1, weight_decay=0.0, momentum=0.0, batch_size=16, schedule="constant",
                              grad_clip=grad_clip), seed=0)
    return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()


def test_gradient_clipping_bounds_the_step():
    free = _one_step(0.0)
    assert free > 0.1 * 0.05 * 4, "the unclipped step is well above the clipped bound"
    assert _one_step(0.05) == pytest.approx(0.1 * 0.05, rel=1e-4)
