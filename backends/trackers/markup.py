"""Markup conversions: markdown -> each tracker's format, each tracker's format -> plain text.

The deployment record is markdown (headings, bold labels, task lists, numbered steps). Markdown
trackers (GitHub, GitLab, Linear, Redmine common_mark) take it as is; Jira Cloud needs Atlassian
Document Format (ADF), Jira Data Center needs wiki markup. Only the subset deploybot writes is
converted; anything else passes through as text.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable

# -- idempotency marker --------------------------------------------------------------------------

_MARKER_RE = re.compile(r"\s*<!--\s*deploybot:([^\s>]+)\s*-->\s*")


def safe_key(key: str) -> str:
    """The key as it goes into a marker: readable when harmless, hashed otherwise."""
    if re.fullmatch(r"[A-Za-z0-9._:/+=-]{1,80}", key) and "--" not in key:
        return key
    return "h" + hashlib.sha256(key.encode()).hexdigest()[:32]


def marker(key: str) -> str:
    """Hidden in rendered markdown: an HTML comment carrying the key."""
    return f"<!-- deploybot:{safe_key(key)} -->"


def with_marker(markdown: str, key: str) -> str:
    return f"{markdown.rstrip()}\n\n{marker(key)}\n"


def markers(text: str) -> set[str]:
    return set(_MARKER_RE.findall(text or ""))


def strip_markers(text: str) -> str:
    return _MARKER_RE.sub("\n", text or "").strip()


# -- markdown blocks -----------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_TASK = re.compile(r"^\s*[-*+]\s+\[([ xX])\]\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_ORDERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_FENCE = re.compile(r"^\s*(```|~~~)\s*(\S*)")


def blocks(markdown: str) -> list[tuple[str, Any]]:
    """Markdown -> [(kind, data)]: heading (level, text), para [lines], task [(done, text)],
    bullet [text], ordered [text], code (lang, text), rule None."""
    out: list[tuple[str, Any]] = []
    lines = strip_markers(markdown).splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                body.append(lines[i])
                i += 1
            out.append(("code", (fence.group(2), "\n".join(body))))
            i += 1
            continue
        if not line.strip():
            if out and isinstance(out[-1][1], _Items):
                out[-1][1].open = False  # a blank line ends the paragraph or list
            i += 1
            continue
        if re.fullmatch(r"\s*([-*_])(\s*\1){2,}\s*", line):
            out.append(("rule", None))
        elif m := _HEADING.match(line):
            out.append(("heading", (len(m.group(1)), m.group(2))))
        elif m := _TASK.match(line):
            _append(out, "task", (m.group(1).lower() == "x", m.group(2)))
        elif (m := _BULLET.match(line)) and not _TASK.match(line):
            _append(out, "bullet", m.group(1))
        elif m := _ORDERED.match(line):
            _append(out, "ordered", m.group(1))
        else:
            _append(out, "para", line.strip())
        i += 1
    return out


def _append(out: list[tuple[str, Any]], kind: str, item: Any) -> None:
    # Consecutive lines of one kind form one block; a blank line ends a paragraph.
    if out and out[-1][0] == kind and getattr(out[-1][1], "open", True):
        out[-1][1].append(item)
    else:
        out.append((kind, _Items([item])))


class _Items(list):
    open = True  # still taking lines of the same kind


# -- inline markdown -----------------------------------------------------------------------------

_INLINE = re.compile(
    r"(?P<code>`[^`]+`)"
    r"|(?P<link>\[(?P<ltext>[^\]]+)\]\((?P<lurl>[^)\s]+)\))"
    r"|(?P<strong>\*\*(?P<stext>.+?)\*\*|__(?P<stext2>.+?)__)"
    r"|(?P<em>(?<![\w*])\*(?P<etext>[^*\s][^*]*?)\*(?!\*)|(?<!\w)_(?P<etext2>[^_\s][^_]*?)_(?!\w))"
)


def inline(text: str) -> list[tuple[str, str, str]]:
    """Inline markdown -> [(kind, text, url)] with kind in text/code/strong/em/link."""
    out: list[tuple[str, str, str]] = []
    pos = 0
    for m in _INLINE.finditer(text):
        if m.start() > pos:
            out.append(("text", text[pos:m.start()], ""))
        if m.group("code"):
            out.append(("code", m.group("code")[1:-1], ""))
        elif m.group("link"):
            out.append(("link", m.group("ltext"), m.group("lurl")))
        elif m.group("strong"):
            out.append(("strong", m.group("stext") or m.group("stext2"), ""))
        else:
            out.append(("em", m.group("etext") or m.group("etext2"), ""))
        pos = m.end()
    if pos < len(text):
        out.append(("text", text[pos:], ""))
    return out


# -- markdown -> ADF (Jira Cloud) ----------------------------------------------------------------


def _adf_inline(text: str) -> list[dict]:
    nodes = []
    for kind, value, url in inline(text):
        if not value:
            continue
        node: dict[str, Any] = {"type": "text", "text": value}
        if kind == "code":
            node["marks"] = [{"type": "code"}]
        elif kind == "strong":
            node["marks"] = [{"type": "strong"}]
        elif kind == "em":
            node["marks"] = [{"type": "em"}]
        elif kind == "link":
            node["marks"] = [{"type": "link", "attrs": {"href": url}}]
        nodes.append(node)
    return nodes


def _adf_paragraph(text: str) -> dict:
    content = _adf_inline(text)
    return {"type": "paragraph", "content": content} if content else {"type": "paragraph"}


def markdown_to_adf(markdown: str) -> dict:
    """Markdown -> an ADF document (headings, paragraphs, task/bullet/ordered lists, code)."""
    content: list[dict] = []
    tasks = 0
    for kind, data in blocks(markdown):
        if kind == "heading":
            level, text = data
            content.append({"type": "heading", "attrs": {"level": level}, "content": _adf_inline(text)})
        elif kind == "para":
            inl: list[dict] = []
            for n, line in enumerate(data):
                if n:
                    inl.append({"type": "hardBreak"})
                inl += _adf_inline(line)
            content.append({"type": "paragraph", "content": inl})
        elif kind == "task":
            tasks += 1
            items = []
            for n, (done, text) in enumerate(data):
                items.append({"type": "taskItem",
                              "attrs": {"localId": f"deploybot-task-{tasks}-{n}",
                                        "state": "DONE" if done else "TODO"},
                              "content": _adf_inline(text)})
            content.append({"type": "taskList", "attrs": {"localId": f"deploybot-tasks-{tasks}"},
                            "content": items})
        elif kind in ("bullet", "ordered"):
            content.append({"type": "bulletList" if kind == "bullet" else "orderedList",
                            "content": [{"type": "listItem", "content": [_adf_paragraph(t)]}
                                        for t in data]})
        elif kind == "code":
            lang, text = data
            node: dict[str, Any] = {"type": "codeBlock", "content": [{"type": "text", "text": text}] if text else []}
            if lang:
                node["attrs"] = {"language": lang}
            content.append(node)
        elif kind == "rule":
            content.append({"type": "rule"})
    return {"type": "doc", "version": 1, "content": content}


# -- ADF -> text ---------------------------------------------------------------------------------

_ADF_BLOCKS = {"paragraph", "heading", "codeBlock", "blockquote", "panel", "rule", "mediaSingle",
               "table", "tableRow", "bulletList", "orderedList", "taskList", "decisionList",
               "expand", "nestedExpand", "blockCard", "mediaGroup"}


def adf_to_text(node: Any) -> str:
    """ADF document (or any node) -> plain text, one block per line, lists with their markers."""
    if node is None:
        return ""
    if isinstance(node, str):  # Jira DC / v2 bodies are already strings
        return node
    lines: list[str] = []
    _adf_block(node, lines, prefix="")
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _adf_block(node: dict, lines: list[str], prefix: str) -> None:
    kind = node.get("type")
    children = node.get("content") or []
    if kind == "blockquote":  # someone else's words: kept marked, so they never approve
        for child in children:
            _adf_block(child, lines, prefix + "> ")
        lines.append(prefix)  # the quote ends here (a blank line, as markdown would need)
        return
    if kind in ("doc", "panel", "expand", "nestedExpand", "tableCell", "tableHeader",
                "mediaSingle", "mediaGroup", "layoutSection", "layoutColumn"):
        for child in children:
            _adf_block(child, lines, prefix)
        return
    if kind in ("bulletList", "orderedList", "taskList", "decisionList"):
        start = (node.get("attrs") or {}).get("order", 1)
        for n, item in enumerate(children):
            if kind == "bulletList":
                mark = "- "
            elif kind == "orderedList":
                mark = f"{start + n}. "
            else:
                done = (item.get("attrs") or {}).get("state") in ("DONE", "DECIDED")
                mark = "[x] " if done else "[ ] "
            _adf_item(item, lines, prefix, mark)
        return
    if kind == "table":
        for row in children:
            cells = [adf_to_text(cell).replace("\n", " ") for cell in row.get("content") or []]
            lines.append(prefix + " | ".join(cells))
        return
    if kind == "rule":
        lines.append(prefix + "---")
        return
    if kind == "codeBlock":  # fenced: pasted output is not a verdict
        lines.append(prefix + "```")
        for line in _adf_inline_text(children).splitlines() or [""]:
            lines.append(prefix + line)
        lines.append(prefix + "```")
        return
    if kind == "blockCard":
        lines.append(prefix + str((node.get("attrs") or {}).get("url", "")))
        return
    if kind in _ADF_BLOCKS or kind in ("listItem", "taskItem", "decisionItem"):
        text = _adf_inline_text(children)
        for line in text.split("\n"):
            lines.append(prefix + line)
        return
    # An inline node at block level (unusual): treat as text.
    lines.append(prefix + _adf_inline_text([node]))


def _adf_item(item: dict, lines: list[str], prefix: str, mark: str) -> None:
    children = item.get("content") or []
    if item.get("type") in ("taskItem", "decisionItem") and not any(
        (c.get("type") in _ADF_BLOCKS) for c in children
    ):
        lines.append(prefix + mark + _adf_inline_text(children))
        return
    first = len(lines)
    for child in children:
        _adf_block(child, lines, prefix + "  ")
    if len(lines) > first:
        lines[first] = prefix + mark + lines[first][len(prefix) + 2:]
    else:
        lines.append(prefix + mark.rstrip())


def _adf_inline_text(nodes: list[dict]) -> str:
    out = []
    for node in nodes:
        kind = node.get("type")
        attrs = node.get("attrs") or {}
        if kind == "text":
            out.append(node.get("text", ""))
        elif kind == "hardBreak":
            out.append("\n")
        elif kind == "mention":
            text = attrs.get("text") or attrs.get("id", "")
            out.append(text if text.startswith("@") else f"@{text}")
        elif kind == "emoji":
            out.append(attrs.get("text") or attrs.get("shortName", ""))
        elif kind in ("inlineCard", "blockCard"):
            out.append(attrs.get("url", ""))
        elif kind == "status":
            out.append(attrs.get("text", ""))
        elif kind == "date":
            out.append(str(attrs.get("timestamp", "")))
        elif node.get("content"):
            out.append(_adf_inline_text(node["content"]))
    return "".join(out)


# -- markdown -> Jira wiki markup (Jira Data Center) ---------------------------------------------


def _star_inline(text: str, code_fn: Callable[[str], str], link_fn: Callable[[str, str], str],
                 text_fn: Callable[[str], str]) -> str:
    """Wiki markup and textile share *strong* and _em_; code, links and plain text differ."""
    out = []
    for kind, value, url in inline(text):
        if kind == "code":
            out.append(code_fn(value))
        elif kind == "strong":
            out.append(f"*{value}*")
        elif kind == "em":
            out.append(f"_{value}_")
        elif kind == "link":
            out.append(link_fn(value, url))
        else:
            out.append(text_fn(value))
    return "".join(out)


def _wiki_inline(text: str) -> str:
    # A leading '#' or '*' would start a list; '[' a link; escape what wiki would eat.
    return _star_inline(text, lambda v: "{{" + v + "}}", lambda v, url: f"[{v}|{url}]",
                        lambda v: re.sub(r"([{}\[\]])", r"\\\1", v))


def _h_dot_markup(markdown: str, inline_fn: Callable[[str], str], boxes: tuple[str, str],
                  code_fn: Callable[[str, str], str], para_fn: Callable[[str], str] = str) -> str:
    """Jira wiki markup and textile share their blocks: hN. headings, * and # lists, ----."""
    out: list[str] = []
    for kind, data in blocks(markdown):
        if kind == "heading":
            level, text = data
            out.append(f"h{level}. {inline_fn(text)}")
        elif kind == "para":
            out.append(para_fn("\n".join(inline_fn(line) for line in data)))
        elif kind == "task":
            out.append("\n".join(f"* {boxes[done]} {inline_fn(t)}" for done, t in data))
        elif kind in ("bullet", "ordered"):
            mark = "*" if kind == "bullet" else "#"
            out.append("\n".join(f"{mark} {inline_fn(t)}" for t in data))
        elif kind == "code":
            out.append(code_fn(*data))
        elif kind == "rule":
            out.append("----")
    return "\n\n".join(out)


