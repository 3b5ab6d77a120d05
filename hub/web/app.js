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

// -- voice ------------------------------------------------------------------------------------
// The voice plugin's utterances (GET /api/voice, then `voice.utterance` events), a text box and
// push-to-talk. Everything from the hub goes into the page as text (textContent), never as HTML.
const VOICE_ROWS = 20;
const voice = { rows: new Map(), expiry: new Map(), enabled: true, hello: false };
const HEARD_NOTHING = { no_speech: "(no speech heard)", no_wake: "(wake word not heard)", error: "(no transcript)" };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
  for (const kid of kids) if (kid !== undefined && kid !== null && kid !== false) e.append(kid); // strings become text nodes
  return e;
}
function ms(v) { return v === null || v === undefined ? "–" : `${num(v, Number(v) < 10 ? 1 : 0)} ms`; }
function voiceStatus(text, isError = false) {
  $("voice-status").textContent = text || "";
  $("voice-status").classList.toggle("error", Boolean(isError && text));
}
function slotsText(slots) { return Object.entries(slots || {}).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" "); }
function stageText(s) {
  return `${s.name} ${ms(s.ms)}` + (s.model ? ` (${s.model} on ${s.device})` : "");
}
function stageTitle(s) {
  return [`${s.name}: ${ms(s.ms)}, ${num(s.joules, 3)} J`, s.model ? `${s.model} on ${s.device}` : "", s.note || ""].filter(Boolean).join(" · ");
}
function voiceRow(u) {
  const status = String(u.status || "");
  const li = el("li", { "data-testid": "voice-row", "data-id": u.id, "data-status": status,
    class: `voice-${status}${u.partial ? " partial" : ""}` });
  const when = new Date(Number(u.at) * 1000);
  li.append(el("div", { class: "voice-head" },
    el("time", { datetime: Number.isFinite(when.getTime()) ? when.toISOString() : null }, Number.isFinite(when.getTime()) ? when.toLocaleTimeString() : "–"),
    el("span", { class: "voice-source", title: "where it came from" }, String(u.source ?? "")),
    u.text ? el("q", { class: "voice-said", "data-testid": "voice-row-text" }, String(u.text))
      : el("span", { class: "voice-said none", "data-testid": "voice-row-text" }, HEARD_NOTHING[status] || "(nothing said)"),
    el("span", { class: "badge layer", title: "the layer that understood it" }, String(u.layer ?? "none")),
    el("span", { class: `badge status ${status}`, "data-testid": "voice-row-status" }, status.replace(/_/g, " ")),
    u.partial ? el("span", { class: "badge partial", "data-testid": "voice-partial", title: "the audio is incomplete" },
      `partial: ${u.partial}`) : null));
  const actions = (u.actions || []).map((a) => el("span", { class: "voice-action", "data-testid": "voice-action",
    title: `${a.layer || ""} ${a.confidence === undefined ? "" : "confidence " + num(a.confidence, 2)}`.trim() },
    a.intent, el("span", { class: "slots" }, slotsText(a.slots)), a.sensitive ? el("span", { class: "sensitive" }, "sensitive") : null));
  if (actions.length) li.append(el("div", { class: "voice-actions" }, "→ ", ...actions));
  const answered = u.confirms ? voice.rows.get(u.confirms) : null;
  const why = [answered ? `answer to “${answered.text}”` : u.confirms ? `answer to ${u.confirms}` : "", u.reason, u.error ? `error at ${u.error.stage || "?"}: ${u.error.message || u.error.code || ""}` : ""].filter(Boolean).join(" · ");
  if (why) li.append(el("div", { class: "why" }, why));
  const stages = u.stages || [];
  li.append(el("div", { class: "voice-cost", "data-testid": "voice-cost", title: stages.map(stageTitle).join("\n") || null },
    el("b", {}, ms(u.latency_ms)), ` · ${num(u.joules, 3)} J`, u.audio_s !== undefined ? ` · ${num(u.audio_s, 1)} s of audio` : "",
    stages.length ? el("span", { class: "stages" }, ` · ${stages.map(stageText).join(" → ")}`) : null));
  if (status === "awaiting_confirmation") {
    const until = u.expires_at ? new Date(u.expires_at * 1000).toLocaleTimeString() : "";
    li.append(el("div", { class: "voice-confirm" },
      el("button", { type: "button", "data-voice": "yes", "data-testid": "voice-confirm" }, "Confirm"), " ",
      el("button", { type: "button", "data-voice": "no", "data-testid": "voice-cancel", class: "secondary" }, "Cancel"),
      until ? el("span", { class: "why" }, ` held until ${until}`) : null));
  }
  return li;
}
function voiceSummary() {
  const held = [...voice.rows.values()].filter((u) => u.status === "awaiting_confirmation").length;
  $("voice-summary").textContent = voice.enabled ? (held ? `${held} awaiting confirmation` : "") : "plugin off";
}
// Adds or replaces one utterance's row, newest first, at most VOICE_ROWS rows.
function upsertUtterance(u, fromListing = false) {
  if (!u || typeof u.id !== "string") return;
  const old = voice.rows.get(u.id);
  // A listing fetched before a confirmation must not bring back its Confirm buttons.
  if (old && fromListing && u.status === "awaiting_confirmation" && old.status !== "awaiting_confirmation") return;
  if (!old && voice.rows.size >= VOICE_ROWS && Number(u.at) <= Math.min(...[...voice.rows.values()].map((r) => Number(r.at)))) return;
  voice.rows.set(u.id, u);
  const li = voiceRow(u), feed = $("voice-feed");
  const there = [...feed.children].find((c) => c.dataset.id === u.id);
  if (there) there.replaceWith(li);
  else feed.insertBefore(li, [...feed.children].find((c) => Number(voice.rows.get(c.dataset.id)?.at) < Number(u.at)) || null);
  while (feed.children.length > VOICE_ROWS) {
    const gone = feed.lastChild.dataset.id;
    voice.rows.delete(gone); clearTimeout(voice.expiry.get(gone)); voice.expiry.delete(gone); feed.lastChild.remove();
  }
  // The answer to a held action: the held row says what became of it.
  if (u.confirms && voice.rows.has(u.confirms)) {
    const held = voice.rows.get(u.confirms);
    const outcome = u.status === "published" ? "confirmed" : u.status === "cancelled" ? "cancelled" : held.status;
    if (held.status !== outcome) upsertUtterance({ ...held, status: outcome });
  }
  // A held action that nobody answers expires on the hub: ask again once it should have.
  clearTimeout(voice.expiry.get(u.id));
  voice.expiry.delete(u.id);
  if (u.status === "awaiting_confirmation" && u.expires_at && u.at) {
    voice.expiry.set(u.id, setTimeout(refreshVoice, Math.min(3600, Math.max(0, u.expires_at - u.at)) * 1000 + 1000));
  }
  voiceSummary();
}
async function refreshVoice() {
  try {
    const { status, doc } = await api("GET", "/api/voice");
    if (status === 404) {
      voice.enabled = false;
      voiceStatus("The voice plugin is not enabled on this hub (add a [plugins.voice] section to hub.toml).", true);
      $("voice-ptt").disabled = true; $("voice-form").querySelector("button").disabled = true;
    } else if (status === 200) {
      if (!voice.enabled) { voice.enabled = true; voiceStatus(""); $("voice-form").querySelector("button").disabled = false; pttView(); }
      (doc.utterances || []).slice(0, VOICE_ROWS).reverse().forEach((u) => upsertUtterance(u, true));
    }
    voiceSummary();
  } catch (err) {
    voiceStatus(`could not load the voice feed: ${err.message || err}`, true);
  }
}
$("voice-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("voice-text").value.trim(), send = ev.target.querySelector("button");
  if (!text) { voiceStatus("type a command first", true); return; }
  send.disabled = true;
  try {
    const { status, doc } = await api("POST", "/api/voice", { text });
    if (status === 200) { upsertUtterance(doc); $("voice-text").value = ""; voiceStatus(""); }
    else voiceStatus(`not sent: ${doc.error?.message || `HTTP ${status}`}`, true);
  } catch (err) {
    voiceStatus(`could not reach the hub: ${err.message || err}`, true);
  } finally { send.disabled = !voice.enabled; }
});
$("voice-feed").addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-voice]");
  if (!b) return;
  const id = b.closest("li").dataset.id, yes = b.dataset.voice === "yes";
  const buttons = [...b.parentElement.querySelectorAll("button")];
  buttons.forEach((x) => { x.disabled = true; });
  try {
    const { status, doc } = await api("POST", `/api/voice/${encodeURIComponent(id)}/confirm`, { confirm: yes });
    if (status === 200) { upsertUtterance(doc); voiceStatus(""); return; }
    voiceStatus(`${yes ? "not confirmed" : "not cancelled"}: ${doc.error?.message || `HTTP ${status}`}`, true);
    if (status === 404) refreshVoice(); // expired, or answered elsewhere: the hub's word
    else buttons.forEach((x) => { x.disabled = false; });
  } catch (err) {
    voiceStatus(`could not reach the hub: ${err.message || err}`, true);
    buttons.forEach((x) => { x.disabled = false; });
  }
});

