// meshkit workshop dashboard. Renders the board the server streams over SSE.
// Every piece of attendee-controlled text goes through textContent / properties: never parsed as HTML.
"use strict";

const TOKEN_KEY = "meshkit-workshop-token";
const $ = (id) => document.getElementById(id);
let token = null;
let board = null;
let clockOffset = 0; // server time - local time, seconds
let retryDelay = 1000;
let streamAbort = null;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key === "height") node.style.height = value; // CSSOM: allowed by the CSP, unlike style=""
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function ago(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m " + String(seconds % 60).padStart(2, "0") + "s";
  return Math.floor(seconds / 3600) + "h " + String(Math.floor(seconds % 3600 / 60)).padStart(2, "0") + "m";
}

function serverNow() { return Date.now() / 1000 + clockOffset; }

function setStatus(kind, text) {
  const live = $("live");
  live.className = "status status-" + kind;
  live.textContent = text;
}

// -- authentication -------------------------------------------------------------------------------

function readToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search); // keep it off the projector
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showLogin(message) {
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus("offline", "signed out");
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method, cache: "no-store",
    headers: Object.assign({ Authorization: "Bearer " + token },
      body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("The server refused the token.");
    throw new Error("refused");
  }
  return response;
}

// -- the live stream (SSE read through fetch so the token stays in a header) ----------------------

async function follow() {
  if (streamAbort) streamAbort.abort();
  streamAbort = new AbortController();
  setStatus("connecting", "connecting");
  try {
    const response = await fetch("/api/instructor/events", {
      headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" },
      cache: "no-store", signal: streamAbort.signal,
    });
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("The server refused the token.");
      return;
    }
    if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
    setStatus("live", "live");
    retryDelay = 1000;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) {
    if (error.name === "AbortError") return;
  }
  setStatus("offline", "reconnecting");
  setTimeout(follow, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 8000);
}

function handleFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return;
  if (event === "board") render(JSON.parse(data.join("\n")));
  else if (event === "patch" && board) render(applyPatch(board, JSON.parse(data.join("\n"))));
}

// A live update after the first board: the rows that changed (by attendee id) and the other
// top-level fields that changed; the attendee list and the columns are those of the last board.
function applyPatch(state, patch) {
  const rows = new Map((patch.rows || []).map((row) => [row.id, row]));
  delete patch.rows;
  return { ...state, ...patch, attendees: state.attendees.map((row) => rows.get(row.id) || row) };
}

// -- rendering ------------------------------------------------------------------------------------

function render(state) {
  board = state;
  clockOffset = state.now - Date.now() / 1000;
  $("title").textContent = state.title;
  document.title = state.title + " — meshkit workshop";
  $("join-code").textContent = state.join_code;
  $("attendee-count").textContent = String(state.attendees.length);
  renderGrid(state);
  renderLists(state);
  renderTimeline(state.timeline);
  renderReleaseChoices(state);
  const locked = state.labs.filter((lab) => lab.locked).map((lab) => lab.lab);
  $("locked-labs").textContent = locked.length ? locked.join(", ") : "none";
}

