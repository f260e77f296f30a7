"""Markdown -> ADF / wiki, ADF / wiki -> text, the hidden post-once marker."""

from __future__ import annotations

from backends.trackers import markup

RECORD = """## Deployment Record
**Ticket:** #7
**Deployed by:** alice

### Pre-Deployment Checks
- [x] CQ review confirmed
- [ ] QA pass confirmed: no QA PASS comment

### Rollback Plan
1. `docker run shop:1.4.1`
2. See [runbook](https://wiki.example/runbook)
- plain bullet
"""


def test_adf_has_headings_tasks_lists_and_marks() -> None:
    doc = markup.markdown_to_adf(RECORD)
    assert doc["type"] == "doc" and doc["version"] == 1
    kinds = [n["type"] for n in doc["content"]]
    assert kinds == ["heading", "paragraph", "heading", "taskList", "heading", "orderedList", "bulletList"]
    assert doc["content"][0]["attrs"] == {"level": 2}
    para = doc["content"][1]["content"]
    assert para[0] == {"type": "text", "text": "Ticket:", "marks": [{"type": "strong"}]}
    assert {"type": "hardBreak"} in para  # one line per field, as in the markdown
    tasks = doc["content"][3]
    assert tasks["attrs"]["localId"] and [i["attrs"]["state"] for i in tasks["content"]] == ["DONE", "TODO"]
    step = doc["content"][5]["content"][1]["content"][0]["content"]
    assert step[1]["marks"] == [{"type": "link", "attrs": {"href": "https://wiki.example/runbook"}}]


def test_adf_round_trip_to_text() -> None:
    text = markup.adf_to_text(markup.markdown_to_adf(RECORD))
    assert "Deployment Record" in text and "Ticket: #7" in text
    assert "[x] CQ review confirmed" in text and "[ ] QA pass confirmed" in text
    assert "1. docker run shop:1.4.1" in text and "- plain bullet" in text


def test_adf_text_of_a_real_comment() -> None:
    body = {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [
            {"type": "text", "text": "QA PASS", "marks": [{"type": "strong"}]},
            {"type": "text", "text": " cc "},
            {"type": "mention", "attrs": {"id": "5b10", "text": "@Carol"}},
            {"type": "hardBreak"},
            {"type": "emoji", "attrs": {"shortName": ":tada:", "text": "🎉"}},
            {"type": "inlineCard", "attrs": {"url": "https://ci.example/1"}}]},
        {"type": "bulletList", "content": [{"type": "listItem", "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": "smoke ok"}]}]}]},
        {"type": "codeBlock", "content": [{"type": "text", "text": "make test"}]},
        {"type": "table", "content": [{"type": "tableRow", "content": [
            {"type": "tableCell", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "a"}]}]},
            {"type": "tableCell", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "b"}]}]}]}]},
    ]}
    assert markup.adf_to_text(body) == \
        "QA PASS cc @Carol\n🎉https://ci.example/1\n- smoke ok\n```\nmake test\n```\na | b"


def test_jira_quotes_and_code_stay_marked_so_they_never_approve() -> None:
    from bot import approvals
    from bot.config import TrackerRules

    qa = TrackerRules().qa_pass
    adf = {"type": "doc", "content": [
        {"type": "blockquote", "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": "QA PASS"}]}]},
        {"type": "paragraph", "content": [{"type": "text", "text": "as said above"}]},
        {"type": "codeBlock", "content": [{"type": "text", "text": "QA PASS\n3 passed"}]}]}
    wiki = "{quote}QA PASS{quote}\nas said above\n{noformat}QA PASS{noformat}"
    for text in (markup.adf_to_text(adf), markup.wiki_to_text(wiki)):
        assert "> QA PASS" in text and "```" in text
        assert approvals.read(qa, text) == []
    assert approvals.read(qa, markup.wiki_to_text("{quote}old{quote}\nQA PASS"))[0].approves
    after = {"type": "doc", "content": [
        {"type": "blockquote", "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": "is it ready?"}]}]},
        {"type": "paragraph", "content": [{"type": "text", "text": "QA PASS"}]}]}
    assert approvals.read(qa, markup.adf_to_text(after))[0].approves


