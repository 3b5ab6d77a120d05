// Sovereign Hub dashboard: one websocket for live events, the HTTP API for everything else.
// No framework and no build step: the hub serves these files as they are.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 50; // devices per page: 1,000 devices stay responsive
const state = { devices: new Map(), page: 0, filter: "", session: null, feed: 0, rateable: new Set() };
let token = localStorage.getItem("sovereign-token") || "";

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function num(v, digits = 0) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function notice(text) { $("notice").textContent = text || ""; }

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const doc = await resp.json().catch(() => ({}));
  if (resp.status === 401 || resp.status === 429) notice(`${doc.error?.message || "not allowed"} — enter the admin token above`);
  return { status: resp.status, doc };
}

// -- devices ----------------------------------------------------------------------------------
let renderQueued = false;
function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderDevices(); });
}
function models(d) { return (d.capability?.models || []).map((m) => m.name).join(", "); }
function deviceRow(d) {
  const power = d.capability?.power || {};
  const load = d.energy?.load?.active ?? 0;
  const battery = d.energy?.battery_pct ?? power.battery_pct;
  const source = d.energy?.source ?? power.source ?? "";
  // "pending": seen but not paired, never routed to (docs/security.md).
  const status = d.state || (d.online ? "online" : "offline");
  return `<tr data-id="${esc(d.id)}" class="${esc(status)}">
    <td>${esc(d.id)}</td><td>${esc(d.tier)}</td><td>${esc(status)}</td><td>${esc(source)}</td>
    <td>${battery === undefined || battery === null ? "–" : num(battery) + "%"}</td><td>${load}</td>
    <td class="models" title="${esc(models(d))}">${esc(models(d))}</td></tr>`;
}
function renderDevices() {
  const f = state.filter.toLowerCase();
  const all = [...state.devices.values()].filter((d) => !f || d.id.toLowerCase().includes(f) || d.tier.includes(f)
    || models(d).toLowerCase().includes(f));
  all.sort((a, b) => (b.online - a.online) || a.id.localeCompare(b.id));
  const pages = Math.max(1, Math.ceil(all.length / PAGE));
  state.page = Math.min(state.page, pages - 1);
  $("devices").innerHTML = all.slice(state.page * PAGE, (state.page + 1) * PAGE).map(deviceRow).join("");
  $("page").textContent = `page ${state.page + 1} of ${pages}`;
  const online = [...state.devices.values()].filter((d) => d.online && d.state !== "pending").length;
  const pending = [...state.devices.values()].filter((d) => d.state === "pending").length;
  $("device-count").textContent = `${online} online, ${state.devices.size} known` + (pending ? `, ${pending} pending` : "");
}

// A one-time pairing code for a new device (an admin write: needs the token off loopback).
$("pair").addEventListener("click", async () => {
  const { status, doc } = await api("POST", "/api/pair/codes", {});
  if (status !== 201) { $("pair-code").textContent = doc.error?.message || `HTTP ${status}`; return; }
  const until = new Date(doc.expires_at * 1000).toLocaleTimeString();
  $("pair-code").textContent = `Code ${doc.code} (one use, until ${until}). On the device: ${doc.agent_command}`;
});

// -- energy -----------------------------------------------------------------------------------
function renderEnergy(e) {
  if (!e) return;
  $("mode").textContent = e.mode;
  const rows = [["carbon", `${num(e.carbon_g_per_kwh)} g/kWh`], ["PV", `${num(e.pv_w)} W`], ["load", `${num(e.load_w)} W`],
    ["grid", `${num(e.grid_w)} W`], ["surplus", `${num(e.solar_surplus_w)} W`], ["price", `${num(e.price_per_kwh, 3)} /kWh`]];
  $("energy").innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
  $("mode-reasons").innerHTML = (e.mode_reasons || []).map((r) => `<li>${esc(r)}</li>`).join("");
  const pts = (e.carbon_forecast || []).map((p) => [p.start, p.value]);
  if (e.carbon_g_per_kwh !== null && e.carbon_g_per_kwh !== undefined) pts.unshift([e.now, e.carbon_g_per_kwh]);
  if (pts.length < 2) { $("forecast").innerHTML = ""; return; }
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0], vmax = Math.max(...pts.map((p) => p[1]), 1);
  const xy = pts.map(([t, v]) => `${(480 * (t - t0) / (t1 - t0 || 1)).toFixed(1)},${(115 - 110 * v / vmax).toFixed(1)}`);
  $("forecast").innerHTML = `<polyline points="${xy.join(" ")}"/><circle cx="${xy[0].split(",")[0]}" cy="${xy[0].split(",")[1]}" r="4"/>`;
}

