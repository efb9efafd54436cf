"""The training run store: checkpoints, finished-stage markers and ``metrics.jsonl`` under one run URI.

Layout at ``<storage_path>/<run_name>`` (a local folder or an ``s3://`` prefix)::

    run.json                                   what the run trains (model-shaping settings); a rerun must match
    config.resolved.yaml                       the config of the latest attempt (secrets redacted)
    metrics.jsonl                              one JSON record per logged step: stage, step, loss…, wall time
    curves.png                                 loss against step per stage, raw and EMA (pipelines.train.curves)
    samples/<stage>-step<N>.png                sample grids written at checkpoints
    checkpoints/<stage>/step-<N:08d>/
        weights.safetensors                    the stage's trainable tensors (names as in FastLDM.state_dict())
        optimizer.safetensors                  the optimizer's per-parameter tensors ("state.<index>.<name>")
        ema.safetensors                        the EMA of the weights (stages with ema_decay; same names)
        state.json                             step, epoch, optimizer param groups and scalars, metrics so far,
                                               scaling factor (vae), grad-scaler state; written last in the folder
    checkpoints/<stage>/LATEST.json            {"step": N, "dir": "step-<N:08d>"}, replaced atomically after a save
    stages/<stage>.json                        the stage is finished: its final checkpoint, steps, losses, wall time

Why this store and not Ray Train's own checkpoint directories: every byte goes through :mod:`pipelines.storage`
(one :class:`StorageConfig` for local paths and S3 with a custom endpoint, atomic single-PUT writes, bounded retries
and errors that name the URI), the layout is fixed and readable without Ray (Ray names checkpoint folders by
timestamp and keeps its index in a version-tagged snapshot), and the driver validates the checkpoint it will
resume from *before* any worker starts, so a corrupt or missing checkpoint is one clear error rather than a wrapped
worker failure. Ray Train still runs the workers, shards the data and receives every metric via
``ray.train.report``. Resume-after-kill: a checkpoint folder becomes visible to a resume only when ``LATEST.json``
names it, and ``LATEST.json`` is replaced only after every file of the folder is written, so a kill at any moment
leaves the previous checkpoint as the resume point. A resume never falls back silently: when ``LATEST.json`` names a
folder whose files are missing or corrupt, loading fails with a message naming the file.

Weights and optimizer tensors are safetensors; everything else is JSON. Nothing is ever unpickled. Random state is
not stored: every random draw of step ``k`` comes from a generator seeded by ``(seed, stage, rank, k)``, so a resumed
run draws exactly what the uninterrupted run would have drawn from step ``k + 1`` on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from pipelines import storage as st
from pipelines.storage import StorageConfig

logger = logging.getLogger(__name__)

CHECKPOINTS, STAGES, SAMPLES = "checkpoints", "stages", "samples"
LATEST = "LATEST.json"
WEIGHTS, OPTIMIZER, STATE, EMA = "weights.safetensors", "optimizer.safetensors", "state.json", "ema.safetensors"
METRICS = "metrics.jsonl"
RUN_INFO = "run.json"
FORMAT = "fastgen-train-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing a file, or a file is corrupt; the message names the URI."""


def step_dir_name(step: int) -> str:
    """``step-00000123``: the folder of the checkpoint after ``step`` optimizer steps."""
    return f"step-{step:08d}"


# ---------------------------------------------------------------------------------------------- optimizer state
def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` → (tensors for safetensors, the JSON rest).

    Tensors become ``"state.<param index>.<name>"``; non-tensor per-parameter values and ``param_groups`` stay JSON.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{int(index)}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(int(index)), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer_state`: a dict ``optimizer.load_state_dict`` accepts."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        prefix, index, name = key.split(".", 2)
        if prefix != "state":
            raise CheckpointError(f"optimizer tensor {key!r} is not of the form state.<index>.<name>")
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------------------------------------ store
@dataclass
class Checkpoint:
    """A loaded checkpoint: the stage's weights, the optimizer state (ready for ``load_state_dict``) and state.json."""

    uri: str
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]
    ema: dict[str, torch.Tensor] | None = None  # the EMA of the weights (a stage with ema_decay), else None

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return int(self.state["step"])

    @property
    def final_weights(self) -> dict[str, torch.Tensor]:
        """What later stages and the published model use: the EMA weights when the stage kept them, else the raw."""
        return self.weights if self.ema is None else self.ema


