"""Static checks of infra/docker/Dockerfile (no Docker here): pinned Ray/torch as pyproject pins them, non-root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    if pending:
        raise ValueError("Dockerfile ends inside a line continuation")
    return out


def pins() -> dict[str, str]:
    """The ``==``-pinned dependencies of pyproject by name, extras stripped: ``{"ray": "2.60.*"}``."""
    text = (REPO / "pyproject.toml").read_text()
    return {name.lower(): pin for name, pin in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^";\s]+)', text)}


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def _args(docker: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in docker if k == "ARG" and "=" in a)


def test_parser_joins_continuations():
    parsed = instructions("# c\nFROM x:1\nRUN a \\\n  && b\n\nUSER 1000\n")
    assert parsed == [("FROM", "x:1"), ("RUN", "a && b"), ("USER", "1000")]


def test_base_image_pins_the_ray_version_of_pyproject(docker):
    ray_pin = pins()["ray"]  # e.g. "2.60.*"
    assert ray_pin.endswith(".*"), f"pyproject pins ray as {ray_pin!r}; expected a MAJOR.MINOR.* pin"
    froms = [a for k, a in docker if k == "FROM"]
    assert froms == ["${RAY_IMAGE}"], "one stage, based on the RAY_IMAGE build argument"
    base = _args(docker)["RAY_IMAGE"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-cpu", base)
    assert m, f"default RAY_IMAGE {base!r} is not rayproject/ray:<x.y.z>-py3NN-cpu"
    assert m.group(1).startswith(ray_pin[:-1]), f"{base} does not match pyproject's ray=={ray_pin}"
    # the GPU variant named in the build instructions pins the same Ray release
    gpu = re.findall(r"--build-arg RAY_IMAGE=(rayproject/ray:\S+)", DOCKERFILE.read_text())
    assert gpu and all(re.fullmatch(rf"rayproject/ray:{re.escape(m.group(1))}-py3\d+-cu\d+", g) for g in gpu)


def test_torch_pin_and_index(docker):
    args = _args(docker)
    assert args["TORCH_VERSION"] == pins()["torch"]
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert any(k == "RUN" and '"torch==${TORCH_VERSION}"' in a and "${TORCH_INDEX_URL}" in a for k, a in docker)


def test_no_latest_tags_anywhere():
    text = DOCKERFILE.read_text()
    assert not re.search(r":latest\b", text)
    for image in re.findall(r"rayproject/ray:\S+", text):
        assert re.match(r"rayproject/ray:\d+\.\d+\.\d+-", image), image


def test_project_installed_with_extras_and_smoke_tested(docker):
    runs = [a for k, a in docker if k == "RUN"]
    installs = [r for r in runs if re.search(r"pip install \"\.\[[^\]]*\bs3\b[^\]]*\]\"", r)]
    assert installs, "the project (with the s3 extra) is pip-installed"
    copies = " ".join(a for k, a in docker if k == "COPY")
    for part in ("pyproject.toml", "fast_core", "pipelines", "jobs"):
        assert part in copies
    assert any("fastgen --help" in r for r in runs)


def test_runs_as_non_root(docker):
    users = [a for k, a in docker if k == "USER"]
    assert users, "USER is set"
    assert users[-1] not in ("root", "0", "0:0"), f"final USER {users[-1]!r} is root"
    assert users[-1] == "1000", "numeric uid 1000 (Ray's user), so Kubernetes can verify runAsNonRoot"


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests"):
        assert entry in ignored
