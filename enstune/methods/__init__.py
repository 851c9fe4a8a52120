"""Registry of ensembling methods; nothing outside this package knows their names."""

from __future__ import annotations

from enstune.methods import deep_ensembles, finetune, snapshot  # noqa: F401  (registration)
from enstune.methods._base import (LATER_MEMBER_PARAMS, Bench, Built, Made, MemberJob, Method, first_member, member_seed,
                                   regularize)
from enstune.methods._registry import get_maker, get_method, list_methods, register_maker, register_method

__all__ = ["LATER_MEMBER_PARAMS", "Bench", "Built", "Made", "MemberJob", "Method", "first_member", "get_maker",
           "get_method", "list_methods", "member_seed", "register_maker", "register_method", "regularize"]
