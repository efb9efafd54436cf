"""``report.html``: a version's dataset card, stats and contact sheet as one static page.

The page opens from the file system without a server: no script, no external resource; the contact sheet is an
``<img>`` with the relative path of ``preview.png``, and the card, ``stats.json`` and ``README.md`` are linked by
relative path. It holds the card's sections (:func:`pipelines.synthesize.card.card_sections`), the card's front
matter and ``stats.json`` verbatim. Every text is HTML-escaped; `` `x` `` spans become ``<code>``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence

from pipelines.synthesize.card import CARD, CardFacts, Code, Picture, Section, Table, card_front_matter, card_sections

REPORT = "report.html"
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
    "th{background:#f0f0f0}pre{background:#f6f6f6;padding:.8em;overflow-x:auto}code{background:#f0f0f0}"
    "img{max-width:100%;border:1px solid #ccc}"
)


def inline(text: str) -> str:
    """Escape ``text`` and turn `` `x` `` spans into ``<code>x</code>``.

    >>> inline("a `<b>` c")
    'a <code>&lt;b&gt;</code> c'
    """
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _block(block: str | Table | Picture | Code) -> str:
    if isinstance(block, str):
        return f"<p>{inline(block)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{inline(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Picture):
        src, alt = html.escape(block.src), html.escape(block.alt)
        return f'<p><a href="{src}"><img src="{src}" alt="{alt}"></a></p>'
    return f"<pre><code>{html.escape(block.text)}</code></pre>"


def render_html(sections: Sequence[Section], extra: Sequence[Section] = ()) -> str:
    """The sections as HTML body elements, the first title as ``<h1>``."""
    parts = []
    for i, section in enumerate([*sections, *extra]):
        tag = "h1" if i == 0 else "h2"
        parts.append(f"<{tag}>{inline(section.title)}</{tag}>")
        parts.extend(_block(b) for b in section.blocks)
    return "\n".join(parts)


def report_html(facts: CardFacts) -> str:
    """The whole page (see the module docstring)."""
    stats_text = json.dumps(facts.stats, indent=2, sort_keys=True)
    extra = (
        Section(
            "Card metadata",
            (
                f"The YAML front matter of `{CARD}` (the dataset card Hugging Face reads).",
                Code(card_front_matter(facts)),
            ),
        ),
        Section("stats.json", (Code(stats_text),)),
    )
    links = f'<p><a href="{CARD}">{CARD}</a> · <a href="stats.json">stats.json</a></p>'
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(facts.title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{links}\n"
        f"{render_html(card_sections(facts), extra)}\n</body>\n</html>\n"
    )
