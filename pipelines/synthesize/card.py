"""The dataset card of a version (``README.md``, the Hugging Face dataset-card format) and its content blocks.

The card is a YAML front matter followed by Markdown:

* ``license: unknown`` with a comment: the license of a version is the one of its source images and model, which
  only the user knows (``unknown`` and ``other`` + ``license_name``/``license_link`` are both Hub license ids);
* ``task_categories: [image-segmentation]``, tags, ``size_categories``, ``pretty_name``;
* ``dataset_info.features``: every column of :data:`pipelines.synthesize.schema.DATA_SCHEMA` in order (``image``
  and ``mask`` as ``image``, the rest by Arrow type); ``splits``: one ``train`` split of ``written`` rows
  (``datasets`` checks that count when it loads the version) whose ``num_bytes``, like ``download_size``, is the
  size of the data parts (PNG bytes dominate them, so it is close to the Arrow size the Hub shows);
* ``configs``: the ``default`` config with ``data_files`` ``data/part-*.parquet``, so ``datasets.load_dataset`` on
  the version folder reads exactly the data parts (not ``rejected/``, ``_work/`` or the PNG tree) as images.

The human part (:func:`card_sections`) is a list of :class:`Section` blocks, rendered to Markdown here and to HTML
by :mod:`.report`: how to load it, the columns, provenance (run id, config hash, generator, sampler, NFE, model URI
and ``model.json`` hash, manifest, job seed), counts per defect type, rejections by reason, the contact sheet and the
files. It depends on ``stats.json`` content only, never on timings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipelines.synthesize.schema import DATA_SCHEMA, IMAGE_STRUCT

CARD = "README.md"
DATA_FILES = "data/part-*.parquet"
LICENSE_LINE = (
    "license: unknown  # fill in before sharing: the license of the source images and of the model, as a Hub id "
    "(https://hf.co/docs/hub/repositories-licenses), or other with license_name and license_link"
)
#: What each data column holds (every column of DATA_SCHEMA has an entry).
COLUMN_NOTES = {
    "sample_id": "deterministic id of the pair, `<category>__<defect>__<index>`",
    "category": "object category",
    "defect_type": "defect type the anomaly was synthesized as",
    "image": "synthesized anomaly image (PNG)",
    "mask": "its pixel-exact label (PNG, 255 = anomaly, 0 = normal)",
    "width": "image width in pixels",
    "height": "image height in pixels",
    "mask_area": "anomaly pixels in the mask",
    "seed": "the pair's sampling seed",
    "source_image": "URI of the normal image the pair was made from",
    "mask_source": "where the mask came from",
    "sampler": "sampler (or baseline generator) that painted the anomaly",
    "nfe": "network evaluations per sample",
    "model_uri": "the model used",
    "run_id": "the synthesis job, `synth-` + 16 hex of its content config hash",
}
_SIZE_BOUNDS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


@dataclass(frozen=True)
class Table:
    """A table block: a header row and body rows of plain text cells."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Picture:
    """An image block: a path relative to the version folder and its alt text."""

    src: str
    alt: str


@dataclass(frozen=True)
class Code:
    """A code block."""

    text: str
    language: str = ""


Block = str | Table | Picture | Code  # a str is a paragraph; `x` spans are inline code


@dataclass(frozen=True)
class Section:
    """A titled list of blocks (the first section's title is the document title)."""

    title: str
    blocks: tuple[Block, ...] = ()


@dataclass(kw_only=True)
class CardFacts:
    """What the card is made of.

    Args:
        title: the version's name (``<dataset> / <version>`` under a refresh prefix, else the folder name).
        stats: the ``stats.json`` content.
        rejected_by_key: ``<category>/<defect>`` → rejected rows of that key.
        preview: the contact sheet's file name, None when none was written.
        data_bytes: total size of the data parts.
        preview_per_key: pairs per defect key on the sheet.
        unreadable_normals: source normal images the sheet shows as placeholders.
    """

    title: str
    stats: Mapping[str, Any]
    data_bytes: int = 0
    rejected_by_key: Mapping[str, int] = field(default_factory=dict)
    preview: str | None = None
    preview_per_key: int = 0
    unreadable_normals: Sequence[str] = ()


