"""MkDocs hooks: the repository's own pictures served by the site without a copy in docs/.

The README and the docs show the same screenshots and chart (`static/screenshot*.png`,
`bench/chart.png`, made by `tests/screenshot_*.py` and `make bench`). Rather than a second copy
that would fall behind, each is added to the site at its repository path, so a page links it
as `static/screenshot.png` (from a page in a folder, `../static/screenshot.png`) and the strict
build checks the link like any other.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PICTURES = ("static/screenshot.png", "static/screenshot-image.png", "static/screenshot-diy.png",
            "static/screenshot-console-user.png", "static/screenshot-console-admin.png",
            "bench/chart.png")


def on_files(files: Files, config) -> Files:
    for path in PICTURES:
        files.append(File(path, src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
