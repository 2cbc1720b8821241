"""The review page in a real headless Chromium (Debian's chromium and chromedriver, through Selenium): judge
five pairs with the keyboard only, reload, find all five in the reviewer's file and the sixth pair on the page;
Hebrew laid out right to left, in the DOM and in the pixels of a screenshot."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_review import HEBREW, write_outputs
from werkzeug.serving import make_server

from langlift.review.app import create_app
from langlift.review.pairs import load_group, shown_order
from langlift.review.store import ReviewLog, log_path, read_log

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")


@pytest.fixture()
def served(tmp_path) -> Iterator[tuple[str, list, Path]]:
    """The review app for reviewer ``dana`` over 7 Hebrew pairs, served on a free port of 127.0.0.1."""
    write_outputs(tmp_path / "evaluate_outputs", 7)
    pairs = load_group("default", tmp_path / "evaluate_outputs")
    path = log_path("dana", tmp_path / "review")
    server = make_server("127.0.0.1", 0, create_app(pairs, ReviewLog(path), "dana", 1234, HEBREW), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", pairs, path
    server.shutdown()
    thread.join(10)


@pytest.fixture()
def browser(tmp_path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1200,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def ink_columns(png: bytes) -> tuple[int, int, int]:
    """(first, last) x of the non-background pixels of a screenshot, and its width."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    box = image.point(lambda v: 255 if v < 160 else 0).getbbox()  # dark text on a light background
    assert box, "the screenshot shows no text"
    return box[0], box[2], image.width


def test_five_pairs_by_keyboard_survive_a_reload_and_hebrew_runs_right_to_left(served, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, pairs, path = served
    wait = WebDriverWait(browser, 15)
    browser.get(url)

    prompt = wait.until(EC.presence_of_element_located((By.ID, "prompt")))
    assert prompt.get_attribute("lang") == "he" and prompt.get_attribute("dir") == "rtl"
    assert browser.execute_script("return getComputedStyle(arguments[0]).direction", prompt) == "rtl"
    answer = browser.find_element(By.CSS_SELECTOR, "#answer-1 .text")
    assert browser.execute_script("return getComputedStyle(arguments[0]).direction", answer) == "rtl"
    left, right, width = ink_columns(answer.screenshot_as_png)  # a short answer in a wide box: flush right
    assert right > 0.9 * width and left > 0.4 * width, (left, right, width)

    keys = ["1", "2", "3", "1", "2"]
    for i, key in enumerate(keys):
        pair = wait.until(EC.presence_of_element_located((By.ID, "pair")))
        assert pair.get_attribute("data-key") == pairs[i].key
        ActionChains(browser).send_keys(key).perform()
        wait.until(lambda d: pair.get_attribute("data-saved") == key)
        if i == 1:  # correct the better answer: e, type, Ctrl+Enter saves and goes on
            ActionChains(browser).send_keys("e").perform()
            editor = browser.find_element(By.ID, "editor")
            assert browser.switch_to.active_element == editor
            ActionChains(browser).send_keys(Keys.END, " מתוקן").key_down(Keys.CONTROL).send_keys(Keys.ENTER) \
                .key_up(Keys.CONTROL).perform()
        else:
            ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait.until(EC.staleness_of(pair))

    browser.refresh()
    pair = wait.until(EC.presence_of_element_located((By.ID, "pair")))
    assert pair.get_attribute("data-key") == pairs[5].key         # resumes at the sixth pair
    assert "5 of 7 judged" in browser.find_element(By.ID, "progress").text

    saved = read_log(path)
    judged = [r for r in saved if r["type"] == "judgement"]
    assert [r["key"] for r in judged] == [p.key for p in pairs[:5]]
    expected = [shown_order(1234, "dana", p.key)[int(k) - 1] if k != "3" else "both_bad" for p, k in zip(pairs, keys)]
    assert [r["choice"] for r in judged] == expected
    correction = next(r for r in saved if r["type"] == "correction")
    assert correction["id"] == pairs[1].id and correction["text"] == pairs[1].answers[expected[1]] + " מתוקן"