// -- routing ----------------------------------------------------------------------------------
function addTask(t) {
  const li = document.createElement("li");
  const by = t.served_by || {};
  li.className = !t.ok ? "failed" : (t.attempts || []).length > 1 && !t.votes ? "escalated" : "";
  li.dataset.id = t.id;
  li.innerHTML = `<b>${esc(t.task)}</b> → ${esc(by.model || "–")} on ${esc(by.device || "–")} (${esc(by.layer || t.error?.code || "")})
    · ${num(t.latency_ms, 1)} ms · ${num(t.joules, 3)} J · ${Number(t.gco2 || 0).toExponential(1)} gCO2 · $${Number(t.cost || 0).toFixed(6)}
    ${(t.attempts || []).length > 1 && !t.votes ? ` · <b>escalated after ${t.attempts.length - 1} failure(s)</b>` : ""}
    <div class="why">${esc((t.reasons || []).slice(-2).join(" · "))}</div>`;
  if (t.ok && by.device !== "hub" && state.rateable.has(t.task)) {
    // A person's verdict is an outcome the router learns from (POST /api/feedback/{id}).
    li.insertAdjacentHTML("beforeend", `<span class="rate" data-testid="rate"><button data-rate="up" title="a good answer" aria-label="good answer">👍</button><button data-rate="down" title="a wrong or poor answer" aria-label="poor answer">👎</button></span>`);
  }
  $("feed").prepend(li);
  while ($("feed").children.length > 50) $("feed").lastChild.remove();
}
function taskBody() {
  return { task: $("task-type").value, text: $("task-text").value, budget_ms: Number($("task-budget").value) || 5000 };
}
$("task-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("task-result").textContent = "running…";
  const { status, doc } = await api("POST", "/api/infer", taskBody());
  $("task-result").textContent = status === 200 ? `${typeof doc.output === "string" ? doc.output : JSON.stringify(doc.output)}\n— ${doc.served_by?.model} on ${doc.served_by?.device}, ${num(doc.latency_ms, 1)} ms${doc.simulated ? " (simulated)" : ""}`
    : `error ${status}: ${doc.error?.message || JSON.stringify(doc)}`;
});
$("dry-run").addEventListener("click", async () => {
  const { status, doc } = await api("POST", "/api/route", taskBody());
  $("task-result").textContent = status === 200 ? [`→ ${doc.chosen ? `${doc.chosen.model} on ${doc.chosen.device}` : "no device"}`, ...doc.reasons,
    ...doc.excluded.slice(0, 6).map((e) => `✗ ${e.device}${e.model ? "/" + e.model : ""}: ${e.reason}`)].join("\n")
    : `error ${status}: ${doc.error?.message}`;
});

async function loadRateable() {
  const { status, doc } = await api("GET", "/api/feedback");
  if (status === 200) state.rateable = new Set(doc.tasks);
}
$("feed").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-rate]");
  if (!b) return;
  const li = b.closest("li"), span = b.parentElement;
  span.querySelectorAll("button").forEach((x) => { x.disabled = true; });
  const { status, doc } = await api("POST", `/api/feedback/${encodeURIComponent(li.dataset.id)}`, { rating: b.dataset.rate });
  if (status === 200) span.textContent = `rated ${doc.rating === "up" ? "👍" : "👎"}: ${doc.outcomes} outcomes of ${doc.model} learned`;
  else { span.querySelectorAll("button").forEach((x) => { x.disabled = status !== 409; }); notice(doc.error?.message || `error ${status}`); }
});

