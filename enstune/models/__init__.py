"""Backbones by name: enstune's small nets, timm's networks, open_clip's image towers (``open_clip:NAME``).

Each library is a family (``_registry``) that builds its networks, fits a checkpoint file into one
through its own loader and key filters, and reads the input the network expects.
"""

from enstune.models import clip, small, timm_family  # noqa: F401  (registration)
from enstune.models.checkpoint import load_checkpoint
from enstune.models.factory import (classifier_prefix, create_model, from_pretrained, list_models, model_settings,
                                    preprocess, stage_modules)

__all__ = ["classifier_prefix", "create_model", "from_pretrained", "list_models", "load_checkpoint",
           "model_settings", "preprocess", "stage_modules"]
