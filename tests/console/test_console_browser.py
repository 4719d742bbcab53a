"""The web console in Debian's chromium (Playwright) against a real local Bookinfo mesh.

After load the graph draws live edges (rate, errors, p95, padlocks) and refreshes; a VirtualService
typed into the editor and applied shows in the config list; an invalid one shows the analyzer's
message as it is typed; explain shows the hop where a fault fired. Screenshots go to
docs/images/console-*.png (the docs show them). Only loopback requests are allowed.
"""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nbformat
import pytest

from meshkit.control.client import ApiError, ControlClient
from meshkit.runtime import catalog
from meshkit.runtime.local import LocalMesh, MeshError
from meshkit.runtime.ports import free_bases
from meshkit.runtime.state import StateDir
from tests.labs.browser import CHROMIUM, Browser, chromium, jupyterlab
from tests.waiting import wait_until

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
WAIT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium (./dev test does, as root)"),
]
pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")

REVIEWS_V2 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
"""
BAD_SUBSET = REVIEWS_V2.replace("subset: v2", "subset: v9")
RATINGS_ABORT = {
    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
    "metadata": {"name": "ratings", "namespace": "default"},
    "spec": {"hosts": ["ratings"], "http": [{
        "fault": {"abort": {"percentage": {"value": 100}, "httpStatus": 503}},
        "route": [{"destination": {"host": "ratings", "subset": "v1"}}]}]},
}


class Mesh:
    def __init__(self, local: LocalMesh) -> None:
        self.local = local
        status = local.status()
        self.ingress: str = status["ingress"]
        self.control = local.control_url() or ""
        self.client = ControlClient(self.control, token=local.admin_token())

    def get(self, path: str, headers: dict[str, str] | None = None) -> int:
        request = urllib.request.Request(self.ingress + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=15) as response:
            response.read()
            return int(response.status)

    def traffic(self, count: int) -> None:
        for _ in range(count):  # bounded: count requests, each with a 15 s timeout
            self.get("/productpage")

    @property
    def console(self) -> str:
        return f"{self.control}/ui#token={self.local.admin_token()}"  # <base href="ui/"> there


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("meshkit-console-home")
    saved = {k: os.environ.get(k) for k in ("MESHKIT_HOME", "MESHKIT_PORT_BASE", "MESHKIT_TRACE_SAMPLING")}
    os.environ.update({"MESHKIT_HOME": str(home), "MESHKIT_TRACE_SAMPLING": "100"})
    local = LocalMesh(StateDir.open(home))
    instances = sum(s.replicas for s in catalog.resolve(["bookinfo"], {}))
    try:
        for attempt in range(3):  # another suite may take the block between the check and the bind
            base = next(free_bases(instances))
            os.environ["MESHKIT_PORT_BASE"] = str(base)
            try:
                local.up(base_port=base, timeout=90.0)
                break
            except MeshError:
                if attempt == 2:
                    raise
        yield Mesh(local)
    finally:
        local.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def browser(mesh: Mesh) -> Iterator[Browser]:
    with chromium() as opened:
        yield opened
    assert not opened.outside, f"requests left the machine: {opened.outside[:5]}"


def open_console(browser: Browser, mesh: Mesh) -> Any:
    page = browser.context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(mesh.console)
    page.errors = errors
    return page


def test_graph_draws_live_edges_after_load(mesh: Mesh, browser: Browser) -> None:
    mesh.traffic(30)

    def scraped() -> bool:  # what the page is then asked to draw (each sidecar is scraped on its own)
        edges = mesh.client.request("GET", "telemetry", query={"window": "60"})["edges"]
        return len(edges) >= 4 and any(
            e["source_workload"].startswith("productpage") and e["destination_service"].startswith("reviews")
            and e["destination_version"] in ("v1", "v2") for e in edges)

    wait_until(scraped, 30, "telemetry edges for the traffic sent, productpage to reviews v1 or v2 too")
    page = open_console(browser, mesh)
    try:
        assert "#token" not in page.url  # the token left the address bar for sessionStorage
        page.locator(".edge").nth(3).wait_for(timeout=WAIT_MS)
        edges = page.locator(".edge").evaluate_all("els => els.map(e => e.dataset.edge)")
        assert "productpage v1 > reviews v1" in edges or "productpage v1 > reviews v2" in edges, edges
        assert page.locator(".edge .padlock").count() >= 3  # STRICT bookinfo: mTLS on the mesh's edges
        assert "rps" in page.locator(".edge-label").first.text_content()
        assert page.locator(".node[data-node='productpage v1'].ok").count() == 1
        page.locator("#live.on", has_text="live").wait_for(timeout=WAIT_MS)  # the event stream is open
        calls = page.evaluate("window.mk.calls")
        mesh.traffic(5)
        # live: the page redraws by itself when the stream says the telemetry changed (3 API calls)
        page.wait_for_function("n => window.mk.calls >= n + 3", arg=calls, timeout=WAIT_MS)
        page.locator(".node[data-node='reviews v2']").click()
        page.locator("#detail .red").wait_for(timeout=WAIT_MS)
        page.locator("#detail .chart .main-svg").first.wait_for(timeout=WAIT_MS)
        page.locator("#detail .chart-latency .main-svg").first.wait_for(timeout=WAIT_MS)
        lines = page.evaluate("[...document.querySelector('#detail .chart-latency').data]"
                              ".map(d => [d.name, d.y.filter(v => v !== null).length])")
        assert [name for name, _ in lines] == ["p50", "p95", "p99"], lines
        assert all(points > 0 for _, points in lines), lines  # steps with traffic have quantiles
        page.screenshot(path=str(IMAGES / "console-graph.png"))
        # an edge's own charts: only its caller's requests (productpage v1 -> reviews v2)
        page.locator(".edge[data-edge='productpage v1 > reviews v2'] .edge-hit").click()
        page.locator("#detail h3", has_text="productpage v1 -> reviews v2").wait_for(timeout=WAIT_MS)
        page.locator("#detail .chart-latency .main-svg").first.wait_for(timeout=WAIT_MS)
        page.screenshot(path=str(IMAGES / "console-edge-latency.png"))
        assert not page.errors, page.errors
    finally:
        page.close()


def test_editor_applies_a_virtual_service_and_shows_the_analyzers_message(mesh: Mesh,
                                                                         browser: Browser) -> None:
    page = open_console(browser, mesh)
    try:
        page.click("nav button[data-page=config]")
        page.locator("#config-list .config-row").first.wait_for(timeout=WAIT_MS)
        page.fill("#editor", BAD_SUBSET)  # as typed: validated without a click
        message = page.locator("#analysis .msg.error", has_text="MK0101")
        message.wait_for(timeout=WAIT_MS)
        assert "v9" in message.inner_text()
        page.screenshot(path=str(IMAGES / "console-invalid.png"))
        page.fill("#editor", "kind: VirtualService\nmetadata: [broken")
        page.locator("#analysis .msg.error").first.wait_for(timeout=WAIT_MS)
        page.fill("#editor", REVIEWS_V2)
        page.locator("#analysis .msg.ok-text").wait_for(timeout=WAIT_MS)
        page.click("#editor-apply")
        page.locator("#analysis .applied").wait_for(timeout=WAIT_MS)
        page.locator(".config-row[data-ref='VirtualService/default/reviews']").wait_for(timeout=WAIT_MS)
        assert mesh.client.get("virtualservice", "reviews")["items"][0]["resource"]["spec"]["http"][0][
            "route"][0]["destination"]["subset"] == "v2"
        page.locator("#history button.rollback").first.wait_for(timeout=WAIT_MS)
        page.locator("#history button", has_text="diff").first.click()  # the newest revision: this apply
        page.locator("#diff .add", has_text="subset: v2").wait_for(timeout=WAIT_MS)
        page.screenshot(path=str(IMAGES / "console-config.png"), full_page=True)
        revision = mesh.client.request("GET", "history")["revision"]
        page.locator("#history button.rollback").first.click()  # one click: back to the revision before
        page.locator(".config-row[data-ref='VirtualService/default/reviews']").wait_for(state="detached",
                                                                                     timeout=WAIT_MS)
        # a rollback is a new revision, without the VirtualService
        assert mesh.client.request("GET", "history")["revision"] == revision + 1
        refs = [i["ref"] for i in mesh.client.get("virtualservice")["items"]]
        assert "VirtualService/default/reviews" not in refs, refs
        assert not page.errors, page.errors
    finally:
        page.close()


def test_open_tabs_follow_changes_made_elsewhere_as_they_happen(mesh: Mesh, browser: Browser) -> None:
    """The Istio config tab never polls: a VirtualService applied from the CLI's API shows in its list,
    and its deletion leaves it, only because the event stream said the config changed."""
    page = open_console(browser, mesh)
    try:
        page.locator("#live.on").wait_for(timeout=WAIT_MS)
        page.click("nav button[data-page=config]")
        page.locator("#config-list .config-row").first.wait_for(timeout=WAIT_MS)
        row = page.locator(".config-row[data-ref='VirtualService/default/details']")
        assert row.count() == 0
        mesh.client.apply([{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                            "metadata": {"name": "details", "namespace": "default"},
                            "spec": {"hosts": ["details"], "http": [{"route": [{"destination": {
                                "host": "details"}}]}]}}])
        try:
            row.wait_for(timeout=5_000)  # the stream's settle time and one refresh, not a poll
        finally:
            mesh.client.delete("virtualservice", "details")
        row.wait_for(state="detached", timeout=5_000)
        assert not page.errors, page.errors
    finally:
        page.close()


def _wizard_yaml(page: Any, which: str) -> str:
    """Pick a wizard, fill the editor from its form, and wait for the analyzer to call it valid."""
    page.select_option("#wizard", which)
    page.locator(f"#wizard-{which}").wait_for(timeout=WAIT_MS)
    page.click(f"#wizard-{which}-fill")
    page.locator("#analysis .msg.ok-text").wait_for(timeout=WAIT_MS)  # valid over the current config
    return str(page.input_value("#editor"))


def _apply_from_editor(page: Any, mesh: Mesh) -> int:
    before = mesh.client.request("GET", "history")["revision"]
    page.click("#editor-apply")
    page.locator("#analysis .applied", has_text=f"revision {before + 1}").wait_for(timeout=WAIT_MS)
    return before + 1


def test_wizards_show_their_yaml_apply_it_and_the_fault_shows_on_traffic(mesh: Mesh,
                                                                          browser: Browser) -> None:
    start = mesh.client.request("GET", "history")["revision"]
    page = open_console(browser, mesh)
    try:
        page.click("nav button[data-page=config]")
        page.locator("#config-list .config-row").first.wait_for(timeout=WAIT_MS)

        # request timeouts: the YAML first, then applied, then its apply-to-effect timeline
        text = _wizard_yaml(page, "timeout")
        assert "timeout: 0.5s" in text and "attempts: 2" in text and "perTryTimeout: 0.2s" in text, text
        revision = _apply_from_editor(page, mesh)
        rule = mesh.client.get("virtualservice", "reviews")["items"][0]["resource"]["spec"]["http"][0]
        assert rule["timeout"] == "0.5s" and rule["retries"]["attempts"] == 2, rule
        page.locator("#timeline h3", has_text=f"Revision {revision}").wait_for(timeout=WAIT_MS)
        page.locator("#timeline .tl-row").first.wait_for(timeout=WAIT_MS)

        def synced() -> bool:  # shown after Apply; on a loaded machine the proxies may answer later
            if page.locator("#timeline .tl-state", has_text="synced").count():
                return True
            page.locator("#history button.timeline-open").first.click()  # the newest revision: this one
            return False

        wait_until(synced, 30, f"revision {revision}'s timeline to show every proxy's ACK", interval=0.5)
        acked = page.locator("#timeline .tl-row .ok-text").all_inner_texts()
        assert acked and all(t.startswith("+") and t.endswith(("ms", "s")) for t in acked), acked
        assert page.locator("#timeline .tl-mark.tl-acked").count() == len(acked)

        # request routing: end-user: jason to v2, everyone else to v1
        page.select_option("#wizard", "route")
        page.locator("#wr-subset option[value=v2]").wait_for(state="attached", timeout=WAIT_MS)
        page.select_option("#wr-subset", "v2")
        page.select_option("#wr-default", "v1")
        text = _wizard_yaml(page, "route")
        assert 'exact: "jason"' in text and "kind: DestinationRule" in text, text
        _apply_from_editor(page, mesh)
        spec = mesh.client.get("virtualservice", "reviews")["items"][0]["resource"]["spec"]
        assert spec["http"][0]["match"] == [{"headers": {"end-user": {"exact": "jason"}}}], spec
        assert [r["route"][0]["destination"]["subset"] for r in spec["http"]] == ["v2", "v1"], spec

        # fault injection on ratings, seen on traffic: reviews v2 (jason's) -> ratings turns red
        text = _wizard_yaml(page, "fault")
        assert "abort:" in text and "httpStatus: 503" in text and "delay:" not in text, text
        page.screenshot(path=str(IMAGES / "console-wizard-fault.png"), full_page=True)
        fault_revision = _apply_from_editor(page, mesh)
        ratings = mesh.client.get("virtualservice", "ratings")["items"][0]["resource"]
        fault = ratings["spec"]["http"][0]["fault"]
        assert fault["abort"] == {"percentage": {"value": 100}, "httpStatus": 503}, fault
        # bounded: 20 page views as jason, signed in (Bookinfo's login cookie), each calling ratings
        # through reviews v2
        for _ in range(20):
            assert mesh.get("/productpage", {"Cookie": "user=jason"}) == 200  # degrades, not fails
        page.click("nav button[data-page=graph]")
        # aborted before it left reviews' sidecar: Istio reports the destination version unknown
        edge = page.locator(".edge.bad[data-edge^='reviews v2 > ratings']")
        edge.first.wait_for(timeout=WAIT_MS)
        label = " ".join(edge.first.locator(".edge-label").all_text_contents())
        assert "100% err" in label, label  # every call there was aborted
        page.screenshot(path=str(IMAGES / "console-fault-graph.png"))

        # the fault's revision took effect: reviews v2's sidecar routed requests with it
        page.click("nav button[data-page=config]")
        row = page.locator("#timeline .tl-row[data-proxy='reviews-v2-0.default']")

        def first_request_shown() -> bool:
            page.locator("#history button.timeline-open").first.click()  # the newest revision
            page.locator("#timeline h3", has_text=f"Revision {fault_revision}").wait_for(timeout=WAIT_MS)
            return row.locator("td").nth(3).inner_text().startswith("+")

        wait_until(first_request_shown, 30, "reviews v2's first request under the fault's revision",
                   interval=0.5)
        assert row.locator(".tl-mark.tl-first_request").count() == 1
        page.screenshot(path=str(IMAGES / "console-timeline.png"), full_page=True)
        assert not page.errors, page.errors
    finally:
        page.close()
        mesh.client.rollback(start)


RECENT_RATES = """chart => Object.fromEntries([...chart.data].filter(d => d.name.startsWith("rate "))
    .map(d => [d.name, d.y.slice(-4, -1).reduce((a, b) => a + (b || 0), 0)]))"""


def test_the_traffic_shifting_wizard_applies_a_split_that_the_graph_then_shows(mesh: Mesh,
                                                                             browser: Browser) -> None:
    """All of reviews to v3 from the wizard's form; the reviews node's chart then shows requests to v3
    alone in its newest steps (one step a second over the last minute), while traffic flows."""
    start = mesh.client.request("GET", "history")["revision"]
    page = open_console(browser, mesh)
    try:
        page.click("nav button[data-page=config]")
        page.locator("#config-list .config-row").first.wait_for(timeout=WAIT_MS)
        page.select_option("#wizard", "shift")
        page.locator(".wiz-weight[data-version=v3]").wait_for(timeout=WAIT_MS)
        for version, weight in (("v1", "0"), ("v2", "0"), ("v3", "100")):
            page.fill(f".wiz-weight[data-version={version}]", weight)
        page.click("#wiz-fill")
        page.locator("#analysis .msg.ok-text").wait_for(timeout=WAIT_MS)
        assert "weight: 100" in page.input_value("#editor")
        _apply_from_editor(page, mesh)
        spec = mesh.client.get("virtualservice", "reviews")["items"][0]["resource"]["spec"]
        routes = [(r["destination"]["subset"], r.get("weight")) for r in spec["http"][0]["route"]]
        assert routes == [("v1", 0), ("v2", 0), ("v3", 100)], routes
        page.click("nav button[data-page=graph]")
        page.select_option("#graph-view", "app")
        node = page.locator(".node[data-node='reviews']")

        def only_v3() -> dict[str, float] | None:  # bounded: 8 page views a round, 40 s at most
            mesh.traffic(8)
            node.first.click()
            chart = page.locator("#detail .chart-rate").first
            chart.locator(".main-svg").first.wait_for(timeout=WAIT_MS)
            rates: dict[str, float] = chart.evaluate(RECENT_RATES)
            v3 = rates.get("rate v3", 0.0)
            others = sum(v for name, v in rates.items() if name != "rate v3")
            return rates if v3 > 0 and others == 0 else None

        rates = wait_until(only_v3, 40, "the reviews chart's newest steps to show v3 alone", interval=0.5)
        assert rates["rate v3"] > 0, rates
        page.screenshot(path=str(IMAGES / "console-wizard-split.png"))
        assert not page.errors, page.errors
    finally:
        page.close()
        mesh.client.rollback(start)


def test_explain_shows_the_hop_where_the_fault_fired(mesh: Mesh, browser: Browser) -> None:
    mesh.client.apply([RATINGS_ABORT])
    try:
        mesh.client.apply([{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                            "metadata": {"name": "reviews", "namespace": "default"},
                            "spec": {"hosts": ["reviews"], "http": [{"route": [
                                {"destination": {"host": "reviews", "subset": "v2"}}]}]}}])
        assert mesh.client.proxy_status(wait=30)["synced"]  # every sidecar routes by both rules now
        # one page view, one id (reused ids would make several traces): v2 calls ratings, which aborts
        request_id = f"console-{uuid.uuid4()}"
        mesh.get("/productpage", {"x-request-id": request_id, "x-client-trace-id": request_id})

        def explained() -> dict[str, Any] | None:
            try:
                doc: dict[str, Any] = mesh.client.request("GET", f"traces/{request_id}/explain")
            except ApiError:
                return None  # its spans are still on their way to the collector
            return doc if any(h["fault_fired"] for h in doc["hops"]) else None

        wait_until(explained, 30, "the whole trace of the faulted request, its fired fault included")
        page = open_console(browser, mesh)
        try:
            page.click("nav button[data-page=explain]")
            page.fill("#explain-id", request_id)
            page.click("#explain-go")
            hop = page.locator(".hop.bad", has_text="ratings")
            hop.first.wait_for(timeout=WAIT_MS)
            text = hop.first.inner_text()
            assert "FIRED" in text and "FI" in text, text
            assert "fault injected" in text, text  # the flag in words
            assert "caller log" in text and '" 503 FI ' in text, text  # reviews' sidecar's access-log line
            assert "[object" not in page.locator("#explain-out").inner_text()
            page.screenshot(path=str(IMAGES / "console-explain.png"), full_page=True)
            page.click("nav button[data-page=workloads]")
            page.locator("#proxies .st-synced").first.wait_for(timeout=WAIT_MS)
            page.locator("#certs td.mono", has_text="spiffe://").first.wait_for(timeout=WAIT_MS)
            page.screenshot(path=str(IMAGES / "console-workloads.png"))
            assert not page.errors, page.errors
        finally:
            page.close()
    finally:
        mesh.client.delete("virtualservice", "ratings")


def test_console_through_jupyter_server_proxy(mesh: Mesh, browser: Browser, tmp_path: Path) -> None:
    """As on Binder: the browser reaches only JupyterLab, which forwards ``/proxy/<control port>/ui/``
    (jupyter-server-proxy, installed with the lab extra) to the control plane. The page, its scripts
    and every API call go through that prefix; a POST from the editor (Apply) passes the Origin check."""
    port = urlsplit(mesh.control).port
    start = mesh.client.request("GET", "history")["revision"]
    mesh.traffic(10)
    with jupyterlab(tmp_path, {}) as lab:
        page = browser.context.new_page()
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(f"{lab.base}/api/status?token={lab.token}")  # logged in to Jupyter (its cookie)
            proxied = f"{lab.base}/proxy/{port}/ui/"
            page.goto(f"{proxied}#token={mesh.local.admin_token()}")
            assert "#token" not in page.url
            page.locator(".edge").nth(3).wait_for(timeout=WAIT_MS)
            assert page.locator(".edge .padlock").count() >= 3
            # the event stream passes the proxy (it streams a response asked for as text/event-stream)
            page.locator("#live.on", has_text="live").wait_for(timeout=WAIT_MS)
            calls = page.evaluate("window.mk.calls")
            mesh.traffic(3)
            page.wait_for_function("n => window.mk.calls >= n + 3", arg=calls, timeout=WAIT_MS)  # live
            page.click("nav button[data-page=config]")
            page.locator("#config-list .config-row").first.wait_for(timeout=WAIT_MS)
            # v3: no other test leaves it, so the apply is a change (a new revision) whatever ran before
            page.fill("#editor", REVIEWS_V2.replace("subset: v2", "subset: v3"))
            page.locator("#analysis .msg.ok-text").wait_for(timeout=WAIT_MS)  # POST analyze, proxied
            page.click("#editor-apply")
            page.locator("#analysis .applied", has_text=f"revision {start + 1}").wait_for(timeout=WAIT_MS)
            spec = mesh.client.get("virtualservice", "reviews")["items"][0]["resource"]["spec"]
            assert spec["http"][0]["route"][0]["destination"]["subset"] == "v3", spec
            page.click("nav button[data-page=graph]")
            page.locator(".node[data-node='productpage v1']").click()
            page.locator("#detail .chart .main-svg").first.wait_for(timeout=WAIT_MS)  # plotly.js, proxied
            console = [url for url in requests if "/api/status" not in url]
            assert any(url.startswith(f"{proxied}vendor/plotly") for url in console), console
            assert any(url.startswith(f"{lab.base}/proxy/{port}/api/v1/") for url in console), console
            outside = [url for url in console if not url.startswith(f"{lab.base}/proxy/{port}/")]
            assert not outside, f"the page left the proxy prefix: {outside[:5]}"
            assert not errors, errors
        finally:
            page.close()
            mesh.client.rollback(start)
        # mesh.console() in a notebook: an iframe on the same path, found from inside the kernel
        notebook = tmp_path / "console.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
            "from meshkit.lab import connect\nconnect(start=False).console()")], metadata={"kernelspec": {
                "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}}), notebook)
        page = browser.open_notebook(lab.add(notebook), notebook.name)
        try:
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            frame = page.frame_locator(f".jp-OutputArea-output iframe[src^='/proxy/{port}/ui/#token=']")
            frame.locator(".edge").nth(3).wait_for(timeout=WAIT_MS)
            assert frame.locator(".edge .padlock").count() >= 3
        finally:
            lab.shutdown_kernels()
            page.close()