// -- costs and rules --------------------------------------------------------------------------
// Money with `digits` decimals (the ledger keeps 6: an intent task costs a few millionths), never "-0.000000".
function money(v, digits = 6) { return v === null || v === undefined ? "–" : (Math.round(Number(v) * 10 ** digits) / 10 ** digits + 0).toFixed(digits).replace(/^-(0\.0*)$/, "$1"); }
async function refreshCosts() {
  const { status, doc } = await api("GET", "/api/costs");
  if (status !== 200) return;
  // Which price "all cloud" is: a model and its price list, or none known ("no price", never $0).
  const cf = doc.counterfactual || {};
  const priced = cf.input_per_mtok !== null && cf.input_per_mtok !== undefined;
  const rows = ["today", "week", "month"].map((p) => {
    const t = doc[p].total;
    const layers = Object.entries(doc[p].by_layer).map(([l, r]) => `${l} ${r.count}`).join(", ");
    const saved = t.saved_cost === null || t.saved_cost === undefined || (!priced && !t.count) ? "no price"
      : `saved $${money(t.saved_cost)}` + (t.unpriced ? ` (${t.unpriced} unpriced left out)` : "");
    return `<tr><td>${p}</td><td>${t.count} tasks</td><td>$${money(t.cost)}</td><td>${esc(saved)}</td><td>${esc(layers)}</td></tr>`;
  });
  const basis = priced ? `all-cloud priced as ${cf.model} at $${cf.input_per_mtok} in / $${cf.output_per_mtok} out per million tokens (${cf.price_list}): ${cf.source}`
    : `all-cloud: no price for ${cf.model || "the counterfactual model"} (set router.cloud_prices in hub.toml)`;
  $("costs").innerHTML = `<tr><th>period</th><th>tasks</th><th>cost</th><th>vs all-cloud</th><th>by layer</th></tr>${rows.join("")}`
    + `<tr><td colspan="5" class="why" data-testid="costs-basis">${esc(basis)}</td></tr>`;
}
async function refreshRules() {
  const { status, doc } = await api("GET", "/api/rules");
  if (status !== 200) return;
  $("rules").innerHTML = doc.rules.length ? `<tr><th>task</th><th>pattern</th><th>answer</th><th>state</th><th></th></tr>` + doc.rules.map((r) =>
    `<tr><td>${esc(r.task)}</td><td>${esc(r.pattern)}</td><td>${esc(JSON.stringify(r.answer))}</td><td>${esc(r.state)}</td>
     <td><button data-rule="${esc(r.id)}" data-action="${r.state === "approved" ? "disable" : "approve"}">${r.state === "approved" ? "disable" : "approve"}</button></td></tr>`).join("")
    : "<tr><td>no patterns proposed yet</td></tr>";
}
$("rules").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-rule]");
  if (!b) return;
  await api("POST", `/api/rules/${encodeURIComponent(b.dataset.rule)}/${b.dataset.action}`);
  refreshRules();
});

