"""Print the ``fastgen-configs`` ConfigMap built from ``jobs/configs/*.yaml`` (mounted at ``/configs`` in the pods).

Usage: ``python infra/kuberay/configmap.py [--name fastgen-configs] | kubectl apply -f -``
(the same as ``kubectl create configmap fastgen-configs --from-file=jobs/configs/ --dry-run=client -o yaml``,
without needing kubectl). One key per file, the file name; values are the files' text, unchanged; keys sorted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "jobs" / "configs"
NAME = "fastgen-configs"


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks (``|``), so the configs stay readable in the manifest."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def build_configmap(config_dir: Path = CONFIG_DIR, name: str = NAME) -> dict[str, Any]:
    """The ConfigMap object holding every ``*.yaml`` file of ``config_dir``."""
    files = sorted(config_dir.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"{config_dir}: no *.yaml config files")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "fastgen"}},
        "data": {f.name: f.read_text() for f in files},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=NAME, help="ConfigMap name (default: %(default)s)")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="folder of *.yaml configs")
    args = parser.parse_args()
    print(
        yaml.dump(
            build_configmap(args.config_dir, args.name),
            Dumper=_BlockDumper,
            sort_keys=False,
            width=120,
            allow_unicode=True,
        ),
        end="",
    )


if __name__ == "__main__":
    main()
