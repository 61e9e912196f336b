"""Sphinx directive ``markdown-include``: include a small Markdown file (e.g. ``CHANGELOG.md``) as reStructuredText.

The converter handles the Markdown subset a Keep-a-Changelog file uses: ATX
headings, paragraphs, bullet and numbered lists (nested by indentation),
fenced code blocks, inline code, emphasis, inline and reference links, bare
URLs and backslash escapes. Anything else (tables, block quotes, raw HTML,
setext headings) raises :class:`MarkdownError` naming the line, so the build
fails instead of rendering a file wrongly. It needs no Markdown parser, so the
docs build with Sphinx alone, offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from docutils.parsers.rst import Directive

if TYPE_CHECKING:
    from sphinx.application import Sphinx

HEADING_CHARS = {1: "=", 2: "=", 3: "-", 4: "~", 5: "^", 6: '"'}
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+(.*)$")
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
_REF_DEF = re.compile(r"^\s{0,3}\[([^\]]+)\]:\s*(\S+)\s*$")
_UNSUPPORTED = (
    (re.compile(r"^\s{0,3}>"), "block quotes"),
    (re.compile(r"^\s{0,3}\|"), "tables"),
    (re.compile(r"^\s{0,3}<[a-zA-Z/!]"), "raw HTML"),
    (re.compile(r"^\s{0,3}(=+|-+)\s*$"), "setext headings or horizontal rules"),
)
# Inline tokens, tried left to right: escapes, code spans, links, bare URLs, strong, emphasis.
_INLINE = re.compile(
    r"(?P<escape>\\[\\`*_{}\[\]()#+\-.!<>|])"
    r"|(?P<code>(?<!`)(?P<ticks>`+)(?!`)(?P<code_text>.+?)(?<!`)(?P=ticks)(?!`))"
    r"|(?P<link>\[(?P<link_text>[^\]]+)\]\((?P<link_url>[^)\s]+)\))"
    r"|(?P<ref>\[(?P<ref_text>[^\]]+)\](?:\[(?P<ref_label>[^\]]*)\])?)"
    r"|(?P<autolink><(?P<autolink_url>https?://[^>\s]+)>)"
    r"|(?P<url>https?://[^\s<>()]+[^\s<>().,;:!?'\"])"
    r"|(?P<strong>(?P<strong_mark>\*\*|__)(?P<strong_text>\S(?:.*?\S)?)(?P=strong_mark))"
    r"|(?P<em>(?<![\w*])(?P<em_mark>[*_])(?P<em_text>[^\s*_](?:[^*_]*?[^\s*_])?)(?P=em_mark)(?![\w*]))"
)
# reStructuredText inline markup must be preceded/followed by whitespace or one of these characters.
_RST_BEFORE_OK = set(" \t'\"([{<-/:‘“’«¡¿")
_RST_AFTER_OK = set(" \t'\")]}>-/:.,;!?\\’”»")
_RST_SPECIAL = re.compile(r"([\\`*_|<>\[\]])")


class MarkdownError(ValueError):
    """A Markdown construct the converter does not support, with its 1-based line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class _Block:
    kind: str  # "heading", "paragraph", "item", "code", "blank"
    text: str
    line: int
    level: int = 0  # heading level, or list nesting depth
    marker: str = ""  # "-" or "#." for list items, language for code


def _escape(text: str) -> str:
    """Escape every character that reStructuredText could read as markup."""
    return _RST_SPECIAL.sub(r"\\\1", text)


def _literal(text: str) -> str:
    """An rST inline literal; the content is shown verbatim."""
    text = text.strip() or text
    if "``" in text:
        return f":literal:`{text.replace('`', chr(92) + '`')}`"
    return f"``{text}``"


def _link(text: str, url: str) -> str:
    label = re.sub(r"[`*]", "", text)
    return f"`{_escape(label)} <{url}>`__" if label != url else f"`{url} <{url}>`__"


