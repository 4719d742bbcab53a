// meshkit console: the token, the one API helper, the pages' switch, Workloads and Explain.
// The admin token comes from the URL fragment (#token=..., which a browser never sends to a server),
// goes to sessionStorage (this tab only), and leaves the address bar at once. Every API call is a
// fetch() with "Authorization: Bearer": no token in any URL, no EventSource (it cannot set headers);
// live updates are the same: GET /api/v1/events read as a stream through fetch() (mk.follow below).
"use strict";

const mk = (window.mk = {});
const TOKEN_KEY = "meshkit.token";

(function takeToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

// the page lives at <prefix>/ui/: <prefix> is "" when the browser talks to the control plane directly,
// "/user/NAME/proxy/4010" behind jupyter-server-proxy (Binder); every URL is built from it
mk.base = location.pathname.replace(/\/ui(\/[^/]*)?$/, "");
mk.calls = 0; // API calls made, for the page's own measurement (docs/console.md)

mk.api = async function (path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    document.getElementById("notoken").hidden = false;
    throw new Error("no token");
  }
  const headers = Object.assign({ Authorization: "Bearer " + token }, options.headers || {});
  mk.calls += 1;
  const response = await fetch(mk.base + "/api/v1/" + path, Object.assign({}, options, { headers, cache: "no-store" }));
  const text = await response.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch (e) { doc = { error: text }; }
  if (response.status === 401) {
    document.getElementById("notoken").hidden = false;
    mk.status("the token was refused (401)", true);
  }
  if (!response.ok) {
    const err = new Error((doc && doc.error) || response.status + " " + response.statusText);
    err.status = response.status;
    err.doc = doc;
    throw err;
  }
  return doc;
};

mk.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
};

mk.table = function (table, head, rows) {
  table.replaceChildren(
    mk.el("thead", {}, mk.el("tr", {}, head.map((h) => mk.el("th", {}, h)))),
    mk.el("tbody", {}, rows.length ? rows : [mk.el("tr", {}, mk.el("td", { colspan: head.length, class: "muted" }, "none"))]),
  );
};

mk.status = function (text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = "status" + (bad ? " bad" : "");
};

mk.ms = (v) => (v === null || v === undefined ? "-" : v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms");
mk.pct = (v) => (v * 100 >= 10 ? (v * 100).toFixed(0) : (v * 100).toFixed(1)) + "%";
mk.rps = (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(2)) + " rps";
mk.health = (rate) => (rate >= 0.2 ? "bad" : rate >= 0.001 ? "warn" : "ok");

// -- live updates ------------------------------------------------------------------------------------
// GET /api/v1/events (Server-Sent Events) read with fetch(): the token goes in a header, and
// "Accept: text/event-stream" makes jupyter-server-proxy stream the answer instead of buffering it.
// A frame only says what changed (config, proxies, telemetry); the page in view re-reads it from the
// API. No stream (refused, dropped, or no first frame within 5 s: a proxy that buffers) means the
// pages poll instead; the stream is tried again, backing off to 30 s.
mk.live = false;
mk.listeners = { config: [], proxies: [], telemetry: [], live: [] };
mk.on = (kind, fn) => mk.listeners[kind].push(fn);
let liveRetry = 1000;

function setLive(live) {
  if (live === mk.live) return;
  mk.live = live;
  const badge = document.getElementById("live");
  badge.textContent = live ? "live" : "polling";
  badge.className = "live" + (live ? " on" : "");
  badge.title = live ? "updates stream from the control plane (GET /api/v1/events)" :
    "no live stream: the pages poll (retrying the stream)";
  for (const fn of mk.listeners.live) fn(live);
}

function sseFrame(text) {
  let event = "message";
  const data = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  return [event, data.length ? JSON.parse(data.join("\n")) : null];
}

mk.follow = async function () {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const abort = new AbortController();
  const noHello = setTimeout(() => abort.abort(), 5000);
  try {
    if (!token) throw new Error("no token");
    const response = await fetch(mk.base + "/api/v1/events", {
      headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" }, cache: "no-store", signal: abort.signal });
    if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const [event, data] = sseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event === "hello") { clearTimeout(noHello); liveRetry = 1000; setLive(true); }
        else if (data && mk.listeners[event]) for (const fn of mk.listeners[event]) fn(data);
      }
    }
  } catch (e) { /* refused, dropped, or aborted for want of a first frame: poll, retry later */ }
  clearTimeout(noHello);
  setLive(false);
  setTimeout(mk.follow, liveRetry);
  liveRetry = Math.min(liveRetry * 2, 30000);
};

// -- pages -------------------------------------------------------------------------------------------
mk.pages = {};
mk.current = "graph";
mk.show = function (name) {
  mk.current = name;
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.page === name);
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + name;
  const page = mk.pages[name];
  if (page && page.refresh) page.refresh().catch((e) => mk.status(e.message, true));
};

