"""Where a dataset version came from: the ``provenance`` section of its ``stats.json`` (and of its dataset card).

Every field is a fingerprint that already exists, read from small files; nothing large is hashed here:

* ``config_sha256``: SHA-256 of the synthesis content config (the ``run_id`` is ``synth-`` + its first 16 hex);
* ``generator``: ``fast`` or the baseline that painted the anomalies;
* ``job_seed``, ``manifest_config_sha256``, ``dataset_root``: from the manifest's ``manifest.json``;
* ``model``: the model's URI, the SHA-256 of its ``model.json`` (its completion marker: geometry, keys, preset,
  trained steps and training run id), and that training run id and preset; None when no model was read (a
  baseline run without a model).

A file that cannot be read leaves its fields None; provenance never fails a synthesis.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from pipelines import storage
from pipelines.manifest import SUMMARY_FILE
from pipelines.model_store import MODEL_INFO
from pipelines.storage import StorageConfig

logger = logging.getLogger(__name__)


def _read_json(uri: str, storage_cfg: StorageConfig | None) -> tuple[dict[str, Any] | None, bytes | None]:
    """(parsed object, raw bytes) of a JSON file, (None, None) when it is missing or not a JSON object."""
    try:
        raw = storage.read_bytes(uri, storage_cfg)
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        logger.info("provenance: %s not read (%s)", uri, exc)
        return None, None
    return (data, raw) if isinstance(data, dict) else (None, None)


def model_provenance(model_uri: str, storage_cfg: StorageConfig | None) -> dict[str, Any] | None:
    """``uri``, ``model_json_sha256``, ``training_run_id``, ``preset`` of the model at ``model_uri``; None without
    a readable ``model.json``."""
    if not model_uri:
        return None
    info, raw = _read_json(storage.join(model_uri, MODEL_INFO), storage_cfg)
    if info is None or raw is None:
        return None
    return {
        "uri": model_uri,
        "model_json_sha256": hashlib.sha256(raw).hexdigest(),
        "training_run_id": info.get("run_id") or None,
        "preset": info.get("preset") or None,
    }


def provenance(
    *, config_sha256: str, generator: str, manifest_uri: str, model_uri: str, storage_cfg: StorageConfig | None
) -> dict[str, Any]:
    """The ``provenance`` section of ``stats.json`` (see the module docstring)."""
    manifest, _ = _read_json(storage.join(manifest_uri, SUMMARY_FILE), storage_cfg)
    manifest = manifest or {}
    return {
        "config_sha256": config_sha256,
        "generator": generator,
        "job_seed": manifest.get("job_seed"),
        "manifest_config_sha256": (manifest.get("created_by") or {}).get("config_sha256"),
        "dataset_root": manifest.get("dataset_root"),
        "model": model_provenance(model_uri, storage_cfg),
    }