// -- power ------------------------------------------------------------------------------------
// Each device's power state and what the hub plans for it, with why (GET /api/power); Wake and
// Sleep are admin writes (POST /api/power/{id}). A wake is answered once the device is back.
const PLANS = { stay_awake: "stay awake", sleep: "sleep", wake: "wake", stay_asleep: "stay asleep", waking: "waking" };
function ahead(s) { return s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`; }
function powerRow(d, now) {
  let plan = PLANS[d.action] || "–";
  if (d.action === "stay_asleep" && d.at > now + 1) plan = `wake in ${ahead(d.at - now)}`;
  const latency = d.observed_wake_ms ?? d.wake_latency_ms;
  const facts = [`idle ${num(d.idle_w, 1)} W`, `asleep ${num(d.sleep_w, 1)} W`, d.wake === "none" ? "no wake method" : d.wake,
    latency === null || latency === undefined ? "" : `wakes in ${num(latency / 1000, 1)} s${d.observed_wake_ms ? " (seen)" : ""}`,
    `${d.wakes} wakes, ${d.sleeps} sleeps` + (d.wake_failures ? `, ${d.wake_failures} failed` : "")].filter(Boolean).join(" · ");
  const canWake = (d.state === "sleeping" || d.state === "offline") && d.wake !== "none";
  const last = (d.recent || []).at(-1)?.what; // what the hub last did or saw, in words
  const canSleep = d.state === "awake" && d.wake !== "none"; // the hub could not wake it again
  return `<tr data-power-id="${esc(d.id)}" class="power-${esc(d.state)}">
    <td>${esc(d.id)}<div class="why">${esc(facts)}</div></td><td data-testid="power-state">${esc(d.state)}</td>
    <td>${esc(plan)}</td><td class="why">${esc((d.reasons || []).join(" · "))}${last ? `<div>last: ${esc(last)}</div>` : ""}</td>
    <td><button data-power="wake" ${canWake ? "" : "disabled"}>Wake</button> <button data-power="sleep" ${canSleep ? "" : "disabled"}
      title="${d.wake === "none" ? "it announces no way to wake it again" : "ask it to sleep now"}">Sleep</button></td></tr>`;
}
async function refreshPower() {
  const { status, doc } = await api("GET", "/api/power");
  if (status !== 200) return;
  const asleep = doc.devices.filter((d) => d.state === "sleeping").length;
  $("power-summary").textContent = `${asleep} asleep` + (doc.enabled ? "" : " · power management off");
  $("power").innerHTML = doc.devices.length ? `<tr><th>device</th><th>state</th><th>plan</th><th>why</th><th></th></tr>`
    + doc.devices.map((d) => powerRow(d, doc.now)).join("") : "<tr><td>no paired devices</td></tr>";
}
let powerQueued = null;
function queuePower() { if (powerQueued === null) powerQueued = setTimeout(() => { powerQueued = null; refreshPower(); }, 1000); }
$("power").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-power]");
  if (!b) return;
  const id = b.closest("tr").dataset.powerId, action = b.dataset.power;
  b.closest("td").querySelectorAll("button").forEach((x) => { x.disabled = true; });
  $("power-result").textContent = `${id}: ${action === "wake" ? "waking" : "asking it to sleep"}…`;
  const answer = api("POST", `/api/power/${encodeURIComponent(id)}`, { action });
  setTimeout(refreshPower, 300); // a wake shows as "waking" while the hub waits for it
  const { status, doc } = await answer;
  $("power-result").textContent = status === 200 ? `${doc.device}: ${doc.result}` : `${id}: ${doc.error?.message || `error ${status}`}`;
  refreshPower(); queuePower(); // again once the hub has planned with the new state
});

// -- EEG --------------------------------------------------------------------------------------
function gauge(score) {
  const s = Math.max(0, Math.min(1, score ?? 0)), a = Math.PI * (1 - s);
  $("gauge-arc").setAttribute("d", `M10 100 A90 90 0 0 1 ${(100 + 90 * Math.cos(a)).toFixed(1)} ${(100 - 90 * Math.sin(a)).toFixed(1)}`);
  $("gauge-text").textContent = score === null || score === undefined ? "–" : score.toFixed(2);
  $("gauge").dataset.score = score ?? "";
}
function feedback(f) {
  if (state.session && f.session !== state.session) return;
  gauge(f.score);
  $("bands").innerHTML = Object.entries(f.relative || {}).map(([b, v]) => `<div style="height:${(100 * v).toFixed(0)}%"><span>${b}</span></div>`).join("");
  const bad = Object.entries(f.artifacts || {}).filter(([, ch]) => ch.length).map(([k, ch]) => `${k} on ${ch.length}`);
  $("eeg-status").innerHTML = `${esc(f.phase)}${f.state ? " · " + esc(f.state) : ""} · ${f.clean_channels} clean channels` +
    (bad.length ? ` · <span class="warn">artifacts: ${esc(bad.join(", "))}</span>` : "");
}
$("eeg-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const { status, doc } = await api("POST", "/api/eeg/sessions", { board: $("eeg-board").value, protocol: $("eeg-protocol").value, baseline_s: 5 });
  if (status === 201) { state.session = doc.session; $("eeg-stop").disabled = false; $("eeg-status").textContent = `session ${doc.session}: baseline…`; }
  else if (status !== 401 && status !== 429) notice(doc.error?.message || `error ${status}`);
});
$("eeg-stop").addEventListener("click", async () => {
  if (!state.session) return;
  const { status, doc } = await api("DELETE", `/api/eeg/sessions/${state.session}`);
  if (status === 200) { $("eeg-status").textContent = `stopped: mean score ${doc.mean_score}`; state.session = null; $("eeg-stop").disabled = true; }
});

// -- the live feed ----------------------------------------------------------------------------
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/api/ws${token ? "?token=" + encodeURIComponent(token) : ""}`);
  ws.onopen = () => { $("conn").textContent = "live"; $("conn").className = "badge on"; };
  ws.onclose = () => { $("conn").textContent = "offline"; $("conn").className = "badge off"; setTimeout(connect, 1000); };
  ws.onmessage = (m) => {
    const { type, data } = JSON.parse(m.data);
    if (type === "hello") {
      $("hub-id").textContent = data.hub;
      state.devices = new Map(data.devices.map((d) => [d.id, d]));
      queueRender(); renderEnergy(data.energy);
    } else if (type === "device") { state.devices.set(data.id, data); queueRender(); queuePower(); }
    else if (type === "device_removed") { state.devices.delete(data.id); queueRender(); queuePower(); }
    else if (type === "energy") renderEnergy(data);
    else if (type === "task") { addTask(data); state.feed++; }
    else if (type === "eeg.feedback") feedback(data);
    else if (type === "gaze.attention") $("gaze").textContent = `gaze: attention ${num(data.attention, 2)}, ${data.on_target === null ? "no tracker" : data.on_target ? "on target" : "off target"}, ${num(data.fixation_rate_hz, 1)} fixations/s`;
  };
}

$("token").value = token;
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  localStorage.setItem("sovereign-token", token);
  notice("");
  refreshCosts(); refreshRules(); refreshPower(); loadRateable();
});
$("device-filter").addEventListener("input", (ev) => { state.filter = ev.target.value; state.page = 0; queueRender(); });
$("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); queueRender(); });
$("next").addEventListener("click", () => { state.page++; queueRender(); });
loadRateable().then(connect);
refreshCosts(); refreshRules(); refreshPower();
setInterval(() => { refreshCosts(); refreshRules(); refreshPower(); }, 10000);
