// Istio config: every resource with the analyzer's messages, a YAML editor validated as you type
// (POST /api/v1/analyze with the editor's YAML: the analyzer runs it over the current config),
// apply, revision history with diffs, apply-to-effect timelines (timeline.js) and one-click rollback,
// and a traffic-shifting wizard that shows the YAML it will apply (the other wizards: wizards.js).
"use strict";

(function () {
  const mk = window.mk;
  const YAML_HEADERS = { "Content-Type": "application/yaml" };
  const K8S_KINDS = new Set(["Deployment", "Service", "ServiceAccount", "Namespace", "Pod", "ConfigMap"]);
  let typing = null, versionsByService = {};

  function messageRow(m) {
    const severity = (m.severity || "info").toLowerCase();
    return mk.el("div", { class: "msg " + severity },
      `${severity[0].toUpperCase() + severity.slice(1)} [${m.code}] (${m.resource}${m.field ? " " + m.field : ""}) ${m.message || m.text || ""}`);
  }

  async function openResource(ref) {
    const [kind, ns, name] = ref.split("/");
    const response = await fetch(mk.base + `/api/v1/config/${kind.toLowerCase()}/${encodeURIComponent(ns)}/${encodeURIComponent(name)}?format=yaml`,
      { headers: { Authorization: "Bearer " + sessionStorage.getItem("meshkit.token") }, cache: "no-store" });
    mk.calls += 1;
    document.getElementById("editor").value = await response.text();
    validate();
  }

  async function showDiff(n) {
    const doc = await mk.api("history/" + n);
    const pre = document.getElementById("diff");
    pre.hidden = false;
    pre.replaceChildren(...String(doc.diff || "(no diff)").split("\n").map((line) =>
      mk.el("span", { class: line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "" }, line + "\n")));
  }

  async function rollback(n) {
    const doc = await mk.api("rollback", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ revision: n }) });
    mk.status(`rolled back to revision ${n}: now revision ${doc.revision}`);
    await refresh();
  }

  async function refresh() {
    const [config, analysis, history, registry] = await Promise.all([
      mk.api("config"), mk.api("analyze", { method: "POST" }), mk.api("history"), mk.api("registry")]);
    versionsByService = {};
    for (const e of registry.endpoints || []) {
      const v = (e.labels || {}).version;
      if (v) (versionsByService[e.service] = versionsByService[e.service] || new Set()).add(v);
    }
    document.getElementById("config-revision").textContent = "(revision " + config.revision + ")";
    const byRef = {};
    for (const m of analysis.messages) (byRef[m.resource] = byRef[m.resource] || []).push(m);
    mk.table(document.getElementById("config-list"), ["kind", "namespace", "name", "revision", "analyzer"],
      config.items.filter((item) => document.getElementById("config-k8s").checked || !K8S_KINDS.has(item.ref.split("/")[0])).map((item) => {
        const [kind, ns, name] = item.ref.split("/");
        const msgs = byRef[item.ref] || [];
        return mk.el("tr", { class: "config-row", "data-ref": item.ref },
          mk.el("td", {}, kind), mk.el("td", {}, ns),
          mk.el("td", {}, mk.el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); openResource(item.ref); } }, name)),
          mk.el("td", {}, item.revision),
          mk.el("td", {}, msgs.length ? msgs.map(messageRow) : mk.el("span", { class: "ok-text" }, "no issues")));
      }));
    const rows = history.revisions.slice().reverse().map((r) => mk.el("tr", {},
      mk.el("td", {}, r.revision), mk.el("td", {}, new Date(r.timestamp * 1000).toLocaleTimeString()),
      mk.el("td", { title: r.summary }, r.summary.length > 140 ? r.summary.slice(0, 137) + "..." : r.summary),
      mk.el("td", {}, mk.el("button", { onclick: () => showDiff(r.revision) }, "diff"), " ",
        mk.el("button", { class: "timeline-open", onclick: () => mk.timeline(r.revision, document.getElementById("timeline")).catch((e) => mk.status(e.message, true)) }, "timeline"), " ",
        r.revision === history.revision ? mk.el("span", { class: "muted" }, "current") :
          mk.el("button", { class: "rollback", onclick: () => rollback(r.revision) }, "roll back to this"))));
    mk.table(document.getElementById("history"), ["rev", "time", "summary", ""], rows);
    mk.status(`config at revision ${config.revision}`);
  }

  async function validate() {
    const text = document.getElementById("editor").value;
    const box = document.getElementById("analysis");
    if (!text.trim()) { box.replaceChildren(); return; }
    try {
      const doc = await mk.api("analyze", { method: "POST", headers: YAML_HEADERS, body: text });
      box.replaceChildren(...(doc.messages.length ? doc.messages.map(messageRow) :
        [mk.el("div", { class: "msg ok-text" }, "valid: the analyzer found no issues over the current config")]));
    } catch (e) {
      box.replaceChildren(...((e.doc && e.doc.messages) || [{ severity: "error", code: "", resource: "request", message: e.message }]).map(messageRow));
    }
  }

  async function apply() {
    const text = document.getElementById("editor").value;
    const box = document.getElementById("analysis");
    try {
      const doc = await mk.api("apply", { method: "POST", headers: YAML_HEADERS, body: text });
      box.replaceChildren(mk.el("div", { class: "msg ok-text applied" },
        `applied: revision ${doc.revision}; ` + doc.results.map((r) => `${r.resource} ${r.action}`).join(", ")),
        ...doc.warnings.map(messageRow));
      await refresh();
      if (doc.changed) await mk.timeline(doc.revision, document.getElementById("timeline"), 10);
    } catch (e) {
      box.replaceChildren(mk.el("div", { class: "msg error" }, "not applied: " + e.message),
        ...((e.doc && e.doc.messages) || []).map(messageRow));
    }
  }

  function wizardWeights() {
    const host = document.getElementById("wiz-host").value.trim();
    const versions = [...(versionsByService[host] || [])].sort();
    const span = document.getElementById("wiz-weights");
    span.replaceChildren(...(versions.length ? versions : ["v1"]).map((v, i, all) => mk.el("label", {}, ` ${v} `,
      mk.el("input", { class: "wiz-weight", "data-version": v, type: "number", min: 0, max: 100, size: 3,
        value: i === 0 ? 100 - Math.floor(100 / all.length) * (all.length - 1) : Math.floor(100 / all.length) }))));
  }

  function wizardYaml() {
    const host = document.getElementById("wiz-host").value.trim();
    const weights = [...document.querySelectorAll(".wiz-weight")].map((i) => [i.dataset.version, Number(i.value) || 0]);
    const routes = weights.map(([v, w]) => `    - destination:\n        host: ${host}\n        subset: ${v}\n      weight: ${w}`).join("\n");
    const subsets = weights.map(([v]) => `  - name: ${v}\n    labels:\n      version: ${v}`).join("\n");
    document.getElementById("editor").value =
      `apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ${host}\n  namespace: default\nspec:\n  host: ${host}\n  subsets:\n${subsets}\n---\n` +
      `apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ${host}\n  namespace: default\nspec:\n  hosts:\n  - ${host}\n  http:\n  - route:\n${routes}\n`;
    validate();
  }

  mk.pages.config = { refresh };
  mk.versionsOf = (host) => [...(versionsByService[host] || [])].sort(); // for the wizards (wizards.js)
  document.addEventListener("DOMContentLoaded", () => {
    const editor = document.getElementById("editor");
    editor.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(validate, 400); });
    document.getElementById("editor-apply").addEventListener("click", apply);
    document.getElementById("editor-new").addEventListener("click", () => { editor.value = ""; validate(); });
    document.getElementById("wizard").addEventListener("change", (ev) => {
      document.getElementById("wizard-form").hidden = ev.target.value !== "shift";
      if (ev.target.value === "shift") wizardWeights();
    });
    document.getElementById("wiz-host").addEventListener("change", wizardWeights);
    document.getElementById("wiz-fill").addEventListener("click", wizardYaml);
    document.getElementById("config-k8s").addEventListener("change", () => refresh().catch((e) => mk.status(e.message, true)));
  });
})();