function renderGrid(state) {
  const grid = $("grid");
  const head = el("thead");
  const labRow = el("tr", {}, el("th", { rowSpan: 2, text: "attendee", class: "name-col" }),
    el("th", { rowSpan: 2, text: "done", class: "done-col" }));
  const stepRow = el("tr");
  for (const lab of state.labs) {
    if (!lab.steps.length) continue;
    const badges = [];
    if (lab.locked) badges.push("locked");
    if (lab.released) badges.push("solutions out");
    labRow.append(el("th", { colSpan: lab.steps.length, class: "lab", title: lab.lab,
      text: lab.lab + (badges.length ? " (" + badges.join(", ") + ")" : "") }));
    for (const step of lab.steps) {
      const released = lab.released || lab.released_steps.includes(step);
      stepRow.append(el("th", { class: "step" + (released ? " released" : ""), title: lab.lab + " / " + step,
        text: step }));
    }
  }
  head.append(labRow, stepRow);
  const body = el("tbody");
  const usedSolution = new Set((state.solutions || []).map((s) => s.attendee + "\u0000" + s.lab + "\u0000" + s.step));
  for (const attendee of state.attendees) {
    const reset = el("button", { type: "button", class: "reset", text: "reset",
      title: "Reset this attendee's progress" });
    reset.addEventListener("click", () => resetAttendee(attendee));
    const remove = el("button", { type: "button", class: "remove", text: "remove",
      title: "Remove this attendee from the room (their results stop counting)" });
    remove.addEventListener("click", () => removeAttendee(attendee));
    const refused = (state.throttled || {})[attendee.id] || 0;
    const limited = refused ? el("span", { class: "throttled", text: refused + " rate-limited",
      title: refused + " result requests refused by the rate limit" }) : "";
    const row = el("tr", { dataset: { attendee: attendee.id } },
      el("th", { class: "name", scope: "row" }, el("span", { class: "attendee-name", text: attendee.name }),
        reset, remove, limited),
      el("td", { class: "done", text: String(attendee.passed) }));
    attendee.cells.forEach((cell, i) => {
      const [lab, step] = state.columns[i];
      const td = el("td", { dataset: { lab, step } });
      if (cell === null) {
        td.className = "cell cell-none";
        td.textContent = "·";
        td.title = attendee.name + ": " + step + " not started";
      } else if (cell[0] === "p") {
        td.className = "cell cell-passed";
        td.textContent = "✓";
        td.title = attendee.name + ": " + step + " passed";
      } else if (cell[0] === "r") {
        td.className = "cell cell-regressed";
        td.textContent = "↺";
        td.title = attendee.name + ": " + step + " passed before, failing again for " +
          ago(serverNow() - cell[2]) + "\n" + cell[1];
      } else {
        td.className = "cell cell-failing";
        td.textContent = "✗";
        td.title = attendee.name + ": " + step + " failing for " + ago(serverNow() - cell[2]) + "\n" + cell[1];
      }
      if (usedSolution.has(attendee.id + "\u0000" + lab + "\u0000" + step)) {
        td.classList.add("used-solution");
        td.title += "\n(revealed the solution)";
      }
      row.append(td);
    });
    body.append(row);
  }
  grid.replaceChildren(head, body);
  $("empty").hidden = state.attendees.length > 0;
}

function renderLists(state) {
  $("stuck").replaceChildren(...state.stuck.map((item) => el("li", { dataset: { since: item.since } },
    el("strong", { class: "who", text: item.name }),
    el("span", { class: "where", text: " " + item.lab + " / " + item.step + " " }),
    el("span", { class: "age", text: ago(serverNow() - item.since) }),
    el("div", { class: "reason", text: item.reason || "(no reason given)" }))));
  if (!state.stuck.length) $("stuck").append(el("li", { class: "note", text: "nobody is stuck" }));
  $("hardest").replaceChildren(...state.hardest.map((item) => el("li", {},
    el("span", { class: "where", text: item.lab + " / " + item.step }),
    el("span", { class: "counts",
      text: "  " + item.failing + " failing now · " + item.ever_failed + " ever failed · " + item.passed + " passed" }))));
  $("feed").replaceChildren(...state.feed.slice(0, 12).map((item) => {
    const what = item.kind === "pass" || item.kind === "fail"
      ? (item.kind === "pass" ? "passed " : "failed ") + item.lab + " / " + item.step
      : item.kind === "join" ? "joined"
      : item.kind === "release" ? "solution released: " + item.lab + (item.step ? " / " + item.step : "")
      : item.kind === "lock" || item.kind === "unlock" ? item.kind + "ed " + item.lab
      : item.kind === "reset" ? "progress reset"
      : item.kind === "remove" ? "removed from the room"
      : item.kind === "solution" ? "revealed the solution of " + item.lab + " / " + item.step
      : item.kind === "broadcast" ? "broadcast: " + item.text : item.kind;
    return el("li", { class: "feed-" + item.kind },
      el("span", { class: "age", text: ago(serverNow() - item.at) + " ago " }),
      el("strong", { text: item.name ? item.name + " " : "" }), el("span", { text: what }));
  }));
  $("messages").replaceChildren(...state.messages.slice().reverse().map((message) =>
    el("li", { text: message.text })));
}

