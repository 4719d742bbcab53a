// Apply-to-effect timeline of one revision (GET /api/v1/history/{n}/timeline): when it was stored,
// compiled, pushed to each proxy, ACKed or NACKed by it, and when that proxy first routed a request
// with it. A table with the times after the store, and a bar per proxy placing each step on one axis.
"use strict";

(function () {
  const mk = window.mk;
  const STEPS = [["pushed", "pushed"], ["acked", "ACK"], ["nacked", "NACK"], ["first_request", "first request"]];

  function after(stored, t) {
    if (t === null || t === undefined) return "-";
    const ms = (t - stored) * 1000;
    return ms < 10000 ? "+" + Math.round(ms) + " ms" : "+" + (ms / 1000).toFixed(1) + " s";
  }

  function bar(row, stored, span) {
    const box = mk.el("div", { class: "tl-bar" });
    for (const [key, label] of STEPS) {
      if (row[key] === null || row[key] === undefined) continue;
      const left = span > 0 ? Math.min(100, Math.max(0, ((row[key] - stored) / span) * 100)) : 0;
      box.append(mk.el("span", { class: "tl-mark tl-" + key, style: `left: ${left.toFixed(1)}%`,
        title: `${label} ${after(stored, row[key])}` }));
    }
    return box;
  }

  // wait: seconds the control plane may first wait for every proxy to answer (right after an apply)
  mk.timeline = async function (n, target, wait) {
    const doc = await mk.api(`history/${n}/timeline` + (wait ? `?wait=${wait}` : ""));
    const stored = doc.stored || doc.compiled || 0;
    const times = doc.proxies.flatMap((r) => STEPS.map(([k]) => r[k])).filter((t) => t !== null && t !== undefined);
    const span = times.length ? Math.max(...times) - stored : 0;
    const answer = (r) => r.nacked !== null ? mk.el("span", { class: "bad", title: r.reason || "" }, "NACK " + after(stored, r.nacked)) :
      r.acked !== null ? mk.el("span", { class: "ok-text" }, after(stored, r.acked)) :
        mk.el("span", { class: "warn" }, r.superseded ? "superseded" : r.connected ? "waiting" : "disconnected");
    const rows = doc.proxies.map((r) => mk.el("tr", { class: "tl-row", "data-proxy": r.id },
      mk.el("td", { class: "mono" }, r.id), mk.el("td", {}, after(stored, r.pushed)), mk.el("td", {}, answer(r)),
      mk.el("td", {}, r.first_request ? after(stored, r.first_request) : mk.el("span", { class: "muted" }, "no request yet")),
      mk.el("td", { class: "tl-cell" }, bar(r, stored, span))));
    const table = mk.el("table", { class: "grid timeline" });
    mk.table(table, ["proxy", "pushed", "ACK", "first request", `0 to ${after(stored, stored + span)}`], rows);
    target.hidden = false;
    target.replaceChildren(
      mk.el("h3", {}, `Revision ${doc.revision}: apply to effect`),
      mk.el("div", { class: "tl-state tl-state-" + doc.state },
        `${doc.state}: stored ${new Date(stored * 1000).toLocaleTimeString()}, compiled ${after(stored, doc.compiled)}` +
        (doc.unchanged.length ? `; ${doc.unchanged.length} other ${doc.unchanged.length === 1 ? "proxy" : "proxies"} unchanged` : "")),
      table,
      mk.el("div", { class: "legend" }, STEPS.map(([k, label]) => [mk.el("span", { class: "tl-key tl-" + k }), label, " "])),
      ...doc.proxies.filter((r) => r.reason).map((r) => mk.el("div", { class: "msg error" }, `${r.id} refused it: ${r.reason}`)));
    return doc;
  };
})();
