"""Ray Train training of every trainable: VAE, base LDM UNet + prompt encoder, FAST (prompt, FARM, Adaptor).

``run_training(cfg)`` runs the configured stages in order with one ``TorchTrainer`` each, checkpoints to the run
store (local or ``s3://``), resumes from it, and publishes the final model for synthesis.
"""

from __future__ import annotations

from pipelines.train.config import TrainConfig
from pipelines.train.run import StageSummary, TrainingFailed, TrainSummary, run_training

__all__ = ["StageSummary", "TrainConfig", "TrainSummary", "TrainingFailed", "run_training"]
