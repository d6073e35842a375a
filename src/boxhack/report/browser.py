"""See a rendered report as a person would: headless Chromium, and a static check of it.

:func:`inspect_page` and :func:`screenshot` drive Debian's ``chromium`` in headless mode (an
offline, throw-away profile per call) to see how tall the page is and whether every ``<img>``
decoded; :func:`check_report` combines that with static checks of the file (every figure an
embedded PNG that decodes, none missing, as many as expected) and looks for blank regions in
the screenshot.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from boxhack.errors import BoxhackError

__all__ = [
    "CHROMIUM_FLAGS",
    "CHROMIUM_HINT",
    "check_report",
    "find_chromium",
    "inspect_page",
    "page_images",
    "screenshot",
]

# Flags for a headless, offline, throw-away Chromium (a fresh --user-data-dir is added per call).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
CHROMIUM_HINT = "install Debian's chromium (as root: apt-get install -y chromium)"
_PNG_PREFIX = "data:image/png;base64,"


# ---------------------------------------------------------------------------------- browser


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None (``$BOXHACK_CHROMIUM`` wins)."""
    env = os.environ.get("BOXHACK_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise BoxhackError(f"no Chromium found to render the report; {CHROMIUM_HINT}")
    with tempfile.TemporaryDirectory(prefix="boxhack-chromium-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BoxhackError(f"Chromium did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise BoxhackError(f"Chromium failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc


_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    var r = i.getBoundingClientRect();
    return {figure: i.getAttribute('data-figure') || '', complete: i.complete,
            natural: [i.naturalWidth, i.naturalHeight], shown: [r.width, r.height],
            top: r.top + window.scrollY, left: r.left + window.scrollX};
  });
  var d = document.documentElement;
  document.body.setAttribute('data-boxhack-probe', JSON.stringify(
    {height: Math.max(d.scrollHeight, document.body.scrollHeight), width: d.scrollWidth,
     images: imgs, title: document.title,
     sections: document.querySelectorAll('section').length}));
});
</script>"""


def inspect_page(html_path: str | Path, *, width: int = 1400, timeout: float = 120) -> dict:
    """Load ``html_path`` in headless Chromium at ``width`` px; report what the browser saw.

    Returns ``{"height", "width", "title", "sections", "images": [{"figure", "complete",
    "natural": [w, h], "shown": [w, h], "top"}]}`` — ``natural`` is (0, 0) for an image the
    browser could not decode.
    """
    html_path = Path(html_path)
    text = html_path.read_text(encoding="utf-8")
    marker = text.rfind("</body>")
    probed = (text[:marker] + _PROBE + text[marker:]) if marker >= 0 else text + _PROBE
    with tempfile.TemporaryDirectory(prefix="boxhack-probe-") as tmp:
        page = Path(tmp) / "probe.html"
        page.write_text(probed, encoding="utf-8")
        proc = _chromium([f"--window-size={width},900", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], timeout)
    dom = proc.stdout.decode("utf-8", "replace")
    key = 'data-boxhack-probe="'
    start = dom.find(key)
    if start < 0:
        raise BoxhackError("Chromium loaded the page but the probe script did not run")
    end = dom.find('"', start + len(key))
    return json.loads(html.unescape(dom[start + len(key):end]))


def screenshot(
    html_path: str | Path,
    png_path: str | Path,
    *,
    width: int = 1400,
    height: int | None = None,
    timeout: float = 180,
) -> dict:
    """Screenshot ``html_path`` in headless Chromium to ``png_path`` (the whole page by default).

    Returns :func:`inspect_page`'s findings plus ``"png"`` (the path) and ``"height"`` used.
    """
    html_path = Path(html_path).resolve()
    png_path = Path(png_path).resolve()
    info = inspect_page(html_path, width=width, timeout=timeout)
    h = int(height or info["height"])
    h = max(200, min(h, 30000))  # beyond ~32k px the compositor gives up
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if png_path.exists():
        png_path.unlink()
    _chromium([f"--window-size={width},{h}", "--virtual-time-budget=10000",
               f"--screenshot={png_path}", html_path.as_uri()], timeout)
    if not png_path.is_file():
        raise BoxhackError(f"Chromium ran but wrote no screenshot to {png_path}")
    return {**info, "png": str(png_path), "screenshot_height": h}


# ---------------------------------------------------------------------------------- checking


class _ImgParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)


def page_images(text: str) -> list[dict[str, str]]:
    """The attributes of every ``<img>`` of an HTML page, in order."""
    parser = _ImgParser()
    parser.feed(text)
    return parser.images


def _decode_png(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a PNG, fully decoded (raises on a broken image)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "PNG":
            raise ValueError(f"a {im.format} image, not PNG")
        im.load()
        return im.size


def _static_findings(images: list[dict[str, str]]) -> tuple[list[dict], list[str]]:
    """Each ``<img>``: an embedded PNG ``data:`` URI that decodes to a non-empty image."""
    figures, problems = [], []
    for i, img in enumerate(images):
        src = img.get("src", "")
        name = img.get("data-figure") or f"image {i + 1}"
        if not src.startswith(_PNG_PREFIX):
            problems.append(f"{name}: not an embedded PNG data URI ({src[:40]!r})")
            continue
        try:
            size = _decode_png(base64.b64decode(src[len(_PNG_PREFIX):], validate=True))
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a finding
            problems.append(f"{name}: the embedded PNG does not decode ({exc})")
            continue
        if size[0] <= 0 or size[1] <= 0:
            problems.append(f"{name}: empty image {size}")
        figures.append({"figure": name, "size": list(size)})
    return figures, problems


def _browser_findings(html_path: Path, png_path: Path, width: int,
                      n_images: int) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """Load the page in headless Chromium: every image decoded and displayed with a size, a
    full-page screenshot with no blank figure region."""
    seen = screenshot(html_path, png_path, width=width)
    found = {"png": seen["png"], "page_height": seen["height"],
             "screenshot_height": seen["screenshot_height"]}  # fmt: skip
    problems = []
    shown = seen["images"]
    if len(shown) != n_images:
        problems.append(f"the browser shows {len(shown)} images, the file has {n_images}")
    for img in shown:
        nat, disp = img.get("natural") or [0, 0], img.get("shown") or [0, 0]
        if not img.get("complete") or nat[0] <= 0 or nat[1] <= 0:
            problems.append(f"{img.get('figure')}: the browser could not decode it")
        elif disp[0] < 50 or disp[1] < 50:
            problems.append(f"{img.get('figure')}: displayed at {disp[0]:.0f}x{disp[1]:.0f} "
                            f"px only")
    return found, problems + _blank_regions(Path(seen["png"]), shown)


def check_report(
    html_path: str | Path,
    png_path: str | Path | None = None,
    *,
    width: int = 1400,
    browser: bool = True,
    expected_figures: int | None = None,
) -> dict[str, Any]:
    """Check a rendered report as a reader would see it; returns findings with ``"ok"``.

    1. Static: every ``<img>`` is an embedded PNG ``data:`` URI that decodes to a non-empty
       image; no "figure missing" note; as many images as ``expected_figures`` (when given:
       the figures the run's summaries list).
    2. Browser (``browser=True``, needs Chromium): the page is loaded headless, every image
       decoded and is displayed with a non-zero size; a full-page screenshot is written to
       ``png_path`` (default: next to the report, ``.png``), and neither it nor any figure's
       region in it is blank (a single flat colour).
    """
    html_path = Path(html_path)
    images = page_images(html_path.read_text(encoding="utf-8"))
    figures, problems = _static_findings(images)
    n_missing = html_path.read_text(encoding="utf-8").count("figure missing:")
    if n_missing:
        problems.append(f"{n_missing} figure(s) listed by a summary are missing from the report")
    if expected_figures is not None and expected_figures != len(images):
        problems.append(f"the summaries list {expected_figures} figures but the report has "
                        f"{len(images)} images")
    result: dict[str, Any] = {"report": str(html_path), "images": len(images),
                              "expected_figures": expected_figures, "figures": figures}
    if browser:
        png = Path(png_path) if png_path is not None else html_path.with_suffix(".png")
        found, seen_problems = _browser_findings(html_path, png, width, len(images))
        result.update(found)
        problems += seen_problems
    result["problems"] = problems
    result["ok"] = not problems
    return result


def _blank_regions(png: Path, shown: list[dict[str, Any]]) -> list[str]:
    """A blank screenshot, or a figure whose screen region is one flat colour, is a problem."""
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    problems = []
    if pixels.size == 0 or pixels.std() < 2.0:
        problems.append(f"the screenshot {png} is blank")
        return problems
    for img in shown:
        top, left = int(img.get("top", 0)), int(img.get("left", 0))
        w, h = (int(v) for v in (img.get("shown") or [0, 0]))
        region = pixels[max(top, 0):top + h, max(left, 0):left + w]
        if region.size == 0:
            problems.append(f"{img.get('figure')}: outside the screenshot (top {top} px)")
        elif region.std() < 2.0:
            problems.append(f"{img.get('figure')}: its region of the screenshot is blank")
    return problems