// Push-to-talk: the microphone through an AudioContext, mixed to mono and resampled to 16 kHz
// 16-bit here, sent as a WAV (base64 in JSON: the hub takes only JSON bodies from a browser).
const MAX_RECORDING_S = 60, HOLD_MS = 350, TARGET_RATE = 16000;
const rec = { state: "idle", stream: null, ctx: null, nodes: [], chunks: [], frames: 0, rate: 0, stopWanted: false,
  capped: false, pointer: null, downAt: 0, ticker: null };
// The capture tap as an AudioWorklet, loaded from a Blob URL (no file to serve); batches of 1024 frames.
const TAP_WORKLET = `class SovereignTap extends AudioWorkletProcessor {
  constructor() { super(); this.buf = new Float32Array(1024); this.n = 0; }
  process(inputs) {
    const chans = inputs[0];
    if (chans && chans.length) {
      const len = chans[0].length;
      for (let i = 0; i < len; i++) {
        let s = 0; for (let c = 0; c < chans.length; c++) s += chans[c][i];
        this.buf[this.n++] = s / chans.length;
        if (this.n === this.buf.length) { this.port.postMessage(this.buf, [this.buf.buffer]); this.buf = new Float32Array(1024); this.n = 0; }
      }
    }
    return true;
  }
}
registerProcessor("sovereign-tap", SovereignTap);`;

