"""KFAC-Laplace (Ritter et al., 2018; StarSSE paper, Appendix C): members drawn from a Kronecker-factored
Laplace posterior around member 1, with no further training.

Member 1 is the ×1 fine-tune, the posterior's mean. A step (not a member) passes the training split once
through it in evaluation mode with labels drawn from its own predictions, so that the factors are the
Fisher's (the GGN of a softmax), and keeps for every Linear and Conv2d layer the Kronecker factors of its
block as the SWAG repository's ``KFACLaplace`` (swag/posteriors/laplace.py, the code the paper ran) takes
them: Q = E[a aᵀ] of the layer's inputs (a 1 appended for the bias) and H = E[g gᵀ] of each example's loss
gradient at the layer's outputs, both averaged over examples and over a convolution's P output positions
(``_compute_covs`` divides both by batch × positions). Other layers (BatchNorm) keep member 1's weights, as
that ``KFACLaplace`` does by default; every member's BatchNorm statistics are re-estimated.

Members 2..K add to each layer's weights W (bias as a last column) the draw (scale/N) · L_H⁻ᵀ Z L_Q⁻¹, Z
standard normal, L_H and L_Q the Cholesky factors of H + δI and Q + δI, N the training examples, and
δ = √(prior_precision / P) per layer (``_inv_covs``: ``eps = self.eps / num_locations``, each factor damped
by its square root; P = 1 for a Linear layer). That is the SWAG repository's sampling scale
(``sample *= scale / data_size``), so App. C's grid [0.2 .. 1.2] means what it meant there, and it is Ritter
et al.'s regularised posterior, precision (√N' Q + √τ' I) ⊗ (√N' H + √τ' I), with N' = (N/scale)²
pseudo-examples and τ'/N' = prior_precision / P, the weight decay expressing the same Gaussian prior per
example. (The repository multiplies its draw by L⁻¹ of the input factor where L⁻ᵀ gives the covariance
(Q + δI)⁻¹; both have the same total variance, and here the draw has the covariance the posterior says.)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from enstune.config import TrialConfig
from enstune.errors import ConfigError, EnstuneError
from enstune.methods._base import (BN_IMAGES, Bench, Made, MemberJob, MemberResult, Method, State, first_member, member_seed,
                                   recalibrated)
from enstune.methods._registry import register_maker, register_method
from enstune.recipe import Recipe
from enstune.settings import Setting

# The SWAG repository damps with the fine-tune's weight decay (``KFACLaplace(model, eps=weight_decay)``);
# the default is the ×1 recipe's default weight decay, and a template sets its own.
PRIOR_PRECISION = Recipe.weight_decay


def kfac_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers KFAC factors: Linear, and Conv2d with one group and zero padding given in pixels."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1
                                            and m.padding_mode == "zeros" and not isinstance(m.padding, str))}


def _input_rows(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A layer's input as (examples · positions) × fan-in rows, with a 1 for the bias; and the positions."""
    if isinstance(layer, nn.Conv2d):
        x = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride).transpose(1, 2)
    else:  # tokens of a sequence count as positions, as a convolution's pixels do
        x = x.reshape(len(x), -1, x.shape[-1])
    if layer.bias is not None:
        x = torch.cat([x, x.new_ones(*x.shape[:2], 1)], dim=2)
    return x.reshape(-1, x.shape[-1]), x.shape[1]


