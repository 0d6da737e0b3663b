"""The offline `dvc plots show` page: dvc_templates/plots.html, named by plots.html_template in .dvc/config."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from maeum.config import load_params

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "dvc_templates" / "plots.html"
CHROMIUM = Path("/usr/bin/chromium")
LIBRARIES = ["vega", "vega-lite", "vega-embed"]
LOSS_PER_EPOCH = [{"epoch": 1, "train_loss": 3.2, "val_loss": 3.3},
                  {"epoch": 2, "train_loss": 2.9, "val_loss": 3.1},
                  {"epoch": 3, "train_loss": 2.7, "val_loss": 3.0}]  # fmt: skip
MANIFEST_LINE = re.compile(r"^\s*(vega(?:-lite|-embed)?) (\S+) sha256:([0-9a-f]{64})$", re.MULTILINE)
PLOT_DIV = re.compile(r'<div id = "([^"]+)">')  # as dvc_render.vega.VegaRenderer.DIV writes it
BROWSER_TIMEOUT_S = 30
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--host-resolver-rules=MAP * ~NOTFOUND",  # no host resolves: the page must not need one
                  "--virtual-time-budget=15000"]  # fmt: skip


class _Tags(HTMLParser):
    """Start tags with their attributes, the text of each <script>, and which plot divs hold a vega view."""

    def __init__(self, plot_ids: Iterable[str] = ()):
        super().__init__(convert_charrefs=True)
        self.plot_ids = set(plot_ids)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.drawn: set[str] = set()
        self._in_script = False
        self._open_divs: list[str | None] = []  # plot id or None, one per open <div>

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "div":
            self._open_divs.append(attributes.get("id") if attributes.get("id") in self.plot_ids else None)
        elif tag in ("canvas", "svg") and "marks" in (attributes.get("class") or "").split():
            # vega's renderer (canvas by default) draws the chart into an element of class "marks"
            self.drawn.update(plot_id for plot_id in self._open_divs if plot_id)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        elif tag == "div" and self._open_divs:
            self._open_divs.pop()

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def _parse(html: str, plot_ids: Iterable[str] = ()) -> _Tags:
    parser = _Tags(plot_ids)
    parser.feed(html)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def template_html() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """`dvc plots show` run on the project's config and plot definitions, with a made-up loss curve."""
    project = tmp_path_factory.mktemp("plots")
    (project / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")
    (project / TEMPLATE.relative_to(REPO)).parent.mkdir(parents=True)
    shutil.copy(TEMPLATE, project / TEMPLATE.relative_to(REPO))
    # Only the top-level plot definitions (and params.yaml, which names the file): the stages need
    # inputs this test is not about.
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}), encoding="utf-8")
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    curve = project / load_params(REPO / "params.yaml").evaluate.loss_plot_file
    curve.parent.mkdir(parents=True)
    curve.write_text(json.dumps(LOSS_PER_EPOCH), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show"], cwd=project, check=True, capture_output=True)
    return project / "dvc_plots" / "index.html"


def test_template_has_dvc_plots_placeholder_but_not_its_cdn_scripts_placeholder(template_html):
    assert template_html.count("{plot_divs}") == 1
    assert "{scripts}" not in template_html  # DVC fills it with <script src="https://cdn.jsdelivr.net/...">


def test_template_loads_no_script_or_stylesheet_from_the_network(template_html):
    tags = _parse(template_html).tags
    sources = [attrs.get("src") or attrs.get("href") for tag, attrs in tags if tag in ("script", "link")]
    assert not [source for source in sources if source and re.match(r"(https?:)?//", source, re.IGNORECASE)]
    assert len([tag for tag, _ in tags if tag == "script"]) == len(LIBRARIES)


def test_inlined_libraries_are_the_recorded_versions_byte_for_byte(template_html):
    manifest = MANIFEST_LINE.findall(template_html.split("-->", 1)[0])
    assert [name for name, _, _ in manifest] == LIBRARIES
    scripts = _parse(template_html).scripts
    assert [hashlib.sha256(script.encode("utf-8")).hexdigest() for script in scripts] == [
        sha256 for _, _, sha256 in manifest
    ]


def test_dvc_plots_show_uses_the_template(plots_page):
    page = plots_page.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in page
    assert "loss_per_epoch" in PLOT_DIV.findall(page)


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_loss_curves_draw_in_a_browser_without_network(plots_page, tmp_path):
    plot_ids = set(PLOT_DIV.findall(plots_page.read_text(encoding="utf-8")))
    result = subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}", "--dump-dom", plots_page.as_uri()],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=True,
    )  # fmt: skip
    assert plot_ids and _parse(result.stdout, plot_ids).drawn == plot_ids