function micMessage(err) {
  const name = err?.name || "";
  if (name === "InsecureContext") return "The microphone needs a secure page: open the dashboard on https:// or on localhost (browsers offer no microphone to plain http:// pages). You can still type a command.";
  if (name === "NotAllowedError" || name === "PermissionDeniedError" || name === "SecurityError")
    return "Microphone permission denied: allow the microphone for this page in the browser's site settings, then try again. You can still type a command.";
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError")
    return "No microphone found: connect one and try again, or type a command.";
  if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError")
    return "The microphone could not be started (another application may be using it).";
  return `Microphone error: ${name || "Error"}${err?.message ? ": " + err.message : ""}`;
}
async function tapNode(ctx, onSamples) {
  if (ctx.audioWorklet && window.AudioWorkletNode) {
    const url = URL.createObjectURL(new Blob([TAP_WORKLET], { type: "text/javascript" }));
    try {
      await ctx.audioWorklet.addModule(url);
      const node = new AudioWorkletNode(ctx, "sovereign-tap", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
      node.port.onmessage = (m) => onSamples(m.data);
      return node;
    } catch (err) {
      console.warn("AudioWorklet unavailable, capturing with a ScriptProcessorNode:", err); // a CSP without blob: workers
    } finally { URL.revokeObjectURL(url); }
  }
  const node = ctx.createScriptProcessor(4096, 1, 1); // one input channel: the browser mixes to mono
  node.onaudioprocess = (ev) => onSamples(new Float32Array(ev.inputBuffer.getChannelData(0)));
  return node;
}
function recordedS() { return rec.rate ? rec.frames / rec.rate : 0; }
function pttView() {
  const b = $("voice-ptt"), on = rec.state === "starting" || rec.state === "recording";
  b.setAttribute("aria-pressed", String(on));
  b.classList.toggle("recording", on);
  b.disabled = rec.state === "sending" || !voice.enabled;
  b.dataset.state = rec.state;
  b.dataset.recordedS = recordedS().toFixed(2);
  b.textContent = rec.state === "starting" ? "Starting…" : rec.state === "recording"
    ? `● Recording ${recordedS().toFixed(1)} s` : rec.state === "sending" ? "Sending…" : "● Hold to talk";
}
function releaseMic() {
  clearInterval(rec.ticker); rec.ticker = null;
  rec.nodes.forEach((n) => { try { n.disconnect(); } catch { /* already */ } });
  rec.nodes = [];
  rec.stream?.getTracks().forEach((t) => t.stop());
  rec.stream = null;
  if (rec.ctx) rec.ctx.close().catch(() => {});
  rec.ctx = null;
}
function onSamples(x) {
  if (rec.state !== "recording") return;
  rec.chunks.push(x);
  rec.frames += x.length;
  if (rec.frames >= MAX_RECORDING_S * rec.rate) { rec.capped = true; stopRecording(); }
}
async function startRecording() {
  if (rec.state !== "idle") return;
  Object.assign(rec, { state: "starting", chunks: [], frames: 0, rate: 0, stopWanted: false, capped: false });
  voiceStatus("asking for the microphone…");
  pttView();
  try {
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) throw Object.assign(new Error("not a secure context"), { name: "InsecureContext" });
    // The graph first (within the press's user activation), the microphone last: nothing it
    // hears is lost while the worklet loads.
    rec.ctx = new (window.AudioContext || window.webkitAudioContext)();
    if (rec.ctx.state === "suspended") await rec.ctx.resume();
    rec.rate = rec.ctx.sampleRate;
    const tap = await tapNode(rec.ctx, onSamples), mute = rec.ctx.createGain();
    mute.gain.value = 0; // the tap is pulled through the graph, and nothing is heard
    tap.connect(mute); mute.connect(rec.ctx.destination);
    rec.nodes = [tap, mute];
    rec.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const source = rec.ctx.createMediaStreamSource(rec.stream);
    source.connect(tap);
    rec.nodes.push(source);
    if (rec.stopWanted) {
      // Released before the microphone was open (a permission prompt, say): nothing was said yet.
      releaseMic();
      rec.state = "idle";
      voiceStatus("The microphone is ready: hold the button while you speak.");
      return;
    }
    rec.state = "recording";
    rec.ticker = setInterval(pttView, 100);
    voiceStatus(rec.pointer === null ? "recording: press again to send" : "recording: release to send");
  } catch (err) {
    releaseMic();
    rec.state = "idle";
    voiceStatus(micMessage(err), true);
  } finally { pttView(); }
}
async function stopRecording() {
  if (rec.state === "starting") { rec.stopWanted = true; return; }
  if (rec.state !== "recording") return;
  rec.state = "sending";
  const chunks = rec.chunks, rate = rec.rate, capped = rec.capped;
  releaseMic();
  pttView();
  try {
    const pcm = resample(concat(chunks), rate, TARGET_RATE);
    if (pcm.length < TARGET_RATE / 5) { voiceStatus("Too short: hold the button while you speak.", true); return; }
    voiceStatus(`${capped ? `stopped at the ${MAX_RECORDING_S} s limit; ` : ""}sending ${(pcm.length / TARGET_RATE).toFixed(1)} s of audio…`);
    const { status, doc } = await api("POST", "/api/voice", { data: await base64(wavFile(pcm, TARGET_RATE)) });
    if (status === 200) { upsertUtterance(doc); voiceStatus(capped ? `stopped at the ${MAX_RECORDING_S} s limit and sent` : ""); }
    else voiceStatus(`the hub refused the recording: ${doc.error?.message || `HTTP ${status}`}`, true);
  } catch (err) {
    voiceStatus(`the recording could not be sent: ${err.message || err}`, true);
  } finally { rec.state = "idle"; pttView(); }
}
function concat(chunks) {
  const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}
