"""The thread-tree page (`GET /`) in a real browser: headless Chromium
(Debian's `chromium` and `chromium-driver`) driven by Selenium.

Usage: tree_page_test.py BASE_URL API_KEY MODEL SCREENSHOT

Opens the page, sends a forced-fork ThreadWeaver request (3 outlines) with
the official `openai` client while the page is live, and asserts from the
DOM that the tree shows the root, its 3 children with their text, the join,
and the request's stats; that the root's text on the page equals the
response's text; then reloads the page and asserts the same tree comes back
from the snapshot of recent requests. Saves a screenshot to SCREENSHOT.
"""
import shutil
import sys
import time
import urllib.error
import urllib.request

import openai
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

base, key, model, shot = sys.argv[1:5]


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no chromium on PATH (Debian: apt-get install chromium chromium-driver)")


def wait(what, f, timeout=60.0):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            last = f()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - the DOM may be mid-update
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def check_tree(driver, name, text):
    card = driver.find_element(By.CSS_SELECTOR, f'section.request[data-request="{name}"]')
    assert card.get_attribute("data-state") in ("stop", "length"), card.get_attribute("data-state")
    roots = card.find_elements(By.CSS_SELECTOR, ":scope > .tree > .thread")
    assert len(roots) == 1 and roots[0].get_attribute("data-thread") == "0", roots
    root = roots[0]
    forks = root.find_elements(By.CSS_SELECTOR, ":scope > .body > .fork")
    assert len(forks) == 1, f"{len(forks)} forks"
    children = forks[0].find_elements(By.CSS_SELECTOR, ":scope > .children > .thread")
    assert len(children) == 3, f"{len(children)} children"
    for c in children:
        assert c.get_attribute("data-state") == "done", c.get_attribute("outerHTML")[:300]
        shown = c.find_element(By.CSS_SELECTOR, ":scope > .body > pre.text").text
        assert shown.strip(), "a child shows no text"
    joins = forks[0].find_elements(By.CSS_SELECTOR, ":scope > .join")
    assert len(joins) == 1 and joins[0].get_attribute("data-children") == "3", joins
    own = root.find_elements(By.CSS_SELECTOR, ":scope > .body > pre.text")
    shown = "".join(p.get_attribute("textContent") for p in own)
    assert shown == text, f"the page shows the root as {shown!r}, the response says {text!r}"
    stats = {d.get_attribute("data-stat"): d.find_element(By.TAG_NAME, "dd").text
             for d in card.find_elements(By.CSS_SELECTOR, "dl.stats > div")}
    assert stats.get("forks") == "1", stats
    return stats


opts = webdriver.ChromeOptions()
opts.binary_location = chromium()
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1100"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
try:
    # The feed is guarded by the API key like /v1.
    try:
        urllib.request.urlopen(f"{base}/weft/tree", timeout=10)
        raise AssertionError("/weft/tree answered without the API key")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.code

    driver.get(f"{base}/?api_key={key}")
    wait("the page to connect", lambda: driver.find_element(By.ID, "status")
         .get_attribute("data-state") == "connected")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    prompt = ("Question: how far apart are (1, 2) and (7, -7)?\n<Parallel>\n<Outlines>\n"
              "<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n"
              "<Outline>3: Add them.</Outline>\n</Outlines>")
    r = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0,
                                  extra_body={"parallel": {"protocol": "threadweaver"}})
    weft = r.choices[0].model_extra["weft"]
    assert weft["stats"]["forks"] == 1, weft["stats"]
    name = f"{r.id}/0"
    wait("the request to finish on the page", lambda: driver.find_element(
        By.CSS_SELECTOR, f'section.request[data-request="{name}"]')
        .get_attribute("data-state") != "running")
    stats = check_tree(driver, name, r.choices[0].text)
    assert stats.get("tokens") == str(weft["stats"]["total_tokens"]), (stats, weft["stats"])
    driver.save_screenshot(shot)
    print(f"ok    live: root, 3 children, the join and stats ({stats}); screenshot {shot}")

    driver.refresh()
    wait("the page to reconnect", lambda: driver.find_element(By.ID, "status")
         .get_attribute("data-state") == "connected")
    wait("the snapshot to show the request", lambda: driver.find_elements(
        By.CSS_SELECTOR, f'section.request[data-request="{name}"]'))
    check_tree(driver, name, r.choices[0].text)
    print("ok    after a reload: the same tree from the snapshot of recent requests")
finally:
    driver.quit()
