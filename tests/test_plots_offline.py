"""`dvc plots show` writes a page that draws its charts with no network (Vega inlined through the HTML template
in .dvc/config), checked in a real headless Chromium from Debian's packages."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")

# Per plot: is it drawn (an SVG with marks, or a canvas with painted pixels)?
DRAWN = """
return Array.from(document.querySelectorAll('div[id]')).filter(d => d.querySelector('canvas, svg')).map(d => {
  const c = d.querySelector('canvas');
  if (!c) return d.querySelectorAll('svg path, svg line, svg rect').length > 2;
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let painted = 0;
  for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
  return painted > 500;
});
"""


def chromium(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,2000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def test_plots_page_draws_every_chart_without_network(tmp_path):
    out = tmp_path / "plots"
    run = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    page = (out / "index.html").read_text()
    assert "<script src=" not in page  # nothing loaded from a CDN
    n_plots = page.count("vegaEmbed(")
    assert n_plots >= 3  # pretrain and finetune curves, evaluate's bars

    driver = chromium(tmp_path)
    try:
        driver.get((out / "index.html").as_uri())
        deadline = time.time() + 30
        while (drawn := driver.execute_script(DRAWN)).count(True) < n_plots and time.time() < deadline:
            time.sleep(0.5)
        driver.save_screenshot(str(tmp_path / "plots.png"))
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('file:'))")
    finally:
        driver.quit()
    assert drawn.count(True) == n_plots, f"{drawn.count(True)} of {n_plots} charts drawn"
    assert fetched == []