class RunStore:
    """Reads and writes one run's checkpoints, stage markers and metrics (see the module docstring)."""

    def __init__(self, run_uri: str, storage: StorageConfig | None = None) -> None:
        self.run_uri = run_uri
        self.storage = storage

    # paths
    def uri(self, *parts: str) -> str:
        """A URI under the run."""
        return st.join(self.run_uri, *parts)

    def checkpoint_uri(self, stage: str, step: int) -> str:
        """The folder of ``stage``'s checkpoint at ``step``."""
        return self.uri(CHECKPOINTS, stage, step_dir_name(step))

    def grid_uri(self, stage: str, step: int) -> str:
        """``samples/<stage>-step<N>.png``."""
        return self.uri(SAMPLES, f"{stage}-step{step}.png")

    # checkpoints
    def save(
        self,
        stage: str,
        step: int,
        weights: dict[str, torch.Tensor],
        optimizer_state: dict[str, Any],
        state: dict[str, Any],
        keep: int,
        ema: dict[str, torch.Tensor] | None = None,
    ) -> str:
        """Write a checkpoint folder (state.json last), then point ``LATEST.json`` at it, then prune old ones."""
        folder = self.checkpoint_uri(stage, step)
        tensors, meta = flatten_optimizer_state(optimizer_state)
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        st.write_bytes_atomic(st.join(folder, WEIGHTS), save_safetensors(cpu, {"format": "pt"}), self.storage)
        st.write_bytes_atomic(st.join(folder, OPTIMIZER), save_safetensors(tensors, {"format": "pt"}), self.storage)
        if ema is not None:
            ema_cpu = {k: v.detach().to("cpu").contiguous() for k, v in ema.items()}
            st.write_bytes_atomic(st.join(folder, EMA), save_safetensors(ema_cpu, {"format": "pt"}), self.storage)
        body = {"format": FORMAT, "stage": stage, "step": step, "optimizer": meta, "ema": ema is not None, **state}
        st.write_text_atomic(st.join(folder, STATE), json.dumps(body, indent=1) + "\n", self.storage)
        latest = {"step": step, "dir": step_dir_name(step), "time": time.time()}
        st.write_text_atomic(self.uri(CHECKPOINTS, stage, LATEST), json.dumps(latest) + "\n", self.storage)
        self._prune(stage, keep, protect=step)
        return folder

    def _prune(self, stage: str, keep: int, protect: int) -> None:
        """Delete all but the newest ``keep`` checkpoint folders of ``stage`` (never ``protect``)."""
        steps = sorted(self.checkpoint_steps(stage))
        for old in steps[:-keep]:
            if old == protect:
                continue
            uri = self.checkpoint_uri(stage, old)
            fs, path = st.filesystem(uri, self.storage)
            try:
                fs.rm(path, recursive=True)
            except (OSError, ValueError) as exc:  # pruning is housekeeping: report and go on
                logger.warning("could not delete old checkpoint %s: %s", uri, exc)

    def checkpoint_steps(self, stage: str) -> list[int]:
        """Steps of the checkpoint folders present for ``stage`` (complete or not)."""
        folder = self.uri(CHECKPOINTS, stage)
        if not st.exists(folder, self.storage):
            return []
        steps = []
        for entry in st.ls(folder, self.storage):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("step-") and name[5:].isdigit():
                steps.append(int(name[5:]))
        return steps

    def latest(self, stage: str) -> str | None:
        """The checkpoint folder ``LATEST.json`` names for ``stage``, or None when the stage has none yet."""
        pointer = self.uri(CHECKPOINTS, stage, LATEST)
        if not st.exists(pointer, self.storage):
            return None
        try:
            data = json.loads(st.read_text(pointer, self.storage))
            name = data["dir"]
            if name != step_dir_name(int(data["step"])):
                raise ValueError(f"dir {name!r} does not match step {data['step']!r}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{pointer}: not a valid checkpoint pointer ({exc}); fix or delete it") from exc
        return self.uri(CHECKPOINTS, stage, name)

    def load(self, folder: str) -> Checkpoint:
        """Load and validate the checkpoint folder ``folder``; any missing or corrupt file is a CheckpointError."""
        hint = "; delete the folder and its LATEST.json to restart the stage, or restore the file"

        def read(name: str) -> bytes:
            uri = st.join(folder, name)
            if not st.exists(uri, self.storage):
                raise CheckpointError(f"checkpoint {folder}: {name} is missing{hint}")
            return st.read_bytes(uri, self.storage)

        state_bytes = read(STATE)
        try:
            state = json.loads(state_bytes)
            if state.get("format") != FORMAT or not isinstance(state.get("step"), int):
                raise ValueError(f"format {state.get('format')!r}, step {state.get('step')!r}")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {folder}: {STATE} is not a valid checkpoint state ({exc}){hint}"
            ) from exc
        tensors = {}
        for name in (WEIGHTS, OPTIMIZER, EMA) if state.get("ema") else (WEIGHTS, OPTIMIZER):
            try:
                tensors[name] = load_safetensors(read(name))
            except CheckpointError:
                raise
            except Exception as exc:  # safetensors raises its own error type for corrupt bytes
                raise CheckpointError(
                    f"checkpoint {folder}: {name} is not a valid safetensors file ({exc}){hint}"
                ) from exc
        optimizer = unflatten_optimizer_state(tensors[OPTIMIZER], state["optimizer"])
        return Checkpoint(uri=folder, weights=tensors[WEIGHTS], optimizer=optimizer, state=state, ema=tensors.get(EMA))

    def load_latest(self, stage: str) -> Checkpoint | None:
        """The checkpoint ``LATEST.json`` names for ``stage`` (validated), or None."""
        folder = self.latest(stage)
        return None if folder is None else self.load(folder)

    # finished stages
    def mark_done(self, stage: str, info: dict[str, Any]) -> None:
        """Write ``stages/<stage>.json``: the stage is finished (its final checkpoint is named in ``info``)."""
        st.write_text_atomic(self.uri(STAGES, f"{stage}.json"), json.dumps(info, indent=1) + "\n", self.storage)

    def done(self, stage: str) -> dict[str, Any] | None:
        """The finished-stage record of ``stage``, or None when it has not finished."""
        uri = self.uri(STAGES, f"{stage}.json")
        if not st.exists(uri, self.storage):
            return None
        try:
            return json.loads(st.read_text(uri, self.storage))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{uri}: not valid JSON ({exc}); delete it to retrain the stage") from exc

    def stage_weights(self, stage: str) -> Checkpoint:
        """The final checkpoint of a finished stage."""
        info = self.done(stage)
        if info is None:
            raise CheckpointError(f"{self.run_uri}: stage {stage!r} has not finished (no {STAGES}/{stage}.json)")
        return self.load(self.uri(CHECKPOINTS, stage, info["checkpoint"]))

    # metrics
    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (empty when absent); a bad line is an error naming its number."""
        uri = self.uri(METRICS)
        if not st.exists(uri, self.storage):
            return []
        records = []
        for i, line in enumerate(st.read_text(uri, self.storage).splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{uri} line {i}: not valid JSON ({exc})") from exc
        return records

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with ``records`` (one JSON object a line), atomically."""
        text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records)
        st.write_text_atomic(self.uri(METRICS), text, self.storage)