// -- Workloads: proxy-status and certificates ---------------------------------------------------------
mk.pages.workloads = {
  async refresh() {
    const [status, certs] = await Promise.all([mk.api("proxy-status"), mk.api("console/certificates")]);
    mk.table(document.getElementById("proxies"), ["proxy", "kind", "status", "acked", "latest", "stream", "reason"],
      status.proxies.map((p) => mk.el("tr", {},
        mk.el("td", {}, p.id), mk.el("td", {}, p.kind || ""),
        mk.el("td", { class: "st-" + (p.status || "").toLowerCase() }, p.status),
        mk.el("td", { class: "mono" }, (p.acked || "-").slice(0, 12)),
        mk.el("td", { class: "mono" }, (p.latest || "-").slice(0, 12)),
        mk.el("td", {}, p.connected ? "connected" : "disconnected"),
        mk.el("td", {}, p.reason || ""))));
    mk.table(document.getElementById("certs"), ["proxy", "SPIFFE identity", "serial", "expires", "left", "issued", "note"],
      certs.certificates.map((c) => mk.el("tr", {},
        mk.el("td", {}, c.proxy), mk.el("td", { class: "mono" }, c.identity || "-"),
        mk.el("td", { class: "mono" }, c.serial ? String(c.serial).slice(0, 16) : "-"),
        mk.el("td", {}, c.not_after || "-"),
        mk.el("td", {}, c.seconds_left == null ? "-" : Math.round(c.seconds_left / 60) + " min"),
        mk.el("td", {}, c.issued == null ? "" : c.issued),
        mk.el("td", { class: c.error ? "bad" : "" }, c.error || (c.ready ? "" : "no certificate")))));
    mk.status("workloads at revision " + status.revision);
  },
};

// the Workloads and Istio config tabs follow what they show while they are in view
for (const [kind, page] of [["proxies", "workloads"], ["config", "workloads"], ["config", "config"]]) {
  mk.on(kind, () => {
    if (mk.current === page && !document.hidden) mk.pages[page].refresh().catch((e) => mk.status(e.message, true));
  });
}

// -- Explain -------------------------------------------------------------------------------------------
mk.explain = async function (id) {
  const out = document.getElementById("explain-out");
  document.getElementById("explain-id").value = id;
  mk.show("explain");
  out.replaceChildren(mk.el("p", { class: "muted" }, "explaining " + id + "..."));
  try {
    const doc = await mk.api("traces/" + encodeURIComponent(id) + "/explain");
    out.replaceChildren(
      mk.el("p", { class: "verdict" }, doc.verdict),
      mk.el("ol", { class: "hops" }, doc.hops.map((h) => mk.el("li", { class: h.status >= 500 || (h.flags && h.flags !== "-") ? "hop bad" : "hop" },
        mk.el("div", { class: "hop-head" }, `${h.from} -> ${h.to}: ${h.status || "no response"} ${h.flags && h.flags !== "-" ? h.flags : ""} in ${mk.ms(h.duration_ms)}`, h.mtls ? " (mTLS)" : ""),
        mk.el("dl", {},
          h.route ? [mk.el("dt", {}, "route"), mk.el("dd", {}, h.route + (h.route_name && h.route_name !== h.route ? " (" + h.route_name + ")" : ""))] : null,
          h.cluster ? [mk.el("dt", {}, "upstream"), mk.el("dd", {}, h.cluster + (h.endpoint ? " -> " + h.endpoint : ""))] : null,
          h.fault ? [mk.el("dt", {}, "fault"), mk.el("dd", { class: h.fault_fired ? "bad" : "" }, h.fault + (h.fault_fired ? "  FIRED" : "  not fired"))] : null,
          h.attempts ? [mk.el("dt", {}, "attempts"), mk.el("dd", {}, h.attempts)] : null,
          h.timeout_ms ? [mk.el("dt", {}, "timeout"), mk.el("dd", {}, h.timeout_ms + " ms")] : null,
          (h.flags_explained || []).map((f) => [mk.el("dt", {}, f.flag), mk.el("dd", {}, f.meaning + (f.cause ? " - likely: " + f.cause : ""))]),
          ["caller", "server"].map((side) => h.access_log && h.access_log[side] ?
            [mk.el("dt", {}, side + " log"), mk.el("dd", { class: "mono access-line" }, mk.accessLine(h.access_log[side]))] : null),
        ))),
    ));
  } catch (e) {
    out.replaceChildren(mk.el("p", { class: "bad" }, e.status === 404 ? `no trace for ${id}: only sampled requests can be explained (send x-client-trace-id)` : e.message));
  }
};

// one access-log line as Envoy's default text format shows it
mk.accessLine = (l) => `[${l.start_time}] "${l.method} ${l.path} ${l.protocol}" ${l.status} ${l.response_flags} ` +
  `${l.bytes_received} ${l.bytes_sent} ${Math.round(l.duration_ms)} "${l.authority}" "${l.upstream_host || "-"}" ${l.upstream_cluster || "-"} (${l.direction})`;

mk.pages.explain = {
  async refresh() {
    const doc = await mk.api("traces?limit=20");
    mk.table(document.getElementById("recent"), ["when", "root", "services", "duration", "error", ""],
      doc.traces.map((t) => mk.el("tr", {},
        mk.el("td", {}, new Date(t.start_us / 1000).toLocaleTimeString()),
        mk.el("td", {}, t.root ? t.root.service + " " + t.root.name : ""), mk.el("td", {}, (t.services || []).join(", ")),
        mk.el("td", {}, mk.ms(t.duration_ms)), mk.el("td", { class: t.error ? "bad" : "" }, t.error ? "error" : ""),
        mk.el("td", {}, mk.el("button", { onclick: () => mk.explain((t.request_ids || [])[0] || t.trace_id) }, "explain")))));
    mk.status(`${doc.traces.length} recent traces`);
  },
};

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => mk.show(b.dataset.page));
  document.getElementById("token-save").addEventListener("click", () => {
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
    document.getElementById("notoken").hidden = true;
    mk.show(mk.current);
  });
  document.getElementById("explain-go").addEventListener("click", () => {
    const id = document.getElementById("explain-id").value.trim();
    if (id) mk.explain(id);
  });
  if (!sessionStorage.getItem(TOKEN_KEY)) document.getElementById("notoken").hidden = false;
  setTimeout(() => mk.show("graph"), 0);
  mk.follow();
});