// Low-pass (a Blackman-windowed sinc below the new Nyquist frequency), then linear interpolation
// between the filtered neighbours of each output instant; upsampling only interpolates.
function resample(x, from, to) {
  if (from === to || !x.length) return x;
  const ratio = from / to, n = Math.floor(x.length / ratio), out = new Float32Array(n);
  let taps = [1], half = 0;
  if (ratio > 1) {
    half = Math.ceil(4 * ratio);
    const fc = 0.45 / ratio; // cutoff, cycles per input sample: 0.9 of the output's Nyquist
    taps = [];
    let sum = 0;
    for (let k = -half; k <= half; k++) {
      const sinc = k === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * k) / (Math.PI * k);
      const w = 0.42 + 0.5 * Math.cos(Math.PI * k / (half + 1)) + 0.08 * Math.cos(2 * Math.PI * k / (half + 1));
      taps.push(sinc * w); sum += sinc * w;
    }
    taps = taps.map((t) => t / sum);
  }
  const filtered = (i) => {
    let s = 0;
    for (let k = -half; k <= half; k++) { const j = i + k; if (j >= 0 && j < x.length) s += taps[k + half] * x[j]; }
    return s;
  };
  for (let i = 0; i < n; i++) {
    const pos = i * ratio, j = Math.floor(pos), f = pos - j;
    out[i] = f === 0 || j + 1 >= x.length ? filtered(j) : (1 - f) * filtered(j) + f * filtered(j + 1);
  }
  return out;
}
function wavFile(pcm, rate) {
  const buf = new ArrayBuffer(44 + pcm.length * 2), v = new DataView(buf);
  const ascii = (at, s) => { for (let i = 0; i < s.length; i++) v.setUint8(at + i, s.charCodeAt(i)); };
  ascii(0, "RIFF"); v.setUint32(4, 36 + pcm.length * 2, true); ascii(8, "WAVE");
  ascii(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true); // PCM, mono
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true);
  ascii(36, "data"); v.setUint32(40, pcm.length * 2, true);
  for (let i = 0; i < pcm.length; i++) {
    const s = Math.max(-1, Math.min(1, pcm[i]));
    v.setInt16(44 + 2 * i, s < 0 ? Math.round(s * 32768) : Math.round(s * 32767), true);
  }
  return new Blob([buf], { type: "audio/wav" });
}
function base64(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).slice(String(r.result).indexOf(",") + 1));
    r.onerror = () => reject(r.error || new Error("could not read the recording"));
    r.readAsDataURL(blob);
  });
}
const pttButton = $("voice-ptt");
// Held: recording while the button is down, sent on release. A press shorter than HOLD_MS is a
// tap: recording goes on until the next press. Keyboard clicks (Enter, Space) toggle.
pttButton.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0 || rec.state === "sending") return;
  ev.preventDefault();
  if (rec.state !== "idle") { rec.pointer = null; stopRecording(); return; }
  try { pttButton.setPointerCapture(ev.pointerId); } catch { /* not capturable: pointerup may come elsewhere */ }
  rec.pointer = ev.pointerId; rec.downAt = performance.now();
  startRecording();
});
function releasePtt(ev) {
  if (rec.pointer !== ev.pointerId) return;
  rec.pointer = null;
  if (ev.type === "pointercancel" || performance.now() - rec.downAt >= HOLD_MS) stopRecording();
  else if (rec.state === "recording") voiceStatus("recording: press again to send");
}
pttButton.addEventListener("pointerup", releasePtt);
pttButton.addEventListener("pointercancel", releasePtt);
pttButton.addEventListener("contextmenu", (ev) => ev.preventDefault()); // a long touch is a hold, not a menu
pttButton.addEventListener("click", (ev) => {
  if (ev.detail !== 0) return; // a pointer's click: handled by pointerdown/pointerup
  if (rec.state === "idle") startRecording(); else stopRecording();
});

