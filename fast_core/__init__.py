"""fast_core: the FAST model, samplers, datasets and baselines in pure PyTorch + diffusers (no Ray, no storage I/O)."""

__version__ = "0.1.0"
