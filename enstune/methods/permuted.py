"""Permuted ensembles (single-basin paper §4): Global DE members moved into member 1's basin by weight matching.

A network's hidden units can be reordered without changing its function. Weight matching (Ainsworth et
al. 2023, "Git Re-Basin", PermutationCoordinateDescent) picks, for every group of units that must move
together, the order that brings a member's weights closest to member 1's. The ensemble predicts exactly
as the Global DE it comes from; what changes is where its members sit (soups, segments, connectivity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from enstune.config import MAX_MEMBERS, MAX_SEED, StudySpec, TrialConfig
from enstune.errors import ConfigError, EnstuneError
from enstune.methods._base import Bench, Made, MemberJob, MemberResult, Method, State, member_seed
from enstune.methods._registry import register_maker, register_method
from enstune.methods.deep_ensembles import DIVERSIFY_OPTIONS, GlobalDE
from enstune.settings import Setting

# For each state entry, the permutation acting on each of its axes (None: that axis stays); the
# entries of a permutation's units are the "unit group" it names (Ainsworth et al.'s axes_to_perm).
Spec = dict[str, tuple[str | None, ...]]
Perm = dict[str, torch.Tensor]

MAX_ITERATIONS = 10_000


# --- permutation specs: which units of a network move together -------------------------------------------


def _arch(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def _layer(spec: Spec, name: str, module: nn.Module, p_out: str | None, p_in: str | None) -> str | None:
    """A Linear or ungrouped Conv2d mapping units ``p_in`` to ``p_out``."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise EnstuneError(f"{name} is a grouped convolution")
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise EnstuneError(f"{name} is a {type(module).__name__}, not a Linear or Conv2d")
    spec[f"{name}.weight"] = (p_out, p_in) + (None,) * (module.weight.dim() - 2)
    if module.bias is not None:
        spec[f"{name}.bias"] = (p_out,)
    return p_out


def _norm(spec: Spec, name: str, module: nn.Module, p: str | None) -> None:
    """A BatchNorm over units ``p``: its affine parameters and running statistics move with them."""
    if not isinstance(module, _BatchNorm):
        # GroupNorm and LayerNorm mix units within a group or a token: no unit permutation keeps them.
        raise EnstuneError(f"{name} is a {type(module).__name__}, not a BatchNorm")
    for key in module.state_dict():
        spec[f"{name}.{key}"] = (p,) if module.state_dict()[key].dim() == 1 else ()


def _chain(spec: Spec, layers: Iterable[tuple[str, nn.Module]], p: str | None) -> str | None:
    """Layers applied one after another from units ``p``; each Linear or Conv2d opens its own units."""
    for name, module in layers:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            p = _layer(spec, name, module, name, p)
        elif isinstance(module, _BatchNorm):
            _norm(spec, name, module, p)
        elif isinstance(module, nn.Flatten) and p is not None:
            raise EnstuneError(f"{name} flattens units into features")
        # Anything else without state (activations, pooling, dropout) acts on each unit alone.
    return p


def _children(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        return [(f"{prefix}.{n}", m) for n, m in module.named_children()]
    return [(prefix, module)]


def _mlp_spec(model: nn.Module) -> Spec:
    """enstune's demo MLPs: a chain of Linear/BatchNorm/ReLU, then the head."""
    spec: Spec = {}
    p = _chain(spec, _children(model.features, "features"), None)
    _layer(spec, "head", model.head, None, p)
    return spec


def _resnet_spec(model: nn.Module) -> Spec:
    """timm's ResNets (BasicBlock or Bottleneck, any stem or downsample): a residual stream shares units
    across the blocks that add to it, and opens new ones where a downsample projection starts."""
    spec: Spec = {}
    p = _chain(spec, _children(model.conv1, "conv1"), None)
    _norm(spec, "bn1", model.bn1, p)
    _chain(spec, _children(model.maxpool, "maxpool"), p)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}"
            # The shortcut: the block's input units, or those its projection opens.
            out = p if block.downsample is None else _chain(spec, _children(block.downsample, f"{name}.downsample"), p)
            convs = [c for c in ("conv1", "conv2", "conv3") if hasattr(block, c)]
            q = p
            for i, conv in enumerate(convs, start=1):
                q = _layer(spec, f"{name}.{conv}", getattr(block, conv), out if i == len(convs) else f"{name}.{conv}", q)
                _norm(spec, f"{name}.bn{i}", getattr(block, f"bn{i}"), q)
            p = out
    _layer(spec, "fc", model.fc, None, p)
    return spec


