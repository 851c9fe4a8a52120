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
