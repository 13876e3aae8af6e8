"""The console page (``GET /console``) in headless Chromium against real nodes.

Two nodes on one Redis; agents come, move to the other node and go; a tap shows a real
subagents task request and its response; a wrong token and a node without
``--admin-token`` are told apart. Each step leaves a screenshot in
``artifacts/console/``.
"""

import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import Locator, Page, ViewportSize, expect

from tests.integration.procs import AgentProcess
from tests.operations.conftest import OpsCluster
from tests.operations.ops import ADMIN_TOKEN, ws_connect
from tests.support.browser import chromium, screenshot
from tests.support.messages import encode, task_request
from tests.support.waiting import TIMEOUT

pytestmark = pytest.mark.integration

VIEWPORT: ViewportSize = {"width": 1500, "height": 820}
# A name the hub admits (no whitespace, braces or control characters) that would turn
# into markup if the page ever wrote names as HTML.
HOSTILE = "<i>evil&amp;"


def agent_row(page: Page, agent: str, node: str | None = None) -> Locator:
    """The row of ``agent`` (on ``node``, if given) in the agents table."""
    selector = f'[data-testid=agent-row][data-agent="{agent}"]'
    if node is not None:
        selector += f'[data-node="{node}"]'
    return page.locator(selector)


def subagents(request: pytest.FixtureRequest, tmp: Path, role: str, *args: str) -> AgentProcess:
    """A ``tests.agents.subagents_<role>`` program, started now."""
    proc = AgentProcess.reported(request, tmp, role)
    module = f"tests.agents.subagents_{role}"
    proc.start([sys.executable, "-m", module, "--timeout", str(TIMEOUT), *args])
    return proc


