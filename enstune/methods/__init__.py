"""Registry of ensembling methods; nothing outside this package knows their names."""

from __future__ import annotations

from enstune.methods import (constrained, csgld, deep_ensembles, distilled, fge,  # noqa: F401  (registration)
                             finetune, laplace, permuted, snapshot, spro, standard_sse, swag, swe)
from enstune.methods._base import (LATER_MEMBER_PARAMS, TRAINING_MAKERS, Bench, Made, MemberJob, MemberResult, Method,
                                   first_member, member_seed, regularize)
from enstune.methods._registry import get_maker, get_method, list_methods, register_maker, register_method

__all__ = ["LATER_MEMBER_PARAMS", "TRAINING_MAKERS", "Bench", "Made", "MemberJob", "MemberResult", "Method", "first_member", "get_maker",
           "get_method", "list_methods", "member_seed", "register_maker", "register_method", "regularize"]