def markdown_to_wiki(markdown: str) -> str:
    """Markdown -> Jira wiki markup: h2., *bold*, (/) and (x) for task boxes, * and # lists."""
    return _h_dot_markup(markdown, _wiki_inline, ("(x)", "(/)"),
                         lambda lang, text: ("{code:" + lang + "}" if lang else "{code}") + f"\n{text}\n" + "{code}")


def wiki_to_text(wiki: str) -> str:
    """Jira wiki markup -> plain text (the parts that matter for reading a comment)."""
    text = wiki or ""
    # Quotes stay marked and code stays fenced: approvals are never read from either.
    text = re.sub(r"\{quote\}(.*?)\{quote\}",
                  lambda m: "\n".join("> " + line for line in m.group(1).strip("\n").split("\n"))
                  + "\n",  # the quote ends here (a blank line, as markdown would need)
                  text, flags=re.S | re.I)
    text = re.sub(r"\{(code|noformat)(:[^}]*)?\}(.*?)\{\1\}",
                  lambda m: "```\n" + m.group(3).strip("\n") + "\n```", text, flags=re.S | re.I)
    text = re.sub(r"\{(code|noformat|quote|panel|color)(:[^}]*)?\}", "", text)
    text = re.sub(r"^h[1-6]\.\s+", "", text, flags=re.M)
    text = re.sub(r"\{\{(.*?)\}\}", r"\1", text)
    text = re.sub(r"\[~(?:accountid:)?([^\]]+)\]", r"@\1", text)
    text = re.sub(r"\[([^|\]]+)\|([^\]]+)\]", r"\1 (\2)", text)
    text = text.replace("(/)", "[x]").replace("(x)", "[ ]")
    text = re.sub(r"(?<![\w*])\*(\S[^*\n]*?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\\([{}\[\]])", r"\1", text)
    return text.strip()


