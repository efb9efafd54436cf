"""FAST's trainable modules: FARM, the Adaptor and the conditioners (the LDM wrapper lives in ``ldm.py``)."""

from __future__ import annotations

from fast_core.models.adaptor import Adaptor, AdaptorConfig
from fast_core.models.conditioning import (
    LearnedPromptEncoder,
    PromptEncoderConfig,
    TextualInversionConditioner,
    TextualInversionConfig,
)
from fast_core.models.farm import FARM, FARMConfig

__all__ = [
    "FARM",
    "Adaptor",
    "AdaptorConfig",
    "FARMConfig",
    "LearnedPromptEncoder",
    "PromptEncoderConfig",
    "TextualInversionConditioner",
    "TextualInversionConfig",
]