def version_title(uri: str) -> str:
    """``<dataset> / <version>`` for ``…/<dataset>/versions/<version>``, else the last path segment.

    >>> version_title("s3://b/datasets/tiles/versions/v1/"), version_title("runs/out")
    ('tiles / v1', 'out')
    """
    parts = [p for p in uri.rstrip("/").split("/") if p]
    if len(parts) >= 3 and parts[-2] == "versions":
        return f"{parts[-3]} / {parts[-1]}"
    return parts[-1] if parts else uri


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bucket of ``rows``.

    >>> size_category(999), size_category(1000), size_category(5_000_000)
    ('n<1K', '1K<n<10K', 'n>1M')
    """
    for bound, name in _SIZE_BOUNDS:
        if rows < bound:
            return name
    return "n>1M"


def yaml_features() -> list[dict[str, str]]:
    """``dataset_info.features`` of DATA_SCHEMA: ``image`` for the PNG structs, the Arrow type name otherwise."""
    return [{"name": f.name, "dtype": "image" if f.type == IMAGE_STRUCT else str(f.type)} for f in DATA_SCHEMA]


def front_matter(title: str, written: int, data_bytes: int) -> str:
    """The YAML front matter, ``---`` lines included (see the module docstring)."""
    meta = {
        "pretty_name": title,
        "task_categories": ["image-segmentation"],
        "tags": ["anomaly-detection", "industrial", "synthetic", "fastgen"],
        "size_categories": [size_category(written)],
        "dataset_info": {
            "features": yaml_features(),
            "splits": [{"name": "train", "num_bytes": data_bytes, "num_examples": written}],
            "download_size": data_bytes,
        },
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES}]}],
    }
    body = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    return f"---\n{LICENSE_LINE}\n{body}---\n"


def _value(value: Any) -> str:
    return "n/a" if value is None or value == "" else str(value)


def _provenance_rows(facts: CardFacts) -> tuple[tuple[str, str], ...]:
    s = facts.stats
    prov = s.get("provenance") or {}
    model = prov.get("model") or {}
    versions = s.get("versions") or {}
    software = ", ".join(f"{k} {v}" for k, v in versions.items())
    return (
        ("synthesis run id", _value(s.get("run_id"))),
        ("content config SHA-256", _value(prov.get("config_sha256"))),
        ("generator", _value(prov.get("generator"))),
        ("sampler", _value(s.get("sampler"))),
        ("NFE (network evaluations per sample)", _value(s.get("nfe"))),
        ("image size", _value(s.get("image_size"))),
        ("model URI", _value(model.get("uri") or s.get("model_uri"))),
        ("model.json SHA-256", _value(model.get("model_json_sha256"))),
        ("model training run", _value(model.get("training_run_id"))),
        ("manifest", _value(s.get("manifest"))),
        ("manifest config SHA-256", _value(prov.get("manifest_config_sha256"))),
        ("job seed", _value(prov.get("job_seed"))),
        ("software", _value(software)),
    )


def _count_rows(facts: CardFacts) -> tuple[tuple[str, ...], ...]:
    written = facts.stats.get("written_by_key") or {}
    keys = sorted(set(written) | set(facts.rejected_by_key))
    rows = []
    for key in keys:
        category, _, defect = key.partition("/")
        rows.append((category, defect, str(written.get(key, 0)), str(facts.rejected_by_key.get(key, 0))))
    return tuple(rows)


def card_sections(facts: CardFacts) -> list[Section]:
    """The human part of the card, as blocks (see the module docstring)."""
    s = facts.stats
    written, rejected, rows = s.get("written", 0), s.get("rejected", 0), s.get("rows", 0)
    intro = (
        f"Synthetic industrial anomaly images with pixel-exact masks, for anomaly segmentation: {written} pairs "
        f"written of {rows} manifest rows ({rejected} rejected), made by fastgen."
    )
    load = Code(
        'from datasets import load_dataset\n\nds = load_dataset("<this folder>", split="train")  # image, mask: PIL',
        "python",
    )
    sections = [
        Section(facts.title, (intro,)),
        Section(
            "Loading",
            (
                f"The card's `configs` name the data parts `{DATA_FILES}` (Parquet; `image` and `mask` are "
                "PNG structs that `datasets` decodes as images). pyarrow, polars and Ray Data read the same files; "
                "the PNGs are also stored as `images/<category>/<defect>/<sample_id>.png` and "
                "`masks/<category>/<defect>/<sample_id>_mask.png`.",
                load,
            ),
        ),
        Section(
            "Columns",
            (
                Table(
                    ("column", "type", "meaning"),
                    tuple((f["name"], f["dtype"], COLUMN_NOTES.get(f["name"], "")) for f in yaml_features()),
                ),
            ),
        ),
        Section("Provenance", (Table(("field", "value"), _provenance_rows(facts)),)),
        Section(
            "Counts per defect type", (Table(("category", "defect type", "written", "rejected"), _count_rows(facts)),)
        ),
    ]
    reasons = s.get("rejected_by_reason") or {}
    if reasons:
        body: tuple[Block, ...] = (
            "Rejected rows are in `rejected/part-*.parquet` with their `reason` and `detail`.",
            Table(("reason", "rows"), tuple((r, str(n)) for r, n in sorted(reasons.items()))),
        )
    else:
        body = ("No row was rejected.",)
    sections.append(Section("Rejections", body))
    if facts.preview:
        notes: list[Block] = [
            f"Per defect type the first {facts.preview_per_key} pairs in sample order: normal image | synthesized "
            "image | mask outline (red) over the synthesized image.",
            Picture(facts.preview, "contact sheet: normal | synthesized | mask outline, per defect type"),
        ]
        if facts.unreadable_normals:
            notes.append(
                f"{len(facts.unreadable_normals)} source normal image(s) could not be read and are shown as grey "
                f"tiles: {', '.join(f'`{u}`' for u in facts.unreadable_normals)}."
            )
        sections.append(Section("Contact sheet", tuple(notes)))
    sections.append(
        Section(
            "Files",
            (
                f"`{DATA_FILES}`, `images/`, `masks/`, `rejected/`, `stats.json` (counts, rejections, throughput, "
                "versions, provenance), `config.resolved.yaml`, `preview.png` (the contact sheet), `report.html` "
                "(this card with the stats, for a browser), `_SUCCESS` (written last).",
            ),
        )
    )
    sections.append(
        Section(
            "License",
            (
                "Not set: the license of this dataset follows the license of its source images and of the model. "
                "Fill in `license:` in the front matter before sharing it.",
            ),
        )
    )
    return sections


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(sections: Sequence[Section]) -> str:
    """Markdown of ``sections``: the first title as ``#``, the others as ``##``."""
    out: list[str] = []
    for i, section in enumerate(sections):
        out.append(f"{'#' if i == 0 else '##'} {section.title}\n")
        for block in section.blocks:
            if isinstance(block, str):
                out.append(block + "\n")
            elif isinstance(block, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows)
                out.append("")
            elif isinstance(block, Picture):
                out.append(f"![{block.alt}]({block.src})\n")
            else:
                out.append(f"```{block.language}\n{block.text}\n```\n")
    return "\n".join(out).rstrip("\n") + "\n"


def card_front_matter(facts: CardFacts) -> str:
    """:func:`front_matter` of ``facts``."""
    return front_matter(facts.title, int(facts.stats.get("written", 0)), facts.data_bytes)


def card_markdown(facts: CardFacts) -> str:
    """The whole ``README.md``: front matter, then the Markdown of :func:`card_sections`."""
    return card_front_matter(facts) + "\n" + render_markdown(card_sections(facts))


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML mapping between the leading ``---`` lines of a card (``ValueError`` when there is none)."""
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    if not match:
        raise ValueError("no YAML front matter (--- ... ---) at the start of the card")
    data = yaml.safe_load(match.group(1))
    if not isinstance(data, dict):
        raise ValueError("the front matter is not a YAML mapping")
    return data