# -- markdown -> textile (Redmine's default text formatting) -------------------------------------

# Plain text made of these only cannot start textile markup; anything else is kept literal.
_TEXTILE_PLAIN = re.compile(r"[A-Za-z0-9 .,:;/]*")


def _textile_text(text: str) -> str:
    """Literal text: textile reads -x-, +x+, ^x^, %x%, !x!, "x":y, (c), 2x3 ... as markup or
    glyphs, so anything beyond letters, digits and plain punctuation goes in <notextile>."""
    if not text or (_TEXTILE_PLAIN.fullmatch(text) and not re.search(r"\dx\d", text)):
        return text
    lead, core, trail = re.fullmatch(r"(\s*)(.*?)(\s*)", text, flags=re.S).groups()
    return f"{lead}<notextile>{core}</notextile>{trail}"  # spaces outside: *bold* must end at one


def _textile_inline(text: str) -> str:
    return _star_inline(text, lambda v: f"@{v}@" if "@" not in v else f"<code>{v}</code>",
                        lambda v, url: f'"{v}":{url}', _textile_text)


def _textile_code(lang: str, text: str) -> str:
    cls = f' class="{lang}"' if re.fullmatch(r"[A-Za-z0-9_+-]+", lang or "") else ""
    return f"<pre><code{cls}>\n{text}\n</code></pre>"