async def test_console_follows_agents_and_taps_a_task(
    ops: OpsCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    expect.set_options(timeout=TIMEOUT * 1000)  # the suite's step timeout, not playwright's 5 s
    # The nodes start while the browser does.
    n1, n2 = ops.node("c1"), ops.node("c2")
    off = ops.node("off", redis=False, flags={"--admin-token": None})
    agents: list[AgentProcess] = []
    try:
        async with chromium() as browser:
            for node in (n1, n2, off):
                node.wait_ready()
            # The worker takes seconds to import pipecat: started now, it is up by the tap.
            worker = subagents(
                request, tmp_path, "worker", "--url", n2.url, "--name", "worker",
                "--peer", "client", "--on-peer-lost", "keep",
            )  # fmt: skip
            agents.append(worker)
            page = await browser.new_page(viewport=VIEWPORT)

            # The page needs no token; the API refuses a wrong one and the page says so.
            response = await page.goto(f"{n1.http_url}/console")
            assert response is not None and response.status == 200
            assert response.headers["content-type"].startswith("text/html")
            status = page.get_by_test_id("status")
            await expect(status).to_have_attribute("data-state", "idle")
            # Loading the page asked the API nothing: no refusal counted, none logged.
            assert n1.metrics().get("bushub_operator_refused_total", reason="bad_admin_token") == 0
            assert "refused GET /api/cluster" not in n1.log_text()
            await page.get_by_test_id("token-input").fill("not-the-token")
            await page.get_by_test_id("token-submit").click()
            await expect(status).to_contain_text("wrong admin token")
            await screenshot(page, "1-wrong-token")

            await page.get_by_test_id("token-input").fill(ADMIN_TOKEN)
            await page.get_by_test_id("token-submit").click()
            await expect(status).to_have_attribute("data-state", "ok")
            await expect(page.locator("[data-testid=nodes-table] [data-node=c2]")).to_have_count(1)

            # Agents appear, each on its node; a name is shown as text, never as markup.
            alice = await ws_connect(n1.ws_url("alice", peer="bob", on_peer_lost="keep"))
            bob = await ws_connect(n2.ws_url("bob", peer="alice", format="msgpack"))
            hostile = await ws_connect(n1.ws_url(quote(HOSTILE, safe="")))
            await expect(agent_row(page, "alice", "c1")).to_have_count(1)
            await expect(agent_row(page, "bob", "c2")).to_have_count(1)
            # How long it has been connected, to the minute: a count of seconds changed
            # every row at every refresh, and the table was laid out again each time.
            connected = agent_row(page, "alice", "c1").locator("[data-col=connected]")
            await expect(connected).to_have_text("<1m")
            await page.wait_for_function(  # the next refresh (the status line's time moves)
                "(before) => document.querySelector('[data-testid=status]').textContent !== before",
                arg=await status.text_content(),
            )
            await expect(connected).to_have_text("<1m")
            hostile_row = agent_row(page, HOSTILE, "c1")
            await expect(hostile_row.locator("[data-col=agent]")).to_have_text(HOSTILE)
            assert await page.locator("[data-testid=agents-table] i").count() == 0
            await screenshot(page, "2-agents")

            # alice connects to the other node: the takeover moves her row there.
            alice_again = await ws_connect(n2.ws_url("alice", peer="bob", on_peer_lost="keep"))
            await expect(agent_row(page, "alice", "c2")).to_have_count(1)
            await expect(agent_row(page, "alice", "c1")).to_have_count(0)
            await screenshot(page, "3-moved")

            # bob's socket closes: his row goes.
            await bob.close()
            await hostile.close()
            await expect(agent_row(page, "bob")).to_have_count(0)
            await expect(hostile_row).to_have_count(0)
            await screenshot(page, "4-gone")

            # The filter holds across refreshes, and the token and filter across a reload.
            search = page.get_by_test_id("search")
            await search.fill("ALI")
            visible = page.locator("[data-testid=agent-row]:visible")
            await expect(visible).to_have_count(1)
            await page.wait_for_function(  # the next refresh (the status line's time moves)
                "(before) => document.querySelector('[data-testid=status]').textContent !== before",
                arg=await status.text_content(),
            )
            await expect(visible).to_have_attribute("data-agent", "alice")
            await page.reload()
            await expect(status).to_have_attribute("data-state", "ok")
            await expect(search).to_have_value("ALI")
            await expect(visible).to_have_attribute("data-agent", "alice")
            await expect(agent_row(page, "worker", "c2")).to_be_hidden()
            await search.fill("")

            # Tap the worker, then a client on the other node asks it for one task.
            worker_row = agent_row(page, "worker", "c2")
            await worker_row.get_by_test_id("tap-button").click()
            await expect(page.get_by_test_id("tap-panel")).to_be_visible()
            await expect(page.locator("#tap-state")).to_have_attribute("data-state", "open")
            client = subagents(
                request, tmp_path, "client", "--url", n1.url, "--name", "client",
                "--peer", "worker", "--scenario", "tasks", "--count", "1",
            )  # fmt: skip
            agents.append(client)
            events = page.get_by_test_id("tap-event")
            asked = events.and_(page.locator('[data-type="BusTaskRequestMessage"]'))
            answered = events.and_(page.locator('[data-type="BusTaskResponseMessage"]'))
            await expect(asked.first).to_have_attribute("data-direction", "received")
            await expect(answered.first).to_have_attribute("data-direction", "sent")
            await expect(asked.first).to_contain_text("client → worker")
            await expect(answered.first).to_contain_text("worker → client")
            client.expect_done()
            # The worker's row counts what its socket took in and was sent.
            await expect(worker_row.locator("[data-col=in]")).not_to_have_text("0")
            await expect(worker_row.locator("[data-col=out]")).not_to_have_text("0")
            await asked.last.click()  # its body, pretty-printed
            await expect(page.locator("tr.tap-body:visible pre")).to_contain_text('"task_id"')
            await screenshot(page, "5-tap")
            # A message the hub refuses is shown too, with the reason.
            refused = task_request("alice", "worker", 9)
            refused["__type__"] = "evil.module.Payload"
            await alice_again.send(encode(refused))
            dropped = events.and_(page.locator('[data-dropped="type_not_allowed"]'))
            await expect(dropped.first).to_contain_text("received · dropped: type_not_allowed")
            await expect(dropped.first).to_contain_text("alice → worker")
            await screenshot(page, "5b-tap-refused")

            await page.get_by_test_id("tap-stop").click()
            await expect(page.get_by_test_id("tap-stop")).to_be_disabled()
            await expect(page.locator("#tap-state")).to_have_attribute("data-state", "stopped")
            await alice_again.close()
            await alice.close()

            # A node started without --admin-token: the page says the console is off.
            off_page = await browser.new_page(viewport=VIEWPORT)
            await off_page.goto(f"{off.http_url}/console")
            await off_page.get_by_test_id("token-input").fill(ADMIN_TOKEN)
            await off_page.get_by_test_id("token-submit").click()
            off_status = off_page.get_by_test_id("status")
            await expect(off_status).to_have_attribute("data-state", "off")
            await expect(off_status).to_contain_text("start it with --admin-token")
            await screenshot(off_page, "6-off")
    finally:
        for proc in agents:
            proc.end()