def _grad_rows(layer: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Gradients at a layer's output as (examples · positions) × fan-out rows."""
    if isinstance(layer, nn.Conv2d):
        g = g.flatten(2).transpose(1, 2)
    return g.reshape(-1, g.shape[-1])


def kfac_factors(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 generator: torch.Generator) -> State:
    """``Q/<layer>``, ``H/<layer>`` (CPU, averaged over examples and positions) and ``positions/<layer>`` of every
    layer of ``kfac_layers``, and the ``examples`` seen; labels drawn from the model with ``generator``."""
    layers = kfac_layers(model)
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor, int]]] = {name: [] for name in layers}

    def keep(name: str):  # noqa: ANN202 - a forward hook
        return lambda _m, args, out: calls[name].append((args[0].detach(), out, out._version))

    handles = [m.register_forward_hook(keep(name)) for name, m in layers.items()]
    q: dict[str, torch.Tensor] = {}
    h: dict[str, torch.Tensor] = {}
    spots: dict[str, int] = {}  # each layer's positions (a convolution's output pixels, a sequence's tokens)
    examples, training = 0, model.training
    model.eval()
    try:
        for x, _ in batches:
            for seen in calls.values():
                seen.clear()
            logits = model(x).float()
            y = torch.multinomial(logits.detach().softmax(1).cpu(), 1, generator=generator).squeeze(1)
            # Summed, so that the gradient at an output is each example's own.
            loss = F.cross_entropy(logits, y.to(logits.device), reduction="sum")
            pending = [(name, *call) for name, seen in calls.items() for call in seen if call[1].requires_grad]
            for name, _, out, version in pending:
                if out._version != version:
                    raise EnstuneError(f"KFAC needs the output of layer {name} as it was, and the network "
                                       "modifies it in place")
            grads = torch.autograd.grad(loss, [out for _, _, out, _ in pending], allow_unused=True)
            for (name, inputs, _, _), grad in zip(pending, grads):
                if grad is None:  # a layer the logits do not depend on
                    continue
                a, positions = _input_rows(layers[name], inputs)
                g = _grad_rows(layers[name], grad)
                # Both averaged over positions, as the SWAG repository's KFACLaplace does (not H summed over
                # them, the exact Fisher of a convolution under KFAC's independence assumption): App. C's
                # scales were found with these factors.
                q[name] = q.get(name, 0) + a.T @ a / positions
                h[name] = h.get(name, 0) + g.T @ g / positions
                spots[name] = positions
            examples += len(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    if examples == 0:
        raise EnstuneError("KFAC factors need at least one training example")
    return ({f"Q/{name}": f.cpu() / examples for name, f in q.items()}
            | {f"H/{name}": f.cpu() / examples for name, f in h.items()}
            | {f"positions/{name}": torch.tensor(p) for name, p in spots.items()}
            | {"examples": torch.tensor(examples)})


def damping_of(prior_precision: float, positions: int) -> float:
    """The δ added to both factors of a layer with ``positions`` positions: √(prior_precision / positions)."""
    # The SWAG repository's _inv_covs: ``eps = self.eps / num_locations``, then (eps ** 0.5) on each diagonal.
    return (prior_precision / positions) ** 0.5


def _damped_cholesky(factor: torch.Tensor, damping: float) -> torch.Tensor:
    """The lower Cholesky factor of ``factor + damping · I``."""
    return torch.linalg.cholesky(factor + damping * torch.eye(len(factor), dtype=factor.dtype, device=factor.device))


@torch.no_grad()
def laplace_sample(model: nn.Module, factors: State, scale: float, prior_precision: float,
                   generator: torch.Generator) -> None:
    """Add to each factored layer's weights a draw of covariance (scale/N)² (H + δI)⁻¹ ⊗ (Q + δI)⁻¹,
    δ = √(prior_precision / positions) per layer."""
    if not prior_precision > 0:
        raise ValueError(f"prior_precision must be > 0, got {prior_precision=}")
    step = scale / float(factors["examples"])
    for name, layer in kfac_layers(model).items():
        if f"Q/{name}" not in factors:
            continue
        device = layer.weight.device
        damping = damping_of(prior_precision, int(factors.get(f"positions/{name}", 1)))
        lq, lh = (_damped_cholesky(factors[f"{side}/{name}"].to(device, torch.float64), damping)
                  for side in ("Q", "H"))
        # Drawn on the CPU: the same seed gives the same member on any device.
        z = torch.randn(len(lh), len(lq), generator=generator, dtype=torch.float64).to(device)
        # Rows covary as (H + δI)⁻¹ = L_H⁻ᵀ L_H⁻¹, columns as (Q + δI)⁻¹ = L_Q⁻ᵀ L_Q⁻¹.
        draw = torch.linalg.solve_triangular(lh.T, z, upper=True)
        draw = torch.linalg.solve_triangular(lq, draw, upper=False, left=False) * step
        if layer.bias is not None:
            layer.bias.add_(draw[:, -1].to(layer.bias.dtype))
            draw = draw[:, :-1]
        layer.weight.add_(draw.reshape(layer.weight.shape).to(layer.weight.dtype))


@register_maker("kfac")
def fisher(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """No training: the start model's KFAC factors on the unaugmented training split, labels drawn by the seed."""
    train = bench.split("train", job.recipe.augmentation)  # batches without a generator: in order, unaugmented
    return Made(0, kfac_factors(model, train.batches(job.recipe.batch_size), torch.Generator().manual_seed(job.seed)))


@register_maker("laplace-sample")
def sample(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """Member 1 plus a draw from the parent's factors (options ``scale``, ``prior_precision``); BN re-estimated."""
    assert parent is not None, "a Laplace member starts from the step that holds the factors"
    laplace_sample(model, parent.extras, float(job.option("scale", 1.0)),
                   float(job.option("prior_precision", PRIOR_PRECISION)), torch.Generator().manual_seed(job.seed))
    bench.recalibrate(model, int(job.option("bn_images", BN_IMAGES)))
    return Made(0)


@register_method
class KFACLaplace(Method):
    name = "laplace"
    description = ("member 1 with the ×1 recipe; members 2..K drawn from a KFAC Laplace posterior around it "
                   "(no further training), at the trial's scale")
    shared_members = 1
    reads = frozenset({"scale"})
    options = {"prior_precision": Setting(PRIOR_PRECISION, "the Gaussian prior's precision, damping the KFAC "
                                                           "factors (> 0)", low=0.0)}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        prior = cfg.option("prior_precision", PRIOR_PRECISION)
        if not prior > 0:
            raise ConfigError(f"options.prior_precision must be > 0 (it damps the KFAC factors), got {prior}")
        # The option names how the factors are averaged, so that factors summed over positions, cached before, are
        # not read as these.
        factors = MemberJob(2, cfg.recipe, member_seed(cfg.seed, 2), parent=1, make="kfac",
                            options=(("positions", "mean"),), member=False)
        return [first_member(cfg), factors] + [
            # From the step (member 1's weights, unchanged): the parent's key is part of a member's.
            MemberJob(k, cfg.recipe, member_seed(cfg.seed, k), parent=2, make="laplace-sample",
                      options=recalibrated((("prior_precision", prior), ("scale", cfg.scale))))
            for k in range(3, cfg.members + 2)]