def markdown_to_textile(markdown: str) -> str:
    """Markdown -> Redmine textile: h2., *bold*, @code@, <pre> blocks, * and # lists, task boxes
    as a literal [x] / [ ] (textile has no checkboxes). Redmine keeps a paragraph's line breaks;
    a paragraph that starts with a tag would not be made one, so it says `p.`."""
    return _h_dot_markup(markdown, _textile_inline, ("[ ]", "[x]"), _textile_code,
                         lambda text: f"p. {text}" if text.startswith("<") else text)


def textile_to_text(textile: str) -> str:
    """Redmine textile -> plain text (what the checks read): no h2. prefixes, *bold*, @code@,
    <notextile> or "link":url markup; lists as markdown would write them."""
    text = textile or ""
    text = re.sub(r"</?notextile>", "", text)
    text = re.sub(r"<pre>(?:\s*<code[^>]*>)?\n?(.*?)\n?(?:</code>\s*)?</pre>",
                  lambda m: "```\n" + m.group(1).strip("\n") + "\n```", text, flags=re.S)
    text = re.sub(r"^(?:h[1-6]|p)\.\s+", "", text, flags=re.M)
    text = re.sub(r"^bq\.\s+", "> ", text, flags=re.M)  # a quote stays marked: never an approval
    text = re.sub(r"^\*\s+", "- ", text, flags=re.M)
    text = re.sub(r"^#\s+", "1. ", text, flags=re.M)
    text = re.sub(r'"([^"\n]+)":(\S*[^\s.,;:!?)])', r"\1 (\2)", text)
    text = re.sub(r"(?<![\w@])@([^@\n]+)@(?!\w)", r"\1", text)
    text = re.sub(r"</?code>", "", text)
    text = re.sub(r"(?<![\w*])\*(\S[^*\n]*?)\*(?![\w*])", r"\1", text)
    return text.strip()
