"""Content keys of member jobs: the same member, trained anywhere, has the same key."""

from __future__ import annotations

from typing import Any

from enstune.cache import content_key
from enstune.config import Task
from enstune.methods import MemberJob
from enstune.recipe import keyed_fields


def member_key(task: Task, data_digest: str, start: dict[str, Any], job: MemberJob, ref_keys: list[str]) -> str:
    """The key of ``job``: the task and its data, where it starts (a checkpoint's digest or the parent's key),
    its recipe and seed, frozen stages, its maker and settings, and its regularizer with the keys of the members it reads."""
    task_part = {"dataset": task.dataset, "model": task.model, "val_fraction": task.val_fraction,
                 "split_seed": task.split_seed, "data": data_digest, "prefix": task.checkpoint_prefix,
                 "head": task.option("head", "new")}
    # Settings added later: absent at their defaults, so members cached before them keep their keys.
    # drop_path_rate, once a Task field, keeps its place here now that timm's family declares it.
    task_part |= {key: value for key, value in (("drop_path_rate", task.option("drop_path_rate", None)),
                                                ("crop_pct", task.crop_pct)) if value is not None}
    parts: dict[str, Any] = {"task": task_part, "start": start, "recipe": keyed_fields(job.recipe),
                             "seed": job.seed}
    if job.freeze:
        parts["freeze"] = job.freeze
    if job.make != "train" or job.options:  # a plain trained job keeps the key it had before makers existed
        parts["make"] = {"name": job.make, "options": [list(pair) for pair in job.options]}
        if job.refs:  # a maker reads the jobs it refers to (SPRO's vertices, SWAG's moments, the member to align to)
            parts["make"]["refs"] = ref_keys
    if job.regularizer != "none" and job.alpha != 0:  # alpha 0 is the plain member and shares its key
        # Version 1 holds RTD's subsample in every regularized key (it was a field of the spec): at its default too.
        options = dict(job.reg_options)
        parts["reg"] = {"name": job.regularizer, "alpha": job.alpha, "tap": job.tap,
                        "subsample": options.pop("subsample", 64), "refs": ref_keys}
        if options:  # any other setting enters only away from its default
            parts["reg"]["options"] = options
    return content_key(**parts)