function renderTimeline(timeline) {
  const max = Math.max(1, ...timeline.passes.map((p, i) => p + timeline.fails[i]));
  const bars = timeline.passes.map((passes, i) => {
    const fails = timeline.fails[i];
    const start = new Date((timeline.start + i * timeline.bucket) * 1000);
    return el("div", { class: "bar", title: start.toLocaleTimeString() + ": " + passes + " passed, " + fails + " failed" },
      el("div", { class: "bar-fail", height: (100 * fails / max) + "%" }),
      el("div", { class: "bar-pass", height: (100 * passes / max) + "%" }));
  });
  $("timeline").replaceChildren(...bars);
}

function renderReleaseChoices(state) {
  const labSelect = $("release-lab");
  const chosen = labSelect.value;
  const labs = state.labs.map((lab) => lab.lab);
  if (labs.join("\n") !== Array.from(labSelect.options, (o) => o.value).join("\n")) {
    labSelect.replaceChildren(...labs.map((lab) => el("option", { value: lab, text: lab })));
    if (labs.includes(chosen)) labSelect.value = chosen;
  }
  renderStepChoices();
}

function renderStepChoices() {
  if (!board) return;
  const stepSelect = $("release-step");
  const chosen = stepSelect.value;
  const lab = board.labs.find((item) => item.lab === $("release-lab").value);
  const steps = lab ? lab.steps : [];
  const values = ["", ...steps];
  if (values.join("\n") !== Array.from(stepSelect.options, (o) => o.value).join("\n")) {
    stepSelect.replaceChildren(el("option", { value: "", text: "whole lab" }),
      ...steps.map((step) => el("option", { value: step, text: step })));
    if (values.includes(chosen)) stepSelect.value = chosen;
  }
}

// keep the ages moving between updates
setInterval(() => {
  for (const li of $("stuck").querySelectorAll("li[data-since]")) {
    li.querySelector(".age").textContent = ago(serverNow() - Number(li.dataset.since));
  }
}, 1000);

// -- instructor actions ---------------------------------------------------------------------------

function note(text) { $("action-result").textContent = text; }

async function action(path, body, done) {
  try {
    const response = await api("POST", path, body);
    const answer = await response.json();
    note(response.ok ? done(answer) : "refused: " + answer.error);
  } catch (error) {
    if (error.message !== "refused") note("failed: " + error.message);
  }
}

async function resetAttendee(attendee) {
  if (!confirm("Reset the progress of " + attendee.name + "?")) return;
  await action("/api/instructor/attendees/" + encodeURIComponent(attendee.id) + "/reset", {},
    () => "progress of " + attendee.name + " reset");
}

async function removeAttendee(attendee) {
  if (!confirm("Remove " + attendee.name + " from the workshop? Their results stop counting.")) return;
  await action("/api/instructor/attendees/" + encodeURIComponent(attendee.id) + "/remove", {},
    () => attendee.name + " removed");
}

async function exportCsv() {
  try {
    const response = await api("GET", "/api/instructor/export.csv");
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: "workshop-progress.csv" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    if (error.message !== "refused") note("export failed: " + error.message);
  }
}

function wire() {
  $("broadcast-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("broadcast-text").value.trim();
    if (!text) return;
    action("/api/instructor/broadcast", { text }, () => { $("broadcast-text").value = ""; return "sent to every notebook"; });
  });
  $("release-lab").addEventListener("change", renderStepChoices);
  $("release-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const lab = $("release-lab").value;
    const step = $("release-step").value;
    if (!lab) return;
    if (!confirm("Release the solution of " + lab + (step ? " / " + step : " (whole lab)") + "?")) return;
    action("/api/instructor/release", step ? { lab, step } : { lab },
      () => "solution released: " + lab + (step ? " / " + step : ""));
  });
  $("lock-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const lab = $("lock-lab").value.trim();
    const locked = event.submitter ? event.submitter.dataset.locked === "true" : true;
    if (!lab) return;
    action("/api/instructor/lock", { lab, locked }, () => (locked ? "locked " : "unlocked ") + lab);
  });
  $("export-csv").addEventListener("click", exportCsv);
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    follow();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  token = readToken();
  if (token) follow(); else showLogin();
});
