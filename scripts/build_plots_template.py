"""Build dvc_templates/plots.html: DVC's plots page with vega, vega-lite and vega-embed inlined.

`dvc plots show` writes an index.html whose `<script src="https://cdn.jsdelivr.net/...">` tags load
vega from a CDN, so on an offline machine the page is blank. .dvc/config points
`plots.html_template` at the page this script writes, which carries the three libraries itself.

Rebuild it (from the repository root; needs npm and the npm registry, nothing else):

    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0 &&
     for p in vega-5.33.1 vega-lite-5.23.0 vega-embed-6.29.0; do mkdir "$p" && tar -xzf "$p.tgz" -C "$p"; done)
    python scripts/build_plots_template.py \\
        "$tmp"/vega-5.33.1/package/build/vega.min.js \\
        "$tmp"/vega-lite-5.23.0/package/build/vega-lite.min.js \\
        "$tmp"/vega-embed-6.29.0/package/build/vega-embed.min.js

The versions are the newest of the major lines dvc-render 1.0.2 loads from the CDN (vega 5, vega-lite 5,
vega-embed 6); DVC's plot specs use the vega-lite v5 schema. Each file is inlined byte for byte, and its
version (read from the package.json beside it) and SHA-256 go into a comment at the top of the page, so
a reviewer can compare them with `sha256sum` on the unpacked npm files (or on the `<script>` contents).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "dvc_templates" / "plots.html"
# Load order matters: vega-lite needs the global `vega`, vega-embed needs `vega` and `vegaLite`.
LIBRARIES = ("vega", "vega-lite", "vega-embed")
# dvc_render.html.HTML.embed() replaces these strings anywhere in the template, inlined code included.
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")
# Inside a <script> element, "</script" ends it early and "<!--" can swallow the rest of the page.
SCRIPT_BREAKERS = re.compile(r"</script|<!--", re.IGNORECASE)

# `{scripts}` is left out on purpose: DVC fills it with its CDN <script> tags.
PAGE = """<!DOCTYPE html>
<!--
  DVC plots page with vega, vega-lite and vega-embed inlined, so `dvc plots show` renders offline.
  Built by scripts/build_plots_template.py from the npm registry's packages: rebuild, don't edit.
  Each <script> below holds the named build/*.min.js file byte for byte:
{manifest}
  DVC's scripts placeholder is left out on purpose: DVC would fill it with CDN <script> tags.
-->
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


@dataclass(frozen=True)
class Library:
    """One minified library as npm ships it."""

    name: str
    version: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()


def build_template(libraries: list[Library]) -> str:
    """The HTML template DVC fills, with the libraries inlined in the given order.

    Args:
        libraries: vega, vega-lite and vega-embed, in that order.

    Returns:
        The template text (UTF-8; it declares its charset because the libraries contain non-ASCII).

    Raises:
        ValueError: if the libraries are not the three expected, in order, or one of them contains
            text that would end its <script> element or that DVC would replace.
    """
    names = tuple(library.name for library in libraries)
    if names != LIBRARIES:
        raise ValueError(f"expected {', '.join(LIBRARIES)} in that order, got {', '.join(names)}")
    for library in libraries:
        if SCRIPT_BREAKERS.search(library.source):
            raise ValueError(f"{library.name} contains '</script' or '<!--' and cannot be inlined as is")
        for placeholder in DVC_PLACEHOLDERS:
            if placeholder in library.source:
                raise ValueError(f"{library.name} contains DVC's placeholder {placeholder}")
    manifest = "\n".join(
        f"    {library.name} {library.version} sha256:{library.sha256}" for library in libraries
    )
    scripts = "\n".join(f"    <script>{library.source}</script>" for library in libraries)
    return PAGE.format(manifest=manifest, scripts=scripts)


def read_library(path: Path) -> Library:
    """A build/*.min.js file from an unpacked npm package, named and versioned by its package.json.

    Args:
        path: `<unpacked>/package/build/<name>.min.js`.

    Returns:
        The library, its source read exactly as the file holds it.
    """
    package = json.loads((path.parent.parent / "package.json").read_text(encoding="utf-8"))
    source = path.read_bytes().decode("utf-8")  # bytes, not text mode: keep line endings exact
    return Library(name=package["name"], version=package["version"], source=source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in LIBRARIES:
        parser.add_argument(name.replace("-", "_"), type=Path, help=f"{name}'s build/{name}.min.js")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    args = parser.parse_args()

    libraries = [read_library(getattr(args, name.replace("-", "_"))) for name in LIBRARIES]
    template = build_template(libraries)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(template.encode("utf-8"))
    for library in libraries:
        print(f"{library.name} {library.version} sha256:{library.sha256}")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
