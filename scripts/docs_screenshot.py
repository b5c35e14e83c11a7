"""Render the built docs site's home page with headless Chromium and check that the theme came through.

    python scripts/docs_screenshot.py SITE_DIR OUT.png

The site is served from SITE_DIR on 127.0.0.1 (as a browser would get it, not from file:// paths) and
Chromium (Debian's `chromium`) writes a screenshot. The check: the page is not blank, and its header bar
has the theme's primary colour (mkdocs.yml's `theme.palette.primary`), so a theme whose CSS did not load,
or a layout that lost its header, fails. Exit 0 with the screenshot written, 1 when the check fails.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image

# Material's "indigo" primary colour (its palette's --md-primary-fg-color), the header bar's background.
INDIGO = (0x40, 0x51, 0xB5)
WINDOW = (1280, 900)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # one line per asset would bury the check's own result


def screenshot(site: Path, out: Path, browser: str) -> None:
    handler = functools.partial(QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
                            f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={out}", url],
                           check=True, capture_output=True, timeout=120)
        server.shutdown()


def check(png: Path) -> list[str]:
    """What is wrong with the rendered home page (nothing: an empty list)."""
    image = Image.open(png).convert("RGB")
    problems = []
    if image.size != WINDOW:
        problems.append(f"the screenshot is {image.size}, expected {WINDOW}")
    header = image.getpixel((image.width // 2, 10))
    if max(abs(a - b) for a, b in zip(header, INDIGO)) > 24:
        problems.append(f"the header bar is {header}, not the theme's primary colour {INDIGO}: the theme's CSS did not apply")
    colours = image.getcolors(maxcolors=1 << 16)
    if colours is not None and len(colours) < 16:
        problems.append(f"the page has {len(colours)} colours: it is blank or nearly so")
    return problems


def main() -> int:
    site, out = Path(sys.argv[1]), Path(sys.argv[2])
    browser = chromium()
    if browser is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    screenshot(site, out, browser)
    problems = check(out)
    for problem in problems:
        print(f"docs-check: {problem}", file=sys.stderr)
    print(f"docs-check: {'FAILED' if problems else 'PASSED'}, screenshot {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
