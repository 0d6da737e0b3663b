import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 300  # a newcomer's page; the long sections live in docs/
SET_UP_COMMANDS = ["make run", "make test"]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)  # http:, mailto:, protocol-relative, same page


def prose(markdown: str) -> str:
    """The text outside fenced blocks and inline code, where a link is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def sections(markdown: str) -> dict[str, str]:
    """Second-level headings and the text under each, fences kept."""
    parts = re.split(r"^## +(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


def table_rows(markdown: str, first_header: str) -> list[list[str]]:
    """The body rows of the first markdown table whose first header cell is `first_header`."""
    lines = FENCE.sub("", markdown).splitlines()
    for index, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0].lower() == first_header:
            rows = []
            for row in lines[index + 2 :]:  # skip the |---| line
                if not row.lstrip().startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table with first header {first_header!r}")


def test_readme_fits_a_newcomers_reading():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move sections to docs/"


def test_stage_table_lists_the_dvc_yaml_stages_in_order():
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    rows = table_rows(README.read_text(encoding="utf-8"), "stage")
    assert [row[0].strip("`") for row in rows] == stages


def test_stage_table_parser_sees_every_row():
    table = "text\n\n| stage | what |\n|---|---|\n| `a` | x |\n| `b` | y |\n\nafter\n| c | z |\n"
    assert [row[0] for row in table_rows(table, "stage")] == ["`a`", "`b`"]


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file(page):
    targets = LINK.findall(prose(page.read_text(encoding="utf-8")))
    broken = []
    for target in targets:
        if EXTERNAL.match(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: links to missing files: {broken}"


def test_link_finder_skips_code_and_external_links():
    text = "[a](docs/x.md) ![i](images/p.png) `[no](code.md)` [w](https://e.org) [s](#top)\n```\n[no](fence.md)\n```\n"
    found = [t for t in LINK.findall(prose(text)) if not EXTERNAL.match(t)]
    assert found == ["docs/x.md", "images/p.png"]


def test_set_up_section_gives_exactly_the_two_commands():
    set_up = [body for title, body in sections(README.read_text(encoding="utf-8")).items() if "set-up" in title.lower()]
    assert set_up, "README.md has no '## Set-up' section"
    block = FENCE.search(set_up[0])
    assert block, "the set-up section has no code block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(0).splitlines()[1:-1]]
    assert [command for command in commands if command] == SET_UP_COMMANDS