// -- memory -----------------------------------------------------------------------------------
// Search of the hub's index of notes and repositories (GET /api/search), its status
// (GET /api/memory) and "Scan now" (POST /api/memory/reindex). Text from the hub is text.
// MAX_URL_CHARS: aiohttp's request line limit (8190 bytes) less "GET " and " HTTP/1.1".
const MEMORY_K = 10, SNIPPET_CHARS = 200, MAX_URL_CHARS = 8000, MEMORY_POLL_MS = 30000, MEMORY_BUSY_MS = 2000, MEMORY_BUSY_FOR_MS = 120000;
const memory = { seq: 0, chunks: null, scanAt: -Infinity, busyTimer: null };
const KIND_NAMES = { note: "notes", code: "code", commit: "commit messages" };

function memoryStatus(text, isError = false) {
  $("memory-status").textContent = text || "";
  $("memory-status").classList.toggle("error", Boolean(isError && text));
}
function hubMessage(status, doc) { return doc?.error?.message || `HTTP ${status}`; }
function quoted(q) { return `“${q.length > 60 ? q.slice(0, 59) + "…" : q}”`; }
// The chunk's text without its first line (the note title and heading path, shown above it).
function snippet(text) {
  const s = String(text ?? ""), nl = s.indexOf("\n");
  const body = (nl >= 0 ? s.slice(nl + 1) : s).replace(/\s+/g, " ").trim();
  return body.length > SNIPPET_CHARS ? body.slice(0, SNIPPET_CHARS - 1).trimEnd() + "…" : body;
}
function memoryHit(h) {
  const lines = !(Number(h.line_start) > 0) ? "" : h.line_end > h.line_start ? `lines ${h.line_start}-${h.line_end}` : `line ${h.line_start}`;
  const cosine = h.cosine === null || h.cosine === undefined ? "keywords only" : `cosine ${num(h.cosine, 2)}`;
  const why = [`fused rank score ${h.score}`, h.cosine === null || h.cosine === undefined ? "no vector match" : `cosine ${h.cosine}`,
    h.keyword_rank ? `keyword rank ${h.keyword_rank}` : "no keyword match"].join(" · ");
  const text = snippet(h.text);
  return el("li", { "data-testid": "memory-hit", "data-kind": h.kind, "data-path": h.path },
    el("div", { class: "memory-head" },
      el("span", { class: "memory-source", "data-testid": "memory-hit-source" }, String(h.source ?? "")),
      el("code", { class: "memory-path", "data-testid": "memory-hit-path" }, String(h.path ?? "")),
      el("span", { class: `badge kind ${h.kind}` }, String(h.kind ?? "")),
      lines ? el("span", { class: "memory-lines", "data-testid": "memory-hit-lines" }, lines) : null,
      el("span", { class: "memory-score", "data-testid": "memory-hit-score", title: why }, `score ${num(h.score, 2)} · ${cosine}`)),
    h.heading ? el("div", { class: "memory-heading", "data-testid": "memory-hit-heading" }, String(h.heading)) : null,
    text ? el("p", { class: "memory-snippet", "data-testid": "memory-hit-text" }, text) : null,
    (h.tags || []).length ? el("div", { class: "memory-tags" }, h.tags.map((t) => `#${t}`).join(" ")) : null);
}
async function searchMemory(q, kind) {
  const seq = ++memory.seq, button = $("memory-form").querySelector("button[type=submit]");
  const params = new URLSearchParams({ q, k: String(MEMORY_K) });
  if (kind) params.set("kind", kind);
  const path = `/api/search?${params}`;
  if (path.length > MAX_URL_CHARS) { // the HTTP server reads no longer request line, and answers without JSON
    memoryStatus(`not searched: the query is too long once encoded in the address (${path.length} characters; up to ${MAX_URL_CHARS}): shorten it`, true);
    $("memory-results").replaceChildren();
    button.disabled = false;
    return;
  }
  button.disabled = true;
  memoryStatus(`searching for ${quoted(q)}…`);
  try {
    const { status, doc } = await api("GET", path);
    if (seq !== memory.seq) return; // a newer search has been sent
    const list = $("memory-results");
    if (status !== 200) {
      list.replaceChildren();
      memoryStatus(`not searched: ${hubMessage(status, doc)}`, true);
      return;
    }
    const hits = doc.results || [];
    if (!hits.length) {
      const why = memory.chunks === 0 ? " (nothing is indexed yet)" : kind ? ` among ${KIND_NAMES[kind] || kind}` : "";
      list.replaceChildren(el("li", { class: "memory-empty", "data-testid": "memory-empty" }, `No matches${why}`));
      memoryStatus(`No matches for ${quoted(doc.query ?? q)}${why}`);
    } else {
      list.replaceChildren(...hits.map(memoryHit));
      memoryStatus(`${hits.length} result${hits.length === 1 ? "" : "s"} for ${quoted(doc.query ?? q)} in ${num(doc.took_ms)} ms`);
    }
  } catch (err) {
    if (seq === memory.seq) memoryStatus(`could not reach the hub: ${err.message || err}`, true);
  } finally {
    if (seq === memory.seq) button.disabled = false;
    refreshMemory();
  }
}
$("memory-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("memory-query").value.trim();
  if (!q) { memoryStatus("type what to look for first", true); $("memory-query").focus(); return; }
  searchMemory(q, $("memory-kind").value);
});
// The kind filter applies at once to the query shown.
$("memory-kind").addEventListener("change", () => {
  const q = $("memory-query").value.trim();
  if (q && $("memory-results").children.length) searchMemory(q, $("memory-kind").value);
});

