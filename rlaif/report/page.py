"""Markdown for the report, and the same report as one self-contained HTML page.

Model output (answers, judge explanations, questions written by an LLM) goes into the Markdown through `text`,
which makes it literal: no link, image, emphasis or HTML of its own. The page is report.md rendered by markdown-it
with raw HTML off, so even text that slipped through unescaped would show as text; its images are inlined as data:
URIs, and only the report's own images are: the page loads nothing from anywhere.
"""
from __future__ import annotations

import base64
import html
import re

from markdown_it import MarkdownIt

# What would turn inline text into markup: code spans, emphasis, links and images, HTML, entities, table cells,
# strikethrough. Text never starts a line in the report, so block markers (#, -, 1.) need no escape.
_MARKUP = re.compile(r"([\\`*_\[\]<>|&~])")


def text(value, limit: int | None = None) -> str:
    """`value` as literal Markdown inline text on one line (cut at `limit` characters)."""
    s = " ".join(str(value).split())
    if limit and len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return _MARKUP.sub(r"\\\1", s)


def code(value) -> str:
    """`value` as a code span on one line (a span is literal; its fence is longer than any backtick run inside).
    Not for table cells, where a `|` would still split the cell."""
    s = " ".join(str(value).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", s)), default=0) + 1)
    return f"{fence} {s} {fence}" if s.startswith("`") or s.endswith("`") else f"{fence}{s}{fence}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; cells are Markdown already (pass model output through `text`)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def image(alt: str, src: str) -> str:
    return f"![{text(alt)}]({src})"


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232b; background: #f6f7f9;
       margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 20px; margin-top: 36px; border-bottom: 1px solid #dde1e6;
padding-bottom: 4px; } h3 { font-size: 16px; margin: 28px 0 6px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13.5px; }
th, td { border: 1px solid #dde1e6; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #eef1f4; } tr:nth-child(even) td { background: #fafbfc; }
img { max-width: 100%; height: auto; border-radius: 3px; }
code { background: #eef1f4; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
p { margin: 6px 0; } li { margin: 2px 0; }
"""


def _renderer(images: dict[str, bytes]) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    default = md.renderer.rules["image"]

    def inline_image(self, tokens, idx, options, env):
        token = tokens[idx]
        src = token.attrGet("src")
        if src not in images:  # not one of the report's own images: its alt text only, nothing fetched
            return html.escape(token.content)
        token.attrSet("src", "data:image/png;base64," + base64.b64encode(images[src]).decode())
        return default(tokens, idx, options, env)

    md.add_render_rule("image", inline_image)
    return md


def to_html(markdown: str, images: dict[str, bytes], title: str) -> str:
    """report.md as one page: `images` maps each image path report.md uses to its PNG bytes."""
    body = _renderer(images).render(markdown)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body><main>\n{body}</main></body></html>\n")
