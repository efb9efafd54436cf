"""Create a RayJob from a manifest template and wait for it: the body of every Kubeflow step that runs on Ray.

The functions are self-contained (each imports what it needs inside), because the Kubeflow component in
``pipeline.py`` ships them as source (``dsl.component(additional_funcs=...)``) into the fastgen image. The waiting
logic, :func:`wait_for_rayjob`, takes a ``get_status`` callable and injectable ``sleep``/``clock``, so it is tested
without a cluster.

RayJob outcome (KubeRay ``status``): ``jobStatus`` is the Ray job's state (PENDING, RUNNING, STOPPED, SUCCEEDED,
FAILED); ``jobDeploymentStatus`` is KubeRay's (Initializing, Running, Complete, Failed, ...). Success is
``jobStatus == SUCCEEDED``; failure is ``jobStatus`` FAILED or STOPPED, or ``jobDeploymentStatus == Failed`` (e.g.
``reason: DeadlineExceeded`` after ``activeDeadlineSeconds``, or a submitter that could not submit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def rayjob_outcome(status: dict[str, Any]) -> str | None:
    """``"SUCCEEDED"``, ``"FAILED"`` or None (still running) for a RayJob ``status`` mapping (see module doc)."""
    job = (status or {}).get("jobStatus", "")
    deployment = (status or {}).get("jobDeploymentStatus", "")
    if job == "SUCCEEDED":
        return "SUCCEEDED"
    if job in ("FAILED", "STOPPED") or deployment == "Failed":
        return "FAILED"
    return None


def wait_for_rayjob(
    get_status: Callable[[], dict[str, Any]],
    *,
    name: str,
    timeout_s: float,
    poll_s: float = 15.0,
    max_errors: int = 5,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Poll ``get_status()`` every ``poll_s`` seconds until the RayJob ``name`` ends; return its final status.

    A status change is logged once. Up to ``max_errors`` consecutive ``get_status`` exceptions (an API server
    hiccup) are logged and retried; one more is raised. ``sleep``/``clock`` default to ``time.sleep`` and
    ``time.monotonic``.

    Raises:
        RuntimeError: the job failed; the message names the job and its jobStatus, jobDeploymentStatus, reason
            and message.
        TimeoutError: it did not end within ``timeout_s``; the message names the last status seen.
    """
    import time

    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    if timeout_s <= 0 or poll_s <= 0:
        raise ValueError(f"wait_for_rayjob: timeout_s ({timeout_s}) and poll_s ({poll_s}) must be > 0")
    deadline = clock() + timeout_s
    status: dict[str, Any] = {}
    seen = None
    errors = 0
    while True:
        try:
            status = get_status() or {}
            errors = 0
        except Exception as exc:
            errors += 1
            if errors > max_errors:
                raise
            log(f"rayjob {name}: status read failed ({type(exc).__name__}: {exc}); retry {errors}/{max_errors}")
        state = (status.get("jobStatus", ""), status.get("jobDeploymentStatus", ""))
        if state != seen:
            log(f"rayjob {name}: jobStatus={state[0] or '-'} jobDeploymentStatus={state[1] or '-'}")
            seen = state
        outcome = rayjob_outcome(status)
        if outcome == "SUCCEEDED":
            return status
        if outcome == "FAILED":
            raise RuntimeError(
                f"rayjob {name} failed: jobStatus={state[0] or '-'} jobDeploymentStatus={state[1] or '-'} "
                f"reason={status.get('reason', '-')} message={status.get('message', '-')!r}; "
                f"see `kubectl describe rayjob {name}` and the logs of its submitter and head pods"
            )
        remaining = deadline - clock()
        if remaining <= 0:
            raise TimeoutError(
                f"rayjob {name} did not finish within {timeout_s:g}s (last jobStatus={state[0] or '-'} "
                f"jobDeploymentStatus={state[1] or '-'})"
            )
        sleep(min(poll_s, remaining))


def expand_overrides(overrides: list[str], values: dict[str, str]) -> list[str]:
    """``overrides`` with ``${key}`` placeholders replaced from ``values``; an unknown placeholder is an error.

    >>> expand_overrides(["out=${version_uri}"], {"version_uri": "s3://b/d/versions/v1"})
    ['out=s3://b/d/versions/v1']
    """
    import string

    out = []
    for item in overrides:
        try:
            out.append(string.Template(item).substitute(values))
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"override {item!r}: unknown or malformed placeholder {exc} (known: {sorted(values)})"
            ) from exc
    return out


def rayjob_from_template(
    template: dict[str, Any],
    *,
    name: str,
    command: str,
    config: str,
    overrides: list[str],
    image: str = "",
) -> dict[str, Any]:
    """A RayJob object from a manifest template: new name, entrypoint ``fastgen <command> --config /configs/<config>
    --set <override>...`` (each argument shell-quoted), and optionally every container image replaced by ``image``.

    The template's status, namespace and server-set metadata are dropped; labels and annotations are kept.
    """
    import copy
    import shlex

    if template.get("kind") != "RayJob":
        raise ValueError(f"template kind is {template.get('kind')!r}, expected RayJob")
    body = copy.deepcopy(template)
    body.pop("status", None)
    meta = body.setdefault("metadata", {})
    for key in ("namespace", "resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        meta.pop(key, None)
    meta["name"] = name
    args = ["fastgen", command, "--config", f"/configs/{config}"]
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        args += ["--set", item]
    body["spec"]["entrypoint"] = " ".join(shlex.quote(a) for a in args)
    if image:
        stack: list[Any] = [body["spec"]]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("containers"), list):
                    for container in node["containers"]:
                        container["image"] = image
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return body


def run_rayjob(body: dict[str, Any], *, namespace: str, timeout_s: float, poll_s: float = 15.0) -> dict[str, Any]:
    """Create the RayJob ``body`` in ``namespace`` with the Kubernetes API, wait for it, return its final status.

    Uses the in-cluster service account (a ``~/.kube/config`` outside a cluster). A RayJob of the same name that
    already exists (the step was retried) is waited on instead of created again. On timeout the RayJob is deleted
    (so its cluster does not keep running) before the ``TimeoutError`` propagates.
    """
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    name = body["metadata"]["name"]
    ref = {"group": "ray.io", "version": "v1", "namespace": namespace, "plural": "rayjobs"}
    try:
        api.create_namespaced_custom_object(body=body, **ref)
        print(f"rayjob {name}: created in namespace {namespace}: {body['spec']['entrypoint']}")
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        print(f"rayjob {name}: already exists (a retried step); waiting on it")
    try:
        return wait_for_rayjob(
            lambda: api.get_namespaced_custom_object(name=name, **ref).get("status", {}),
            name=name,
            timeout_s=timeout_s,
            poll_s=poll_s,
        )
    except TimeoutError:
        api.delete_namespaced_custom_object(name=name, **ref)
        print(f"rayjob {name}: deleted after the timeout")
        raise
