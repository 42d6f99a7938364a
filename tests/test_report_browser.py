"""The report's first screen in a real browser: headless Chromium renders the demo's report at
1400×900 and the answer (the two-halves figure and the paragraph generated from the CIs) must
lie wholly inside that screen. CI installs ``chromium-headless-shell`` (.ci/run)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from _demo_small import small_demo

from natgrad.analysis.report import SCREEN_RULE

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
WIDTH, HEIGHT = 1400, 900


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium on PATH (CI installs chromium-headless-shell)")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return small_demo(tmp_path_factory)


def _screenshot(html_path, out_png) -> np.ndarray:
    import matplotlib.image as mpimg

    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={out_png}", html_path.as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return mpimg.imread(out_png)[..., :3]


def test_first_screen_holds_the_whole_answer(demo_dir, tmp_path):
    img = _screenshot(demo_dir / "report.html", tmp_path / "first.png")
    assert img.shape[:2] == (HEIGHT, WIDTH)
    rule = np.array([int(SCREEN_RULE[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    hit = (np.abs(img - rule).max(-1) < 0.02).sum(1) > 0  # rows holding the first screen's rule
    rows = np.flatnonzero(hit)
    assert rows.size, "the answer's frame is not on the first screen"
    assert rows[0] < 250, f"the answer starts at row {rows[0]}: something above pushes it down"
    assert rows[-1] < HEIGHT - 5, "the answer runs past the first 1400×900 screen"
    top, bottom = rows[0], rows[-1]
    assert bottom - top > 300, "the frame is too short to hold the figure and the paragraph"
    inside = img[top:bottom, 200 : WIDTH - 200]
    ink = (inside.max(-1) - inside.min(-1) > 0.3).sum()  # coloured pixels: the figure's markers
    assert ink > 200, "no coloured figure inside the answer's frame"


def test_answer_paragraph_is_in_the_first_screen_markup(demo_dir):
    html = (demo_dir / "report.html").read_text()
    screen = html[html.index("<section id='first-screen'>") : html.index("</section>")]
    assert "data:image/png;base64," in screen and "<div id='answer'>" in screen
    assert "How the numbers were made" in html[html.index("</section>") :]
