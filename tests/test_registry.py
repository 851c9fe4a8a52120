"""Registries: a name is registered once, an unknown name lists the known ones, in every registry of the package."""

import pytest

from enstune.data._registry import DATASETS
from enstune.errors import ConfigError
from enstune.evaluation.evaluators import EVALUATORS
from enstune.methods._registry import MAKERS, METHODS
from enstune.models._registry import FAMILIES
from enstune.optim import OPTIMIZERS
from enstune.pruning import PRUNERS, SAMPLERS
from enstune.registry import Registry
from enstune.regularizers import REGULARIZERS
from enstune.schedules import SCHEDULES

ALL = [DATASETS, EVALUATORS, MAKERS, METHODS, FAMILIES, OPTIMIZERS, PRUNERS, SAMPLERS, REGULARIZERS, SCHEDULES]


def test_a_second_entry_under_a_name_is_refused():
    things = Registry("thing")
    things.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        things.add("a", 2)
    assert things.get("a") == 1 and things.names() == ["a"]


@pytest.mark.parametrize("registry", ALL, ids=lambda r: r.what)
def test_every_registry_keeps_its_entries(registry):
    name = registry.names()[0]
    entry = registry.get(name)
    with pytest.raises(ValueError, match="already registered"):
        registry.add(name, object())
    assert registry.get(name) is entry
    with pytest.raises(ConfigError, match=f"unknown {registry.what} 'nope'; known: "):
        registry.get("nope")


def test_a_backbone_family_that_leaves_out_part_of_its_contract_cannot_register():
    from enstune.models._registry import Family

    class NoPreprocess(Family):
        def has(self, arch):
            return arch == "x"

        def create(self, arch, num_classes):
            raise AssertionError("never built")

    with pytest.raises(TypeError, match="preprocess"):
        FAMILIES.add("incomplete", NoPreprocess())
    assert "incomplete" not in FAMILIES


@pytest.mark.parametrize("name", ["demo_mlp", "test_resnet.r160_in1k", "test_vit.r160_in1k"])
def test_every_family_builds_networks_with_the_head_interface_and_says_their_input(name):
    from enstune.models import create_model, preprocess

    model = create_model(name, 3)
    assert model.get_classifier().out_features == 3
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    assert model.pretrained_cfg["classifier"]
    pre = preprocess(model)
    assert (pre is None) == (name == "demo_mlp")  # only the demo's feature vectors have no resolution
    if pre is not None:
        assert len(pre.input_size) == 3 and len(pre.mean) == 3