def permutation_spec(model: nn.Module) -> Spec:
    """Which unit permutation acts on each axis of each entry of ``model``'s state."""
    from enstune.models.small import MLP

    builders = [(MLP, _mlp_spec)]
    try:
        from timm.models.resnet import ResNet

        builders.append((ResNet, _resnet_spec))
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    builder = next((b for kind, b in builders if isinstance(model, kind)), None)
    if builder is None:
        raise EnstuneError(f"weight matching knows enstune's demo MLPs and timm's ResNets, not {_arch(model)}")
    try:
        spec = builder(model)
    except EnstuneError as exc:
        raise EnstuneError(f"weight matching cannot permute {_arch(model)}: {exc}") from None
    # An entry the walk never reached (an attention block, a blur filter) would keep its order and break
    # the symmetry: refuse rather than permute part of the network.
    unknown = [k for k in model.state_dict() if k not in spec]
    if unknown:
        raise EnstuneError(f"weight matching cannot permute {_arch(model)}: it does not know how {unknown[0]} moves")
    return spec


# --- weight matching -------------------------------------------------------------------------------------


def _axes(spec: Spec) -> dict[str, list[tuple[str, int]]]:
    """Each permutation's (entry, axis) pairs (Ainsworth et al.'s perm_to_axes)."""
    out: dict[str, list[tuple[str, int]]] = {}
    for key, perms in spec.items():
        for axis, p in enumerate(perms):
            if p is not None:
                out.setdefault(p, []).append((key, axis))
    return out


def _permuted(spec: Spec, perm: Perm, key: str, value: torch.Tensor, skip: int | None = None) -> torch.Tensor:
    for axis, p in enumerate(spec[key]):
        if p is not None and axis != skip:
            value = value.index_select(axis, perm[p].to(value.device))
    return value


def apply_permutation(spec: Spec, perm: Perm, state: Mapping[str, torch.Tensor]) -> State:
    """``state`` with every entry's axes reordered by ``perm`` (``perm[p][i]``: the unit that goes to place i)."""
    return {k: _permuted(spec, perm, k, v) if k in spec else v for k, v in state.items()}


def weight_matching(spec: Spec, reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], *,
                    iterations: int = 100, seed: int = 0) -> Perm:
    """The permutation of ``other``'s units that brings its entries in ``spec`` closest to ``reference``'s.

    Coordinate descent over the permutations in a seeded random order, each a linear assignment that
    maximises the summed inner products with the others held (Ainsworth et al. 2023, Algorithm 1); it
    stops after ``iterations`` sweeps or a sweep that improves nothing.
    """
    from scipy.optimize import linear_sum_assignment  # half a second to import; every command loads this module

    axes = _axes(spec)
    sizes = {p: reference[k].shape[a] for p, ((k, a), *_) in axes.items()}
    device = next(iter(other.values())).device
    perm: Perm = {p: torch.arange(n, device=device) for p, n in sizes.items()}
    names = sorted(perm)
    generator = torch.Generator().manual_seed(seed)
    # Float64: the gains near convergence are smaller than float32's rounding of the sums.
    ref = {k: reference[k].to(device, torch.float64) for k in spec}
    oth = {k: other[k].to(device, torch.float64) for k in spec}
    for _ in range(iterations):
        progress = False
        for i in torch.randperm(len(names), generator=generator).tolist():
            p, n = names[i], sizes[names[i]]
            gain = torch.zeros(n, n, dtype=torch.float64, device=device)
            for key, axis in axes[p]:
                a = ref[key].movedim(axis, 0).reshape(n, -1)
                b = _permuted(spec, perm, key, oth[key], skip=axis).movedim(axis, 0).reshape(n, -1)
                gain += a @ b.T
            _, cols = linear_sum_assignment(gain.cpu().numpy(), maximize=True)
            new = torch.as_tensor(cols, device=device)
            rows = torch.arange(n, device=device)
            old_value, new_value = gain[rows, perm[p]].sum().item(), gain[rows, new].sum().item()
            # Relative: a tie the solver breaks differently is no progress, and must not loop forever.
            progress = progress or new_value > old_value + 1e-12 * max(1.0, abs(old_value))
            perm[p] = new
        if not progress:
            break
    return {p: v.cpu() for p, v in perm.items()}


# --- the maker and the method ----------------------------------------------------------------------------


