"""The ops team's path through the console in Debian's chromium: log in, open the model,
compare two versions, see the gate refuse a worse candidate, promote a better one that a
second admin approves, watch the history and the trend chart, roll back, and revoke a key
after which its browser session is refused. It saves a picture of each page it passes in its
temporary folder; `scripts/console_screenshots.py` runs it to make the README's screenshots."""

import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.serving.console.conftest import ConsoleWorld, submit_job

pytestmark = pytest.mark.slow


def _login(page: Page, world: ConsoleWorld, secret: str) -> None:
    page.goto(world.url + "/login")
    page.get_by_label("API key").fill(secret)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()


UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)"""


def _check_accessible(page: Page) -> None:
    """Every form control has a label; the first Tab reaches the skip link."""
    assert page.evaluate(UNLABELLED) == []
    page.bring_to_front()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")


def _shot(page: Page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / "screenshots" / f"console-{name}.png"), full_page=True)


def test_the_ops_path(browser: Browser, console_world: ConsoleWorld, tmp_path: Path) -> None:
    job_id = submit_job(console_world, console_world.alice, tmp_path)  # trains meanwhile
    alice = browser.new_page(viewport={"width": 1280, "height": 800})
    _login(alice, console_world, console_world.alice)
    _shot(alice, tmp_path, "models")

    alice.get_by_role("link", name="demo", exact=True).click()
    expect(alice.get_by_role("heading", name="Model demo")).to_be_visible()
    _check_accessible(alice)
    alice.get_by_label("Search versions").fill("upper")
    expect(alice.locator("#versions")).to_contain_text("1 version matching")
    alice.get_by_label("Search versions").fill("")
    expect(alice.locator("#versions")).to_contain_text("4 versions")

    alice.get_by_label("Compare version 2").check()
    alice.get_by_label("Compare version 4").check()
    alice.get_by_role("button", name="Compare selected versions").click()
    expect(alice.get_by_role("heading", name="Compare versions of demo")).to_be_visible()
    expect(alice.locator("table").first).to_contain_text("+0.2")
    expect(alice.get_by_role("heading", name="Suite console-skills")).to_be_visible()
    expect(alice.get_by_role("heading", name="Examples whose output changed")).to_be_visible()
    alice.get_by_label("Differences only").check()
    expect(alice.locator("table").first).not_to_contain_text("created by")
    _shot(alice, tmp_path, "compare")

    alice.goto(console_world.url + "/models/demo")
    alice.get_by_label("Version", exact=True).select_option("3")
    alice.get_by_label("Reason (required)").first.fill("try the worse one")
    alice.get_by_role("button", name="Promote through the gate").click()
    expect(alice.get_by_role("alert")).to_contain_text("failed gate metric:exact_match")
    expect(alice.get_by_role("alert")).to_contain_text("'candidate': 0.4, 'champion': 0.6")

    alice.goto(console_world.url + "/models/demo")
    alice.get_by_label("Version", exact=True).select_option("4")
    alice.get_by_label("Reason (required)").first.fill("exact match up from 0.6 to 0.8")
    alice.get_by_label("Needs approval by a second admin").check()
    alice.get_by_role("button", name="Promote through the gate").click()
    expect(alice.get_by_role("status")).to_contain_text("waits for a second admin")
    assert console_world.gateway.registry.resolve("demo@production").version == 2

    bob_context = browser.new_context(viewport={"width": 1280, "height": 800})
    bob = bob_context.new_page()
    _login(bob, console_world, console_world.bob)
    bob.goto(console_world.url + "/models/demo")
    bob.get_by_role("button", name="Approve request").click()
    expect(bob.get_by_role("status")).to_contain_text("Approved")
    history = bob.locator("#history + ol li").first
    expect(history).to_contain_text("promote production: 2 → 4")
    expect(history).to_contain_text("requested by key")
    expect(history).to_contain_text("ops-alice")
    expect(history).to_contain_text("delta +0.2")
    expect(bob.get_by_role("img", name="exact_match across versions")).to_contain_text("0.8")
    _shot(bob, tmp_path, "model")

    bob.get_by_label("Reason (required)").nth(1).fill("roll back to check a drift alarm")
    bob.get_by_role("button", name="Roll back").click()
    expect(bob.locator("#history + ol li").first).to_contain_text("rollback production: 4 → 2")
    assert console_world.gateway.registry.resolve("demo@production").version == 2

    bob.get_by_role("link", name="evalrun-").first.click()
    expect(bob.get_by_role("heading", name="Outputs")).to_be_visible()
    expect(bob.locator("table").nth(1)).to_contain_text("upper")
    _shot(bob, tmp_path, "run")

    bob.goto(console_world.url + "/models/demo/versions/4")
    expect(bob.get_by_role("img", name="Lineage")).to_contain_text("demo:1")
    expect(bob.get_by_role("img", name="Lineage")).to_contain_text("adapter / peft-lora")
    expect(bob.get_by_role("img", name="Lineage")).to_contain_text("tag teacher")
    _check_accessible(bob)
    bob.get_by_role("button", name="Verify the stored files").click()
    expect(bob.locator("#verify-result")).to_contain_text("every digest matches")
    _shot(bob, tmp_path, "version")

    bob.get_by_role("link", name="Explain an answer of demo:4").click()
    bob.get_by_label("Prompt").fill("Uppercase: hello world")
    bob.get_by_label("Answer to explain").fill("HELLO WORLD")
    bob.get_by_role("button", name="Explain").click()
    heat = bob.get_by_role("table", name="Heat map")
    expect(heat).to_contain_text("(whole answer)", timeout=60_000)  # seconds on a busy CPU
    expect(heat).to_contain_text("hello")
    _shot(bob, tmp_path, "explain")

    bob.goto(f"{console_world.url}/jobs/{job_id}")
    deadline = time.monotonic() + 300  # the job trains in its own process: a minute or so
    while bob.locator("#job-status").inner_text() not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "the fine-tuning job did not finish"
        bob.wait_for_timeout(1000)
        bob.reload()
    expect(bob.locator("#job-status")).to_have_text("succeeded")
    expect(bob.get_by_role("img", name="training loss across steps")).to_be_visible()
    _shot(bob, tmp_path, "job")

    alice.goto(console_world.url + "/keys")
    alice.get_by_label("Name").fill("temp-admin")
    alice.get_by_label("Admin", exact=True).check()
    alice.get_by_label("Your API key (needed to create an admin key)").fill(console_world.alice)
    alice.get_by_role("button", name="Create key").click()
    secret = alice.locator("#new-secret").inner_text().strip()
    _shot(alice, tmp_path, "keys")
    temp = browser.new_context().new_page()
    _login(temp, console_world, secret)
    alice.get_by_role("button", name="Revoke key temp-admin").click()
    expect(alice.locator("tr", has_text="temp-admin")).to_contain_text("revoked")
    temp.reload()
    expect(temp.get_by_role("alert")).to_contain_text("its API key was revoked")
    bob_context.close()
