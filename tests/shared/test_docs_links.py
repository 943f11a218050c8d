"""Every relative link in README.md and docs/*.md points at a file of the
repository, and a link with an anchor at a heading of the page it names, so a
renamed or never-written page fails here rather than in a reader's browser.

Links are read as GitHub renders them: inline links and images (their text may
span lines), reference definitions; nothing inside code (fenced blocks and
code spans). Anchors are GitHub's heading slugs.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def prose(text: str) -> str:
    """The text with fenced code blocks blanked (lines kept, for line numbers)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def without_code_spans(text: str) -> str:
    """Code spans blanked, newlines kept so offsets still give line numbers."""
    return CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every link and image, relative or not."""
    body = without_code_spans(prose(text))
    found = [(m.start(), m.group(1).strip("<>")) for m in INLINE_LINK.finditer(body)]
    found += [(m.start(), m.group(1).strip("<>")) for m in REFERENCE.finditer(body)]
    return [(body.count("\n", 0, at) + 1, target) for at, target in sorted(found)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lower case, without
    punctuation, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated one gets -1, -2, ..."""
    found, count = set(), {}
    for line in prose(page.read_text()).splitlines():
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            found.add(f"{base}-{count[base]}" if base in count else base)
            count[base] = count.get(base, 0) + 1
    return found


def broken_links(page: Path, root: Path) -> list[str]:
    """'file:line: target (why)' for each relative link of page that leads nowhere."""
    broken = []
    for line, target in links(page.read_text()):
        if SCHEME.match(target):
            continue
        path, _, anchor = unquote(target).partition("#")
        dest = (page.parent / path).resolve() if path else page
        why = None
        if not dest.is_relative_to(root):
            why = "outside the repository"
        elif not dest.exists():
            why = "no such file"
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            why = f"no heading #{anchor} in {dest.relative_to(root)}"
        if why:
            broken.append(f"{page.relative_to(root)}:{line}: {target} ({why})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_of_the_repository(page):
    assert not broken_links(page, ROOT)


def test_the_pages_have_links_to_check():
    assert sum(len(links(page.read_text())) for page in PAGES) > 20


def test_broken_links_are_found_and_links_in_code_are_not_read(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# The dev stack (`make up`)\n## Data\n## Data\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n"
        "[ok](docs/there.md#the-dev-stack-make-up), [dup](docs/there.md#data-1), [up](#top),\n"
        "[a link whose\ntext wraps](docs/missing.md) ![img](docs/gone.png)\n"
        "[anchor](docs/there.md#nowhere) [self](#nowhere) [out](../elsewhere.md)\n"
        "[ref]: docs/also-missing.md\n"
        "[web](https://example.com/x.md) `[code](docs/no.md)`\n"
        "```\n[fenced](docs/no.md)\n```\n"
    )
    assert broken_links(page, tmp_path) == [
        "README.md:3: docs/missing.md (no such file)",
        "README.md:4: docs/gone.png (no such file)",
        "README.md:5: docs/there.md#nowhere (no heading #nowhere in docs/there.md)",
        "README.md:5: #nowhere (no heading #nowhere in README.md)",
        "README.md:5: ../elsewhere.md (outside the repository)",
        "README.md:6: docs/also-missing.md (no such file)",
    ]