def convert_inline(text: str, refs: dict[str, str]) -> str:
    """Convert one paragraph's inline Markdown to rST.

    Args:
        text: Markdown text (lines already joined by spaces).
        refs: Lower-cased reference-link labels to URLs.

    Returns:
        The rST text.

    """
    out: list[str] = []
    pos = 0
    for match in _INLINE.finditer(text):
        out.append(_escape(text[pos : match.start()]))
        kind = next(k for k in ("escape", "code", "link", "ref", "autolink", "url", "strong", "em") if match.group(k))
        if kind == "escape":
            out.append(_escape(match.group("escape")[1]))
            pos = match.end()
            continue
        if kind == "ref":
            label = (match.group("ref_label") or match.group("ref_text")).lower()
            if label not in refs:  # not a link: brackets are plain text
                out.append(_escape(match.group("ref")))
                pos = match.end()
                continue
            markup = _link(match.group("ref_text"), refs[label])
        elif kind == "code":
            markup = _literal(match.group("code_text"))
        elif kind == "link":
            markup = _link(match.group("link_text"), match.group("link_url"))
        elif kind in ("autolink", "url"):
            url = match.group("autolink_url") or match.group("url")
            markup = f"`{url} <{url}>`__"
        elif kind == "strong":
            markup = f"**{_escape(match.group('strong_text'))}**"
        else:
            markup = f"*{_escape(match.group('em_text'))}*"
        before = next((piece[-1] for piece in reversed(out) if piece), "")
        after = text[match.end() : match.end() + 1]
        if before and before not in _RST_BEFORE_OK:
            markup = "\\ " + markup
        if after and after not in _RST_AFTER_OK:
            markup += "\\ "
        out.append(markup)
        pos = match.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _blocks(lines: list[str]) -> tuple[list[_Block], dict[str, str]]:
    """Split Markdown lines into blocks and collect reference-link definitions."""
    blocks: list[_Block] = []
    refs: dict[str, str] = {}
    indents: list[int] = []  # content indentation of the open list items, outermost first
    i = 0
    while i < len(lines):
        raw = lines[i].rstrip()
        number = i + 1
        i += 1
        if not raw.strip():
            blocks.append(_Block("blank", "", number))
            continue
        fence = _FENCE.match(raw)
        if fence:
            body = []
            while i < len(lines) and not lines[i].strip().startswith(fence.group(2)):
                body.append(lines[i].rstrip()[len(fence.group(1)) :])
                i += 1
            if i == len(lines):
                raise MarkdownError(number, "unclosed fenced code block")
            i += 1
            blocks.append(_Block("code", "\n".join(body), number, marker=fence.group(3) or "text"))
            continue
        ref = _REF_DEF.match(raw)
        if ref:
            refs[ref.group(1).lower()] = ref.group(2)
            continue
        for pattern, what in _UNSUPPORTED:
            if pattern.match(raw):
                raise MarkdownError(number, f"{what} are not supported by markdown-include: {raw.strip()!r}")
        heading = _HEADING.match(raw)
        if heading:
            indents.clear()
            blocks.append(_Block("heading", heading.group(2), number, level=len(heading.group(1))))
            continue
        item = _BULLET.match(raw)
        indent = len(raw) - len(raw.lstrip())
        if item:
            while indents and indent < indents[-1]:
                indents.pop()
            content_indent = len(item.group(1)) + len(item.group(2)) + 1
            if not indents or indent >= indents[-1]:
                indents.append(content_indent)
            else:
                indents[-1] = content_indent
            marker = "-" if item.group(2) in "-*+" else "#."
            blocks.append(_Block("item", item.group(3), number, level=len(indents), marker=marker))
            continue
        previous = blocks[-1] if blocks else None
        if previous is not None and previous.kind in ("item", "paragraph"):  # lazy continuation line
            previous.text += " " + raw.strip()
            continue
        while indents and indent < indents[-1]:
            indents.pop()
        if indents:
            raise MarkdownError(number, "paragraphs inside list items after a blank line are not supported")
        blocks.append(_Block("paragraph", raw.strip(), number))
    return blocks, refs


def markdown_to_rst(markdown: str) -> str:
    """Convert the supported Markdown subset to reStructuredText.

    Args:
        markdown: The Markdown source.

    Returns:
        reStructuredText that renders the same content.

    Raises:
        MarkdownError: On a construct outside the supported subset.

    """
    blocks, refs = _blocks(markdown.splitlines())
    out: list[str] = []
    list_indents: list[int] = []  # rST indentation of the open list levels, outermost first
    list_markers: list[str] = []  # their markers: "-" or "#."
    previous_kind = "blank"
    for block in blocks:
        if block.kind == "blank":
            continue
        if block.kind == "item":
            if len(list_indents) >= block.level and list_markers[block.level - 1] != block.marker:
                del list_indents[block.level - 1 :], list_markers[block.level - 1 :]  # list type changes: new list
            level_changes = len(list_indents) != block.level
            del list_indents[block.level :], list_markers[block.level :]
            if len(list_indents) < block.level:  # a new (nested) list starts
                parent = out[-1] if block.level > 1 else ""
                start = len(parent) - len(parent.lstrip()) + len(parent.lstrip().split(" ", 1)[0]) + 1 if parent else 0
                list_indents.append(start)
                list_markers.append(block.marker)
            if level_changes or previous_kind != "item":  # rST needs a blank line around nested lists
                out.append("")
            indent = " " * list_indents[block.level - 1]
            out.append(f"{indent}{block.marker} {convert_inline(block.text, refs)}")
            previous_kind = "item"
            continue
        list_indents.clear()
        list_markers.clear()
        out.append("")
        if block.kind == "heading":
            title = convert_inline(block.text, refs)
            rule = HEADING_CHARS[block.level] * max(len(title), 3)
            out.extend([rule, title, rule] if block.level == 1 else [title, rule])
        elif block.kind == "paragraph":
            out.append(convert_inline(block.text, refs))
        else:
            out.append(f".. code-block:: {block.marker}")
            out.append("")
            out.extend(f"   {line}" if line else "" for line in block.text.splitlines())
        previous_kind = block.kind
    return "\n".join(out).strip("\n") + "\n"


class MarkdownInclude(Directive):
    """``.. markdown-include:: path``: the file, relative to the current document, converted to rST in place."""

    required_arguments = 1

    def run(self) -> list:
        env = self.state.document.settings.env
        rel, path = env.relfn2path(self.arguments[0])
        env.note_dependency(rel)
        try:
            rst = markdown_to_rst(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self.error(f"markdown-include: file not found: {path}") from None
        except MarkdownError as err:
            raise self.error(f"markdown-include: {path}: {err}") from None
        self.state_machine.insert_input(rst.splitlines(), path)
        return []


def setup(app: Sphinx) -> dict[str, object]:
    """Register the ``markdown-include`` directive."""
    app.add_directive("markdown-include", MarkdownInclude)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
