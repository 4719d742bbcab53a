// Kiali-like wizards beside traffic shifting (config.js): request routing, fault injection and request
// timeouts. Each fills the YAML editor with the DestinationRule/VirtualService it would apply (named
// after the service, replacing the one of that name, as Kiali's wizards do); the editor validates it as
// typed and Apply applies it. Nothing is applied without the user seeing the YAML first.
"use strict";

(function () {
  const mk = window.mk;
  const FORMS = { route: "wizard-route", fault: "wizard-fault", timeout: "wizard-timeout" };
  const val = (id) => document.getElementById(id).value.trim();
  const num = (id) => Number(document.getElementById(id).value) || 0;
  const quote = (s) => JSON.stringify(String(s)); // a YAML double-quoted scalar is a JSON string

  function header(kind, host) {
    return `apiVersion: networking.istio.io/v1\nkind: ${kind}\nmetadata:\n  name: ${host}\n  namespace: default\nspec:\n`;
  }

  function destinationRule(host, versions) {
    return header("DestinationRule", host) + `  host: ${host}\n  subsets:\n` +
      versions.map((v) => `  - name: ${v}\n    labels:\n      version: ${v}`).join("\n") + "\n";
  }

  // the service's versions (from the registry); keeps the choice made, else picks ``fallback``'s
  function versionOptions(select, host, fallback) {
    const versions = mk.versionsOf(host).length ? mk.versionsOf(host) : ["v1"];
    const keep = versions.includes(select.value) ? select.value : versions[Math.min(fallback, versions.length - 1)];
    select.replaceChildren(...versions.map((v) => mk.el("option", { value: v }, v)));
    select.value = keep;
  }

  function routeYaml() {
    const host = val("wr-host"), name = val("wr-header").toLowerCase(), value = val("wr-value");
    const matched = val("wr-subset"), other = val("wr-default"), how = val("wr-how");
    const versions = [...new Set([matched, other, ...mk.versionsOf(host)])].sort();
    return destinationRule(host, versions) + "---\n" + header("VirtualService", host) +
      `  hosts:\n  - ${host}\n  http:\n  - name: ${quote(`${name}-${how}`)}\n    match:\n    - headers:\n        ${name}:\n          ${how}: ${quote(value)}\n` +
      `    route:\n    - destination:\n        host: ${host}\n        subset: ${matched}\n` +
      `  - route:\n    - destination:\n        host: ${host}\n        subset: ${other}\n`;
  }

  function faultYaml() {
    const host = val("wf-host");
    const parts = [];
    if (document.getElementById("wf-delay-on").checked)
      parts.push(`      delay:\n        percentage:\n          value: ${num("wf-delay-pct")}\n        fixedDelay: ${val("wf-delay")}`);
    if (document.getElementById("wf-abort-on").checked)
      parts.push(`      abort:\n        percentage:\n          value: ${num("wf-abort-pct")}\n        httpStatus: ${num("wf-status")}`);
    return header("VirtualService", host) + `  hosts:\n  - ${host}\n  http:\n  - ` +
      (parts.length ? `fault:\n${parts.join("\n")}\n    ` : "") + `route:\n    - destination:\n        host: ${host}\n`;
  }

  function timeoutYaml() {
    const host = val("wt-host");
    let rule = `  - timeout: ${val("wt-timeout")}\n`;
    if (num("wt-attempts") > 0)
      rule += `    retries:\n      attempts: ${num("wt-attempts")}\n      perTryTimeout: ${val("wt-per-try")}\n      retryOn: ${quote(val("wt-retry-on"))}\n`;
    return header("VirtualService", host) + `  hosts:\n  - ${host}\n  http:\n` + rule +
      `    route:\n    - destination:\n        host: ${host}\n`;
  }

  const BUILD = { route: routeYaml, fault: faultYaml, timeout: timeoutYaml };

  function show(which) {
    for (const [key, id] of Object.entries(FORMS)) document.getElementById(id).hidden = key !== which;
    if (which === "route") {
      versionOptions(document.getElementById("wr-subset"), val("wr-host"), 1); // Istio's task: jason -> v2
      versionOptions(document.getElementById("wr-default"), val("wr-host"), 0);
    }
  }

  function fill(which) {
    const editor = document.getElementById("editor");
    editor.value = BUILD[which]();
    editor.dispatchEvent(new Event("input")); // validated as if typed (config.js)
  }

  mk.wizards = { route: routeYaml, fault: faultYaml, timeout: timeoutYaml };
  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("wizard").addEventListener("change", (ev) => show(ev.target.value));
    document.getElementById("wr-host").addEventListener("change", () => show("route"));
    for (const which of Object.keys(FORMS))
      document.getElementById(`${FORMS[which]}-fill`).addEventListener("click", () => fill(which));
  });
})();
