"""Samplers for FAST: the AIAS scheduler (closed-form segments of composed DDPM posteriors) and its config."""

from __future__ import annotations

from fast_core.schedulers.scheduling_aias import AIASConfig, AIASScheduler, AIASSchedulerOutput

__all__ = ["AIASConfig", "AIASScheduler", "AIASSchedulerOutput"]