def test_wiki_markup() -> None:
    wiki = markup.markdown_to_wiki(RECORD)
    assert wiki.startswith("h2. Deployment Record\n\n*Ticket:* #7\n*Deployed by:* alice")
    assert "* (/) CQ review confirmed\n* (x) QA pass confirmed: no QA PASS comment" in wiki
    assert "# {{docker run shop:1.4.1}}\n# See [runbook|https://wiki.example/runbook]" in wiki
    text = markup.wiki_to_text(wiki)
    assert "Ticket: #7" in text and "[x] CQ review confirmed" in text and "h2." not in text


def test_wiki_to_text_of_a_person_comment() -> None:
    assert markup.wiki_to_text("*QA PASS* by [~quinn], see {{build 42}}") == "QA PASS by @quinn, see build 42"


def test_marker_hidden_and_found() -> None:
    posted = markup.with_marker("hello", "deploy-7")
    assert posted.endswith("<!-- deploybot:deploy-7 -->\n")
    assert markup.markers(posted) == {"deploy-7"}
    assert markup.strip_markers(posted) == "hello"


def test_unsafe_keys_are_hashed() -> None:
    for key in ("a--b", "x y", "-->evil", "k" * 200):
        safe = markup.safe_key(key)
        assert safe.startswith("h") and len(safe) == 33
        assert markup.markers(markup.marker(key)) == {safe}


# -- textile (Redmine) ---------------------------------------------------------------------------


def test_textile_has_headings_tasks_lists_code_and_links() -> None:
    text = markup.markdown_to_textile(RECORD + "\n---\n\n```bash\necho -x- *y*\n```\n")
    lines = text.split("\n")
    assert lines[0] == "h2. Deployment Record"
    assert "*Ticket:* <notextile>#7</notextile>" in lines and "*Deployed by:* alice" in lines
    assert "h3. <notextile>Pre-Deployment Checks</notextile>" in lines
    assert "* [x] CQ review confirmed" in lines and "* [ ] QA pass confirmed: no QA PASS comment" in lines
    assert "# @docker run shop:1.4.1@" in lines
    assert '# See "runbook":https://wiki.example/runbook' in lines and "* plain bullet" in lines
    assert "----" in lines
    assert '<pre><code class="bash">\necho -x- *y*\n</code></pre>' in text  # code stays as typed
    assert "**" not in text and "##" not in text


def test_textile_keeps_literal_text_literal() -> None:
    """Text textile would read as markup (-del-, +ins+, _em_, (c), 2x3, <b>) goes in notextile;
    plain words stay bare; a paragraph that starts with notextile is marked as a paragraph."""
    text = markup.markdown_to_textile("Rollback of web 1.4.1-rc: fix -the- +totals+ some_var (c) 2x3 <b>\n\n"
                                      "Plain words only\n\n**Version:** `a@b`")
    assert text.split("\n\n") == [
        "p. <notextile>Rollback of web 1.4.1-rc: fix -the- +totals+ some_var (c) 2x3 <b></notextile>",
        "Plain words only",
        "*Version:* <code>a@b</code>",
    ]


def test_textile_back_to_text() -> None:
    text = markup.textile_to_text(markup.markdown_to_textile(RECORD))
    assert text.startswith("Deployment Record\n\nTicket: #7\nDeployed by: alice")
    assert "- [x] CQ review confirmed" in text and "Pre-Deployment Checks" in text
    assert "1. docker run shop:1.4.1" in text and "See runbook (https://wiki.example/runbook)" in text
    assert "notextile" not in text and "h3." not in text
    assert markup.textile_to_text('<pre><code class="sh">\nmake -k\n</code></pre>') == "```\nmake -k\n```"
    assert markup.textile_to_text("bq. CQ approved\n\np. <notextile>a-b</notextile>") == "> CQ approved\n\na-b"