function sourceText(s) {
  const parts = [`${s.state}`, `${s.files ?? 0} file${s.files === 1 ? "" : "s"}`, `${s.chunks ?? 0} chunk${s.chunks === 1 ? "" : "s"}`];
  if (s.pending_chunks) parts.push(`${s.pending_chunks} waiting to be embedded`);
  if (s.skipped?.total) parts.push(`${s.skipped.total} skipped`);
  return `${s.name}: ${parts.join(", ")}`;
}
function renderMemory(doc) {
  const line = $("memory-summary"), sources = doc.sources || [];
  memory.chunks = typeof doc.chunks === "number" ? doc.chunks : sources.length ? sources.reduce((n, s) => n + (s.chunks ?? 0), 0) : 0;
  const kids = [];
  if (!doc.enabled) kids.push(el("span", { class: "warn" }, "memory is off (memory.enabled = false in hub.toml)"));
  else if (!sources.length) kids.push("no sources: add [[memory.vaults]] or [[memory.repos]] to hub.toml");
  sources.forEach((s, i) => {
    if (i) kids.push(" · ");
    const skipped = (s.skipped?.first || []).slice(0, 5).map((x) => `${x.path}: ${x.reason}`).join("\n");
    kids.push(el("span", { class: `memory-src ${s.state}`, "data-testid": "memory-source", "data-name": s.name, "data-state": s.state,
      title: [`${s.kind} at ${s.root}`, s.last_scan ? `last scanned ${new Date(s.last_scan * 1000).toLocaleString()}` : "not scanned yet",
        skipped ? `skipped:\n${skipped}` : ""].filter(Boolean).join("\n") }, sourceText(s)));
    if (s.error) kids.push(el("span", { class: "warn" }, ` (${s.error})`));
  });
  if (doc.error) kids.push(el("span", { class: "warn", "data-testid": "memory-error" }, ` · error: ${doc.error}`));
  if (doc.model) kids.push(el("span", { class: "memory-model" }, ` · model ${doc.model}`));
  line.replaceChildren(...kids);
  return sources.some((s) => s.state === "scanning" || s.state === "embedding");
}
async function refreshMemory() {
  try {
    const { status, doc } = await api("GET", "/api/memory");
    if (status !== 200) { $("memory-summary").textContent = `index status: ${hubMessage(status, doc)}`; return; }
    const busy = renderMemory(doc);
    // Just after "Scan now": follow the scan closely (a few seconds for it to start, then until
    // every source is idle again, for at most MEMORY_BUSY_FOR_MS), else every MEMORY_POLL_MS.
    clearTimeout(memory.busyTimer);
    const since = Date.now() - memory.scanAt;
    if (since < MEMORY_BUSY_FOR_MS && (busy || since < 3 * MEMORY_BUSY_MS)) memory.busyTimer = setTimeout(refreshMemory, MEMORY_BUSY_MS);
  } catch (err) {
    $("memory-summary").textContent = `index status: could not reach the hub (${err.message || err})`;
  }
}
$("memory-reindex").addEventListener("click", async (ev) => {
  const b = ev.currentTarget;
  b.disabled = true;
  try {
    const { status, doc } = await api("POST", "/api/memory/reindex");
    if (status === 202) {
      const names = doc.scanning || [];
      memoryStatus(names.length ? `Scanning ${names.join(", ")} now` : "Nothing to scan");
      memory.scanAt = Date.now();
    } else memoryStatus(`not scanned: ${hubMessage(status, doc)}`, true);
  } catch (err) {
    memoryStatus(`could not reach the hub: ${err.message || err}`, true);
  } finally { b.disabled = false; refreshMemory(); }
});
document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshMemory(); });

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
      if (voice.hello) refreshVoice(); // reconnected: what was said meanwhile
      voice.hello = true;
    } else if (type === "device") { state.devices.set(data.id, data); queueRender(); queuePower(); }
    else if (type === "device_removed") { state.devices.delete(data.id); queueRender(); queuePower(); }
    else if (type === "energy") renderEnergy(data);
    else if (type === "task") { addTask(data); state.feed++; }
    else if (type === "voice.utterance") upsertUtterance(data);
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
  refreshCosts(); refreshRules(); refreshPower(); loadRateable(); refreshVoice(); refreshMemory();
});
$("device-filter").addEventListener("input", (ev) => { state.filter = ev.target.value; state.page = 0; queueRender(); });
$("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); queueRender(); });
$("next").addEventListener("click", () => { state.page++; queueRender(); });
loadRateable().then(connect);
refreshCosts(); refreshRules(); refreshPower(); refreshVoice(); pttView();
setInterval(() => { refreshCosts(); refreshRules(); refreshPower(); }, 10000);
refreshMemory();
setInterval(() => { if (!document.hidden) refreshMemory(); }, MEMORY_POLL_MS);