def _check_symmetry(model: nn.Module, before: nn.Module, x: torch.Tensor) -> None:
    """Refuse a permutation that changed what the network computes: its spec does not fit the network."""
    with torch.inference_mode():
        want, got = before.eval()(x), model.eval()(x)
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * (1.0 + want.abs().max().item())):
        raise EnstuneError(f"weight matching changed {_arch(model)}'s outputs by up to "
                           f"{(got - want).abs().max().item():.3g}: its permutation spec does not fit the network")


@register_maker("permute")
def permute_job(bench: Bench, job: MemberJob, model: nn.Module, parent: MemberResult | None, refs: dict[int, MemberResult]) -> Made:
    """The parent's weights with their units permuted to match member ``job.refs[0]``'s (weight matching);
    options ``iterations`` and ``seed``. Nothing is trained; the permutation is kept in the extras."""
    if len(job.refs) != 1:
        raise ValueError(f"a permuted member reads one reference member, got refs={job.refs}")
    spec = permutation_spec(model)
    matched = {name for name, _ in model.named_parameters()}  # the weights, as in Ainsworth et al.; not BN statistics
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    perm = weight_matching({k: v for k, v in spec.items() if k in matched}, refs[job.refs[0]].state, state,
                           iterations=int(job.option("iterations", 100)), seed=int(job.option("seed", 0)))
    before = bench.model_from(state)
    model.load_state_dict(apply_permutation(spec, perm, state))
    x, _ = next(iter(bench.split("val").sample(16, job.seed).batches(16)))
    _check_symmetry(model, before, x)
    return Made(0, {f"permutation/{p}": v for p, v in perm.items()})


def _settings(options: Mapping[str, float]) -> tuple[tuple[str, int], tuple[str, int]]:
    """The maker's (iterations, seed) from the spec's options, checked."""
    iterations = options.get("match_iterations", Permuted.options["match_iterations"].default)
    seed = options.get("match_seed", Permuted.options["match_seed"].default)
    if not (float(iterations).is_integer() and 1 <= iterations <= MAX_ITERATIONS):
        raise ConfigError(f"options.match_iterations must be a whole number in 1..{MAX_ITERATIONS}, got {iterations}")
    if not (float(seed).is_integer() and 0 <= seed <= MAX_SEED):
        raise ConfigError(f"options.match_seed must be a whole number in 0..2**32-1, got {seed}")
    return ("iterations", int(iterations)), ("seed", int(seed))


@register_method
class Permuted(Method):
    name = "permuted"
    description = ("Global DE with members 2..K permuted into member 1's basin by weight matching "
                   "(single-basin paper §4, Ainsworth et al. 2023)")
    shared_members = 1
    reads = frozenset()
    # Ainsworth et al.'s weight_matching: at most 100 sweeps; the seed orders the permutations in a sweep.
    # Global DE's own options (Appendix K's diversification) shape the members that are permuted.
    options = {**DIVERSIFY_OPTIONS,
               "match_iterations": Setting(100, "weight matching's sweeps at most", low=1, high=MAX_ITERATIONS),
               "match_seed": Setting(0, "orders the permutations within a sweep", low=0, high=MAX_SEED)}

    def plan(self, cfg: TrialConfig) -> list[MemberJob]:
        settings = _settings(dict(cfg.options))
        first, *others = GlobalDE().plan(cfg)
        jobs = [first]
        for k, member in enumerate(others, start=2):
            # Global DE's member k job for job, a step here: the two methods share it in the cache.
            trained = dataclasses.replace(member, index=len(jobs) + 1, member=False)
            # A permutation trains nothing, so its seed only names the job: past every member index,
            # it is distinct from every trained job's whatever the ensemble's size.
            seed = member_seed(cfg.seed, MAX_MEMBERS + k)
            jobs += [trained, MemberJob(len(jobs) + 2, member.recipe, seed, parent=trained.index, refs=(1,),
                                        make="permute", options=settings)]
        return jobs

    def check(self, spec: StudySpec) -> None:
        """Refuse, where the study is created, a network weight matching cannot permute and bad settings."""
        from enstune.models import create_model
        from enstune.models._registry import FAMILIES, resolve

        _settings(spec.options)
        family, _ = resolve(spec.task.model)
        if not any(FAMILIES.get(key) is family for key in ("enstune", "timm")):
            raise ConfigError(f"method permuted: weight matching knows enstune's demo MLPs and timm's ResNets, "
                              f"not {spec.task.model}")
        with torch.device("meta"):  # the structure without the memory: nothing is computed
            model = create_model(spec.task.model, 2)
        try:
            permutation_spec(model)
        except EnstuneError as exc:
            raise ConfigError(f"method permuted: {exc}") from None
