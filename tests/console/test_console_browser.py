"""The web console in a real browser: Playwright for Python driving Debian's Chromium
(`apt-get install chromium`; never a downloaded browser), against the real shim and worker.

Without Chromium or Playwright these tests skip, except under CI (`CI` set), where they fail:
`.ci/run` installs both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runrelay.server.settings import Settings
from tests.conftest import ServerThread, TenantKey
from tests.environment import unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
# Set to a folder (e.g. docs/) to write the README's screenshots there.
SCREENSHOTS = os.environ.get("RUNRELAY_CONSOLE_SCREENSHOTS")

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = (
        "playwright is not installed"
        if sync_playwright is None
        else None
        if Path(CHROMIUM).exists()
        else f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    )
    if missing:
        unavailable(missing)
    expect.set_options(timeout=WAIT_MS)  # a loaded CI machine is slower than 5 s defaults
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def sign_in(page: Page, base_url: str, tenant: TenantKey) -> list[str]:
    """Open the console and sign in; the URLs of every request the page makes from then on."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(f"{base_url}/console/")
    page.fill("#api-key", tenant.key)
    page.click("#signin-form button")
    expect(page.locator("#app")).to_be_visible()
    return urls


def start_run(page: Page, agent: str, message: str) -> str:
    page.select_option("#new-agent", agent)
    page.fill("#new-message", message)
    page.click("#new-run button")
    expect(page.locator("#run-id")).to_have_text(re.compile(r"^run_\w+$"))
    return page.locator("#run-id").inner_text()


def event_seqs(page: Page) -> list[int]:
    seqs = page.locator("#events li").evaluate_all("items => items.map(e => e.dataset.seq)")
    return [int(s) for s in seqs]


def shoot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


def test_sign_in_start_a_run_and_watch_it_stream_to_done(
    page: Page, api: str, tenant: TenantKey
) -> None:
    urls = sign_in(page, api, tenant)
    assert page.evaluate("sessionStorage.getItem('runrelay.apiKey')") == tenant.key
    run_id = start_run(page, "credit-risk-analyst", "Assess ACME Corp")
    expect(page.locator("#events li[data-type=done]")).to_have_count(1)
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#output")).to_contain_text("Recommendation: approve the credit line")
    result = page.locator("#events li[data-type=tool_call_result]").first
    expect(result).to_contain_text("lookup_credit_score")
    expect(result).to_contain_text("ACME Corp")
    expect(page.locator("#run-usage")).to_contain_text("tokens")
    seqs = event_seqs(page)
    assert seqs == list(range(1, len(seqs) + 1))
    expect(page.locator(f"#runs tr[data-run-id={run_id}]")).to_have_attribute(
        "data-status", "completed"
    )
    expect(page.locator("#usage")).to_contain_text("limits")
    shoot(page, "console-run.png")
    # The key travels only in the Authorization header: no URL the page asked for holds it.
    assert not [u for u in urls if tenant.key in u]
    assert any("/events?token=" in u for u in urls), "the stream was followed with a token"


def test_approve_a_paused_run(page: Page, api: str, tenant: TenantKey) -> None:
    sign_in(page, api, tenant)
    start_run(page, "payments-officer", "Pay ACME Supplies 1250 EUR for INV-2041")
    expect(page.locator("#run-status")).to_have_text("requires_action")
    call = page.locator("#approval-list li")
    expect(call).to_contain_text("send_payment")
    shoot(page, "console-approval.png")
    call.locator("button.approve").click()
    expect(page.locator("#events li[data-type=done]")).to_contain_text("completed")
    sent = page.locator("#events li[data-type=tool_call_result]", has_text="send_payment")
    expect(sent).to_have_count(1)
    expect(page.locator("#approvals")).to_be_hidden()


def test_cancel_a_running_run(page: Page, api: str, tenant: TenantKey) -> None:
    sign_in(page, api, tenant)
    start_run(page, "slow-analyst", "Review the portfolio")
    expect(page.locator("#events li[data-type=output_text_delta]").first).to_be_visible()
    page.click("#run-cancel")
    expect(page.locator("#events li[data-type=done]")).to_contain_text("cancelled")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator("#run-cancel")).to_be_disabled()


def test_runs_list_filters_and_pages(page: Page, api: str, tenant: TenantKey) -> None:
    with httpx.Client(base_url=api, headers=tenant.headers, timeout=30) as client:
        created = [
            client.post(
                "/v1/runs", json={"agent": "slow-analyst", "message": "x", "thread_id": f"th-{i}"}
            ).json()["id"]
            for i in range(16)
        ]
        cancelled = client.post(f"/v1/runs/{created[0]}/cancel")
        assert cancelled.status_code in (200, 202)
    sign_in(page, api, tenant)
    rows = page.locator("#runs tbody tr")
    expect(rows).to_have_count(15)
    expect(rows.first).to_have_attribute("data-run-id", created[-1])
    page.click("#page-older")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-run-id", created[0])
    page.click("#page-newer")
    expect(rows).to_have_count(15)
    page.fill("#filter-thread", "th-3")
    page.click("#filters button")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-run-id", created[3])
    page.fill("#filter-thread", "")
    page.select_option("#filter-status", "cancelled")
    page.click("#filters button")
    expect(rows.first).to_have_attribute("data-run-id", created[0])
    expect(rows).to_have_count(1)
    shoot(page, "console-runs.png")
    with httpx.Client(base_url=api, headers=tenant.headers, timeout=30) as client:
        for run_id in created[1:]:
            client.post(f"/v1/runs/{run_id}/cancel")


@pytest.fixture
def restartable_api(settings: Settings, api: str) -> Iterator[list[ServerThread]]:
    """A shim of its own (beside the session's) that the test stops and starts on one port."""
    from api_shim.app import create_app

    servers = [ServerThread(create_app(settings))]
    servers[0].start()
    yield servers
    servers[-1].stop()


def test_console_reconnects_across_an_api_restart_without_duplicates(
    page: Page, restartable_api: list[ServerThread], tenant: TenantKey, settings: Settings
) -> None:
    from api_shim.app import create_app

    first = restartable_api[0]
    sign_in(page, first.base_url, tenant)
    start_run(page, "slow-analyst", "Review the portfolio")
    deltas = page.locator("#events li[data-type=output_text_delta]")
    expect(deltas.nth(4)).to_be_visible()
    first.server.force_exit = True  # an abrupt stop: open streams are cut, not drained
    first.stop()
    second = ServerThread(create_app(settings))
    second.port, second.base_url = first.port, first.base_url
    second.server.config.port = first.port
    restartable_api.append(second)
    expect(page.locator("#run-stream-state")).not_to_have_text("live")
    second.start()
    expect(page.locator("#events li[data-type=done]")).to_contain_text("completed")
    seqs = event_seqs(page)
    assert seqs == list(range(1, len(seqs) + 1)), f"gap or duplicate in {seqs}"
    assert page.locator("#events").get_attribute("data-duplicates") == "0"
    text = page.locator("#output").inner_text()
    assert text.count("Reviewing the portfolio") == 1
    assert text.rstrip().endswith("no action is needed today.")


def test_console_assets_need_no_network_beyond_the_api(page: Page, api: str) -> None:
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(api) else outside.append(r.url))
    page.goto(f"{api}/console/")
    expect(page.locator("#signin")).to_be_visible()
    page.goto(f"{api}/docs")
    expect(page.locator(".swagger-ui .info")).to_be_visible()
    expect(page.locator(".swagger-ui .authorize")).to_be_visible()
    assert outside == []
