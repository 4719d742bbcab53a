// The service graph, as Kiali draws it: nodes per app / versioned app / workload, edges with rate,
// error % and p95 from /api/v1/telemetry, a padlock where the receiving side saw mTLS, health colours,
// traffic animation proportional to rate, badges for VirtualService (VS), fault (F), mirror (M) and
// circuit breaker (CB). One refresh = 3 API calls (telemetry, registry, config), every few seconds.
"use strict";

(function () {
  const mk = window.mk;
  const SVG = "http://www.w3.org/2000/svg";
  const COL = 320, ROW = 110, NODE_W = 170, NODE_H = 44, PAD = 40;
  const state = { data: null, timer: null, selected: null };
  const BADGE_NAMES = { VS: "VirtualService", F: "fault injection", M: "mirror", CB: "circuit breaker" };

  function s(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  // A padlock: shackle (arc) over a body (rect). Drawn, not a glyph: the machine has no emoji font.
  function padlock(x, y) {
    return s("g", { class: "padlock", transform: `translate(${x - 6},${y - 16})` },
      s("title", {}, "mTLS (as the receiving side saw it)"),
      s("rect", { x: 0, y: 6, width: 12, height: 9, rx: 1.5 }),
      s("path", { d: "M3 6 V4 a3 3 0 0 1 6 0 V6", fill: "none" }));
  }

  function shortHost(host) { return String(host).split(".")[0]; }

  // badges per service short name, from the config
  function badges(items) {
    const out = {};
    const add = (host, b) => { const k = shortHost(host); (out[k] = out[k] || new Set()).add(b); };
    for (const item of items) {
      const r = item.resource, spec = r.spec || {};
      if (r.kind === "VirtualService") {
        for (const h of spec.hosts || []) {
          add(h, "VS");
          for (const route of spec.http || []) {
            if (route.fault) add(h, "F");
            if (route.mirror || route.mirrors) add(h, "M");
          }
        }
      } else if (r.kind === "DestinationRule") {
        const tps = [spec.trafficPolicy || {}, ...(spec.subsets || []).map((x) => x.trafficPolicy || {})];
        if (tps.some((tp) => tp.outlierDetection || tp.connectionPool)) add(spec.host, "CB");
      }
    }
    return out;
  }

  function nodeKey(view, workload, app, version) {
    if (view === "workload") return workload;
    if (view === "app" || !version || version === "unknown") return app;
    return app + " " + version;
  }

  function build(telemetry, registry, config, view) {
    const byWorkload = {};
    for (const e of registry.endpoints || []) {
      const labels = e.labels || {};
      byWorkload[e.workload] = { app: labels.app || e.service, version: labels.version || "" };
    }
    const nodes = new Map(), links = new Map();
    const node = (key, attrs) => {
      if (!nodes.has(key)) nodes.set(key, Object.assign({ id: key, inRps: 0, inErr: 0, outRps: 0, badges: [] }, attrs));
      return nodes.get(key);
    };
    for (const e of telemetry.edges) {
      const src = byWorkload[e.source_workload] || { app: e.source_workload || "unknown", version: "" };
      const dstWl = e.destination_workload && e.destination_workload !== "unknown" ? e.destination_workload : e.destination_service;
      const dst = { app: (byWorkload[dstWl] || {}).app || e.destination_service, version: e.destination_version === "unknown" ? "" : e.destination_version };
      const a = node(nodeKey(view, e.source_workload || "unknown", src.app, src.version), { app: src.app, version: view === "app" ? "" : src.version });
      const b = node(nodeKey(view, dstWl, dst.app, dst.version), { app: dst.app, version: view === "app" ? "" : dst.version, service: e.destination_service });
      const key = a.id + "\u0000" + b.id;
      const l = links.get(key) || { source: a.id, target: b.id, rps: 0, errRps: 0, requests: 0, mtls: true, p95: null, p50: null, p99: null, codes: {}, flags: {}, service: e.destination_service, raw: [] };
      l.rps += e.rps; l.errRps += e.rps * e.error_rate; l.requests += e.requests;
      l.mtls = l.mtls && e.mtls;
      for (const q of ["p50", "p95", "p99"]) { const v = e.latency_ms[q]; if (v != null) l[q] = Math.max(l[q] || 0, v); }
      for (const [c, n] of Object.entries(e.codes)) l.codes[c] = (l.codes[c] || 0) + n;
      for (const [f, n] of Object.entries(e.flags)) l.flags[f] = (l.flags[f] || 0) + n;
      l.raw.push(e);
      links.set(key, l);
      a.outRps += e.rps; b.inRps += e.rps; b.inErr += e.rps * e.error_rate;
    }
    const marks = badges(config.items || []);
    for (const n of nodes.values()) n.badges = [...(marks[n.app] || [])].sort();
    return { nodes: [...nodes.values()], links: [...links.values()] };
  }

  // columns by longest path from the callers nobody calls (cycles cut), rows sorted by app
  function layout(graph) {
    const depth = {}, incoming = {};
    for (const n of graph.nodes) { depth[n.id] = 0; incoming[n.id] = 0; }
    for (const l of graph.links) if (l.source !== l.target) incoming[l.target] += 1;
    for (let i = 0; i < graph.nodes.length; i++) {
      let moved = false;
      for (const l of graph.links) {
        if (l.source === l.target) continue;
        if (depth[l.target] < depth[l.source] + 1 && depth[l.source] + 1 < graph.nodes.length) { depth[l.target] = depth[l.source] + 1; moved = true; }
      }
      if (!moved) break;
    }
    const columns = {};
    for (const n of graph.nodes) (columns[depth[n.id]] = columns[depth[n.id]] || []).push(n);
    let rows = 0;
    for (const [d, list] of Object.entries(columns)) {
      list.sort((a, b) => (a.app + a.version).localeCompare(b.app + b.version));
      list.forEach((n, i) => { n.x = PAD + Number(d) * COL; n.y = PAD + 20 + i * ROW; });
      rows = Math.max(rows, list.length);
    }
    return { width: PAD * 2 + (Object.keys(columns).length - 1) * COL + NODE_W, height: PAD * 2 + 20 + rows * ROW };
  }

  function label(l) {
    const p95 = l.p95 == null ? "" : ", p95 " + mk.ms(l.p95);
    return `${mk.rps(l.rps)}, ${mk.pct(l.rps ? l.errRps / l.rps : 0)} err${p95}`;
  }

  function draw(graph) {
    const host = document.getElementById("graph");
    if (!graph.nodes.length) {
      host.replaceChildren(mk.el("p", { class: "empty" }, "No traffic in this window. Send some (meshkit load, or a lab) and the graph fills in."));
      return;
    }
    const size = layout(graph);
    const byId = Object.fromEntries(graph.nodes.map((n) => [n.id, n]));
    // scaled to the pane (as Kiali fits the graph to the view)
    const svg = s("svg", { width: "100%", viewBox: `0 0 ${size.width} ${size.height}`, class: "graph-svg", preserveAspectRatio: "xMinYMin meet",
      style: `max-width:${size.width}px` });
    svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      s("path", { d: "M0 0 L10 5 L0 10 z", class: "arrowhead" }))));
    // app boxes around the versions of one app in one column (versioned view)
    const groups = {};
    for (const n of graph.nodes) if (n.version) (groups[n.app + "@" + n.x] = groups[n.app + "@" + n.x] || []).push(n);
    for (const list of Object.values(groups)) {
      if (list.length < 2) continue;
      const ys = list.map((n) => n.y);
      svg.append(s("rect", { class: "appbox", x: list[0].x - 8, y: Math.min(...ys) - 22, width: NODE_W + 16, height: Math.max(...ys) - Math.min(...ys) + NODE_H + 30, rx: 10 }),
        s("text", { class: "appbox-label", x: list[0].x, y: Math.min(...ys) - 8 }, list[0].app));
    }
    for (const l of graph.links) {
      const a = byId[l.source], b = byId[l.target];
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      const mx = (x1 + x2) / 2;
      // the label sits 60% along the curve: edges leaving one node fan out by then
      const t = 0.6, u = 1 - t, lx = u * u * u * x1 + 3 * u * u * t * mx + 3 * u * t * t * mx + t * t * t * x2;
      const ly = u * u * u * y1 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t * t * t * y2;
      const d = a === b ? `M${a.x + NODE_W / 2} ${a.y} c -40 -50, 40 -50, 10 0` : `M${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}`;
      const health = mk.health(l.rps ? l.errRps / l.rps : 0);
      const g = s("g", { class: "edge " + health + (state.selected === "e:" + l.source + ">" + l.target ? " selected" : ""), "data-edge": l.source + " > " + l.target,
        onclick: () => select("e:" + l.source + ">" + l.target) });
      g.append(s("path", { d, class: "edge-line", "marker-end": "url(#arrow)", "stroke-width": Math.min(1.5 + Math.log1p(l.rps), 6) }));
      const speed = Math.max(0.4, Math.min(6, 4 / Math.max(l.rps, 0.05))); // faster dots for more traffic
      g.append(s("path", { d, class: "edge-flow", style: `animation-duration:${speed.toFixed(2)}s` }));
      g.append(s("path", { d, class: "edge-hit" }));
      // two short lines, as Kiali labels edges: rate and errors, then p95
      const [first, second] = label(l).split(", p95 ");
      g.append(s("text", { x: lx, y: ly - 19, class: "edge-label", "text-anchor": "middle" },
        s("tspan", { x: lx, dy: 0 }, first), second ? s("tspan", { x: lx, dy: 13 }, "p95 " + second) : ""));
      if (l.mtls) g.append(padlock(lx - first.length * 3.1 - 10, ly - 16));
      svg.append(g);
    }
    for (const n of graph.nodes) {
      const health = mk.health(n.inRps ? n.inErr / n.inRps : 0);
      const g = s("g", { class: "node " + health + (state.selected === "n:" + n.id ? " selected" : ""), "data-node": n.id, transform: `translate(${n.x},${n.y})`,
        onclick: () => select("n:" + n.id) });
      g.append(s("rect", { width: NODE_W, height: NODE_H, rx: 8 }));
      g.append(s("text", { x: 10, y: 18, class: "node-name" }, s("title", {}, n.id), n.app.length > 21 ? n.app.slice(0, 20) + "..." : n.app));
      g.append(s("text", { x: 10, y: 34, class: "node-sub" }, n.version ? n.version : n.service ? "service" : ""));
      n.badges.forEach((b, i) => {
        const bx = NODE_W - 8 - (n.badges.length - i) * 26;
        g.append(s("g", { class: "badge badge-" + b, transform: `translate(${bx + 4},${NODE_H - 16})` },
          s("title", {}, BADGE_NAMES[b]),
          s("rect", { width: 24, height: 13, rx: 3 }), s("text", { x: 12, y: 10, "text-anchor": "middle" }, b)));
      });
      svg.append(g);
    }
    host.replaceChildren(svg);
  }

  async function traces(service, box) {
    try {
      const doc = await mk.api("traces?limit=5&service=" + encodeURIComponent(service));
      box.replaceChildren(doc.traces.length ? mk.el("ul", { class: "traces" }, doc.traces.map((t) => mk.el("li", {},
        mk.el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); mk.explain((t.request_ids || [])[0] || t.trace_id); } },
          `${new Date(t.start_us / 1000).toLocaleTimeString()}  ${mk.ms(t.duration_ms)}${t.error ? "  error" : ""}`)))) :
        mk.el("p", { class: "muted" }, "no sampled traces (Istio samples 1% by default)"));
    } catch (e) { box.replaceChildren(mk.el("p", { class: "bad" }, e.message)); }
  }

  // two charts over the window: rate by version and errors/s, then duration p50/p95/p99 (Kiali's
  // request and duration charts); ``filter``: the edge's source workloads or the node's version
  async function chart(service, box, filter) {
    const windowS = Number(document.getElementById("graph-window").value);
    const step = Math.max(1, Math.round(windowS / 60));
    const extra = (filter.sources || []).map((w) => "&source=" + encodeURIComponent(w)).join("") +
      (filter.versions || []).map((v) => "&version=" + encodeURIComponent(v)).join("");
    const doc = await mk.api(`telemetry/series?window=${windowS}&step=${step}&destination=${encodeURIComponent(service)}` + extra);
    await mk.plotly();
    const t = doc.points.map((p) => new Date(p.t * 1000));
    const versions = [...new Set(doc.points.flatMap((p) => Object.keys(p.rps)))];
    const lines = versions.map((v) => ({ x: t, y: doc.points.map((p) => p.rps[v] || 0), name: "rate " + (v || "?"), type: "scatter", mode: "lines" }));
    lines.push({ x: t, y: doc.points.map((p) => p.errors_per_s), name: "errors/s", type: "scatter", mode: "lines", line: { color: "#c62828" } });
    const rateBox = mk.el("div", { class: "chart chart-rate" }), latencyBox = mk.el("div", { class: "chart chart-latency" });
    box.replaceChildren(rateBox, latencyBox);
    const layout = (title) => ({ height: 190, margin: { l: 52, r: 10, t: 8, b: 30 }, legend: { orientation: "h", y: -0.2 },
      xaxis: { tickformat: "%H:%M:%S" }, yaxis: { title: { text: title }, rangemode: "tozero" } });
    window.Plotly.react(rateBox, lines, layout("req/s"), { displayModeBar: false, responsive: true });
    const colors = { p50: "#2b6cb0", p95: "#ec7a08", p99: "#a23e8b" };
    const quantiles = Object.keys(colors).map((q) => ({ x: t, y: doc.points.map((p) => (p.latency_ms || {})[q] ?? null), name: q,
      type: "scatter", mode: "lines+markers", marker: { size: 3 }, connectgaps: false, line: { color: colors[q] } }));
    window.Plotly.react(latencyBox, quantiles, layout("duration ms"), { displayModeBar: false, responsive: true });
  }

  function red(rps, err, l) {
    return mk.el("table", { class: "red" },
      mk.el("tr", {}, mk.el("th", {}, "rate"), mk.el("td", {}, mk.rps(rps))),
      mk.el("tr", {}, mk.el("th", {}, "errors"), mk.el("td", { class: mk.health(err) }, mk.pct(err))),
      l ? mk.el("tr", {}, mk.el("th", {}, "duration"), mk.el("td", {}, `p50 ${mk.ms(l.p50)}  p95 ${mk.ms(l.p95)}  p99 ${mk.ms(l.p99)}`)) : null);
  }

  function select(key) {
    state.selected = key;
    showDetail();
    if (state.data) draw(state.data);
  }

  function showDetail() {
    const box = document.getElementById("detail");
    const g = state.data, key = state.selected;
    if (!g || !key) return;
    const chartBox = mk.el("div", { class: "chart" }), traceBox = mk.el("div", {}, mk.el("p", { class: "muted" }, "loading traces..."));
    let service, filter = {};
    if (key.startsWith("n:")) {
      const n = g.nodes.find((x) => "n:" + x.id === key);
      if (!n) return;
      const inbound = g.links.filter((l) => l.target === n.id), outbound = g.links.filter((l) => l.source === n.id);
      service = n.service || n.app;
      box.replaceChildren(mk.el("h3", {}, n.app + (n.version ? " " + n.version : "")),
        mk.el("p", {}, n.badges.length ? "config: " + n.badges.map((b) => BADGE_NAMES[b]).join(", ") : ""),
        mk.el("h4", {}, "inbound"), red(n.inRps, n.inRps ? n.inErr / n.inRps : 0, inbound.length === 1 ? inbound[0] : null),
        mk.el("h4", {}, "outbound"), mk.el("ul", {}, outbound.map((l) => mk.el("li", {}, `to ${l.target}: ${label(l)}`))),
        mk.el("h4", {}, "traffic and duration to " + service + (n.version ? " " + n.version : "")), chartBox,
        mk.el("h4", {}, "recent traces"), traceBox);
      filter = n.version ? { versions: [n.version] } : {};
    } else {
      const l = g.links.find((x) => "e:" + x.source + ">" + x.target === key);
      if (!l) return;
      service = l.service;
      box.replaceChildren(mk.el("h3", {}, l.source + " -> " + l.target),
        red(l.rps, l.rps ? l.errRps / l.rps : 0, l),
        mk.el("p", {}, "mTLS: " + (l.mtls ? "yes (receiving side)" : "no")),
        mk.el("p", {}, "codes: " + (Object.entries(l.codes).map(([c, n]) => `${c} x${n}`).join(", ") || "-")),
        mk.el("p", {}, "flags: " + (Object.entries(l.flags).map(([c, n]) => `${c} x${n}`).join(", ") || "-")),
        mk.el("h4", {}, "traffic and duration on this edge"), chartBox, mk.el("h4", {}, "recent traces"), traceBox);
      filter = { sources: [...new Set(l.raw.map((e) => e.source_workload))], versions: [...new Set(l.raw.map((e) => e.destination_version))] };
    }
    traces(service, traceBox);
    chart(service, chartBox, filter).catch((e) => chartBox.replaceChildren(mk.el("p", { class: "bad" }, e.message)));
  }

  async function refresh() {
    const view = document.getElementById("graph-view").value;
    const windowS = document.getElementById("graph-window").value;
    const [telemetry, registry, config] = await Promise.all([
      mk.api("telemetry?window=" + windowS), mk.api("registry"), mk.api("config")]);
    state.data = build(telemetry, registry, config, view);
    draw(state.data);
    mk.status(`graph: ${state.data.nodes.length} nodes, ${state.data.links.length} edges, revision ${config.revision}, ${new Date().toLocaleTimeString()}`);
  }

  // "Live": redraw when the stream says the telemetry or the config changed, at most once per
  // LIVE_GAP_MS (a scrape round ends every second); without a stream, poll every FALLBACK_MS
  const LIVE_GAP_MS = 3000, FALLBACK_MS = 5000;
  let inFlight = false, again = false, lastDrawn = 0, liveTimer = null;

  async function refreshOnce() { // one refresh at a time; a change during one runs one more after it
    if (inFlight) { again = true; return; }
    inFlight = true;
    try { await refresh(); lastDrawn = Date.now(); } catch (e) { mk.status(e.message, true); }
    inFlight = false;
    if (again) { again = false; liveRefresh(); }
  }

  function liveRefresh() {
    if (mk.current !== "graph" || document.hidden || document.getElementById("graph-refresh").value !== "live") return;
    if (liveTimer !== null) return;
    liveTimer = setTimeout(() => { liveTimer = null; refreshOnce(); }, Math.max(0, lastDrawn + LIVE_GAP_MS - Date.now()));
  }
  mk.on("telemetry", liveRefresh);
  mk.on("config", liveRefresh);
  mk.on("live", () => schedule());

  function schedule() {
    clearTimeout(state.timer);
    const choice = document.getElementById("graph-refresh").value;
    const every = choice === "live" ? (mk.live ? 0 : FALLBACK_MS) : Number(choice);
    if (every > 0) state.timer = setTimeout(async () => {
      if (mk.current === "graph" && !document.hidden) await refresh().catch((e) => mk.status(e.message, true));
      schedule();
    }, every);
  }

  let plotlyLoading = null;
  mk.plotly = function () { // plotly.js (3.5 MB) only when a chart is first needed
    if (window.Plotly) return Promise.resolve();
    if (!plotlyLoading) plotlyLoading = new Promise((resolve, reject) => {
      const tag = document.createElement("script");
      tag.src = "vendor/plotly.min.js"; // relative to the page: works behind a proxy prefix
      tag.onload = resolve; tag.onerror = () => reject(new Error("could not load plotly.js"));
      document.head.append(tag);
    });
    return plotlyLoading;
  };

  mk.pages.graph = { refresh: async () => { await refresh(); lastDrawn = Date.now(); schedule(); } };
  document.addEventListener("DOMContentLoaded", () => {
    for (const id of ["graph-view", "graph-window"]) document.getElementById(id).addEventListener("change", () => { state.selected = null; mk.show("graph"); });
    document.getElementById("graph-refresh").addEventListener("change", schedule);
  });
})();
