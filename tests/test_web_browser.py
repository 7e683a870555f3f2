"""The control room in a real browser: Debian's headless Chromium, driven by selenium through
Debian's chromedriver (nothing downloaded: both paths are given and Selenium Manager is told to
stay offline), against a real `stage-bridge serve` with the tiny-random model on the CPU.

What a musician does: open the page (no console errors), drop a file (a DataTransfer dropped on
the drop zone, as the browser builds it for a real drag), watch the progress move, cancel, drop
another and find its take with an audio player of the right length. A screenshot of each state
is saved under $STAGE_BRIDGE_ARTIFACTS/web (or the test's tmp folder) for a person to look at.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf

from conftest import require_tool
from daemon_util import Daemon, free_udp_port

pytestmark = pytest.mark.slow  # a whole daemon and a browser

WAIT = 120.0  # generous: a loaded 2-core machine; every wait ends as soon as its condition holds
SR = 44100


def wav_b64(seconds: float, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (rng.standard_normal((int(seconds * SR), 2)) * 0.1).astype(np.float32), SR, format="WAV",
             subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


DROP = """
const [b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type: 'audio/wav'}));
const zone = document.getElementById('drop');
for (const type of ['dragenter', 'dragover', 'drop']) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
}
"""


def wait_until(what: str, condition: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


@pytest.fixture
def artifacts(tmp_path) -> Path:
    root = os.environ.get("STAGE_BRIDGE_ARTIFACTS")
    folder = Path(root) / "web" if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver  # in the test extra: a missing one is an error, not a skip
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                "--window-size=1400,1100", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def web_url(daemon: Daemon) -> str:
    ready = daemon.wait_log(lambda line: line.startswith("stage-bridge ready:"), 5)
    return ready.rsplit(", web ", 1)[1].strip()


def set_field(driver, element_id: str, value: str) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(value)


def test_drop_watch_cancel_and_hear_a_take(tmp_path, browser, artifacts):
    daemon = Daemon(tmp_path / "home", reply_port=free_udp_port()).start()
    try:
        url = web_url(daemon)
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        browser.get(url)
        wait_until("connected", lambda: browser.find_element("id", "link").text == "connected")
        wait_until("status shown", lambda: "tiny-random" in browser.find_element("id", "status").text)
        browser.save_screenshot(str(artifacts / "01-loaded.png"))
        assert not browser.find_element("id", "capture").is_displayed()  # no capture input: no capture button
        assert console_errors(browser) == []

        # a long job: its progress moves, then it is cancelled
        set_field(browser, "f-bpm", "120")
        set_field(browser, "f-bars", "64")
        browser.execute_script(DROP, wav_b64(3.0, seed=1), "long verse.wav")
        progress = lambda: browser.execute_script(  # looked up each time: the queue is redrawn as jobs change
            "const bar = document.querySelector('#queue progress'); return bar ? bar.value : 0;")
        first = wait_until("progress starts", progress)
        wait_until("progress moves", lambda: progress() > first)
        browser.save_screenshot(str(artifacts / "02-progress.png"))
        browser.find_element("css selector", "#queue button.cancel").click()
        wait_until("cancelled", lambda: browser.find_elements("css selector", "article.job .state.cancelled"))
        wait_until("queue empty", lambda: "Nothing running" in browser.find_element("id", "queue").text)
        browser.save_screenshot(str(artifacts / "03-cancelled.png"))

        # a short job: its take appears with a player as long as the bars asked for
        set_field(browser, "f-bars", "2")
        browser.execute_script(DROP, wav_b64(4.0, seed=2), "chorus.wav")
        wait_until("a take", lambda: browser.find_elements("css selector", "article.job .take audio"))
        duration = wait_until("the take's duration", lambda: browser.execute_script(
            "const a = document.querySelector('article.job .take audio'); return a.readyState >= 1 && a.duration;"))
        assert duration == pytest.approx(2 * 4 * 60 / 120, abs=1e-3)
        wait_until("its waveform", lambda: browser.execute_script(
            "const i = document.querySelector('article.job .take img.wave'); return i.complete && i.naturalWidth;"))
        assert browser.find_element("css selector", "article.job .state").text == "done"
        assert "chorus" in browser.find_element("css selector", "article.job h3").text
        browser.save_screenshot(str(artifacts / "04-take.png"))

        # heard with its song, in sync (Web Audio), then kept
        together = lambda: browser.find_element("css selector", "article.job .take button.together")
        together().click()
        wait_until("playing together", lambda: together().text == "Stop")
        browser.save_screenshot(str(artifacts / "05-playing.png"))
        together().click()
        wait_until("stopped", lambda: together().text == "Play with context")
        browser.find_element("css selector", "article.job .take button.keep").click()
        wait_until("kept", lambda: "Kept as" in browser.find_element("id", "message").text)
        kept = list((daemon.home / "kept").glob("chorus - drums take 1 (120 bpm, seed *).wav"))
        assert len(kept) == 1, list((daemon.home / "kept").iterdir())

        # the same job service as OSC: the journal lists both jobs, from the web
        assert daemon.home.joinpath("bounces").is_dir()
        uploads = sorted(p.name for p in (daemon.home / "bounces").iterdir())
        assert len(uploads) == 2 and all(".web-" in name for name in uploads)
        assert console_errors(browser) == []
    finally:
        rc = daemon.stop()  # with the page still open: its event stream must not hold the daemon up
    assert rc == 0, daemon.log_text()
