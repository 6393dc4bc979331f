// Sluice dashboard: polls the REST API of the same origin once a second and renders
// servers, backends and charts. No framework and no build step, so the binary can embed
// it as is and it works without network access.
"use strict";

const POLL_MS = 1000;
const WINDOW_MS = 5 * 60 * 1000;
const MARKS = 20;
const TOKEN_KEY = "sluice.api-token";

const $ = (sel, root = document) => root.querySelector(sel);
const enc = encodeURIComponent;

// name -> { section, rows: Map(key -> tr), samples: [{ t, active, rate }] }
const servers = new Map();
// Each poll and each change takes a number; a poll that started before the last change
// completed may carry the old state and is dropped instead of flickering back to it.
let seq = 0;
let changedAt = 0;
let waitingForToken = false;
let lastUpdate = 0;
let chain = Promise.resolve();

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "cannot reach the API (" + e.message + ")");
  }
  const challenge = (res.headers.get("WWW-Authenticate") || "").trim().toLowerCase();
  if (res.status === 401 && challenge.startsWith("bearer")) {
    // Only forget the token this request carried: a newer one typed meanwhile stays.
    if (sessionStorage.getItem(TOKEN_KEY) === token) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      askForToken(token ? "That token was refused." : "This API needs a token.");
    }
    throw new ApiError(401, "waiting for an API token");
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    if (res.ok) throw new ApiError(res.status, "the API answered with something other than JSON");
  }
  if (!res.ok) {
    const message = (data && data.error) || text.trim() || res.statusText || "request failed";
    throw new ApiError(res.status, message, data && data.field);
  }
  return data;
}

function askForToken(note) {
  waitingForToken = true;
  const form = $("#token-form");
  $("#token-note").textContent = note;
  if (form.hidden) {
    form.hidden = false;
    $("#token").focus();
  }
  setStatus("waiting for an API token", true);
}

// Polls run one after another, never overlapping.
function refresh() {
  chain = chain.then(pollOnce, pollOnce);
  return chain;
}

function loop() {
  refresh().then(() => setTimeout(loop, POLL_MS));
}

async function pollOnce() {
  if (waitingForToken) return;
  const started = ++seq;
  try {
    const list = (await api("GET", "/servers")) || {};
    const names = Object.keys(list).sort();
    const backends = await Promise.all(
      names.map((name) => api("GET", "/servers/" + enc(name) + "/backends")),
    );
    // Only servers with client protection track clients.
    const clients = await Promise.all(
      names.map((name) =>
        protects(list[name]) ? api("GET", "/servers/" + enc(name) + "/clients?top=50") : null,
      ),
    );
    const bgp = await api("GET", "/bgp");
    if (started < changedAt) return;
    lastUpdate = Date.now();
    render(list, names, backends, clients, lastUpdate);
    renderBgp(bgp, list, names);
    setStatus("live, updated " + clock(lastUpdate), false);
  } catch (e) {
    if (waitingForToken) return;
    const since = lastUpdate ? "; last update " + clock(lastUpdate) : "";
    setStatus(describe(e) + since, true);
  }
}

function describe(e) {
  if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
  let text = e.status ? e.status + ": " + e.message : e.message;
  if (e.field) text += " (field: " + e.field + ")";
  return text;
}

function setStatus(text, bad) {
  const status = $("#status");
  setText(status, text);
  status.classList.toggle("bad", bad);
}

function showError(text) {
  $("#error-text").textContent = text;
  $("#error").hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error-text").textContent = "";
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// Whether a server's configuration sets a per-client limit (and so tracks clients).
function protects(config) {
  if (!config) return false;
  const keys = ["max_connections_per_client", "connection_rate_per_client", "datagram_rate_per_client", "byte_rate_per_client"];
  return keys.some((k) => config[k] !== undefined && config[k] !== 0 && config[k] !== "0");
}

function render(list, names, backendLists, clientLists, now) {
  for (const [name, server] of servers) {
    if (!Object.prototype.hasOwnProperty.call(list, name)) {
      server.section.remove();
      servers.delete(name);
    }
  }
  const main = $("#servers");
  names.forEach((name, i) => {
    let server = servers.get(name);
    if (!server) {
      server = createServer(name);
      servers.set(name, server);
    }
    // Moving a node that holds focus would blur it, so only move what is out of place.
    if (main.children[i] !== server.section) main.insertBefore(server.section, main.children[i] || null);
    updateServer(server, list[name] || {}, Array.isArray(backendLists[i]) ? backendLists[i] : [], now);
    updateClients(server, Array.isArray(clientLists[i]) ? clientLists[i] : null);
  });
  $("#no-servers").hidden = names.length > 0;
}

// What BGP announces, each neighbour's session, and beside each server whether its
// `announce` prefixes are announced now.
function renderBgp(bgp, list, names) {
  const neighbors = bgp && Array.isArray(bgp.neighbors) ? bgp.neighbors : [];
  const announced = new Set(bgp && Array.isArray(bgp.announced) ? bgp.announced : []);
  $("#bgp").hidden = neighbors.length === 0;
  setText($("#bgp-announced"), announced.size ? [...announced].join(", ") : "nothing");
  const tbody = $("#bgp-neighbors");
  while (tbody.rows.length > neighbors.length) tbody.deleteRow(-1);
  neighbors.forEach((n, i) => {
    const row = tbody.rows[i] || tbody.insertRow();
    while (row.cells.length < 6) row.insertCell();
    const since = n.since ? clock(n.since * 1000) : "—";
    const cells = [n.neighbor, String(n.remote_as), n.state, since,
      (n.announced || []).join(", ") || "—", n.last_error || "—"];
    cells.forEach((text, c) => setText(row.cells[c], String(text)));
    row.cells[2].className = n.state === "established" ? "ok" : "bad";
  });
  names.forEach((name) => {
    const server = servers.get(name);
    const prefixes = (list[name] && list[name].announce) || [];
    if (!server) return;
    const item = $(".announce-item", server.section);
    item.hidden = prefixes.length === 0;
    if (prefixes.length) {
      const up = prefixes.every((p) => announced.has(p));
      setText($(".announce", server.section), prefixes.join(", ") + (up ? " (announced)" : " (withdrawn)"));
    }
  });
}

function createServer(name) {
  const section = $("#server-template").content.firstElementChild.cloneNode(true);
  section.dataset.server = name;
  $(".name", section).textContent = name;
  return { section, rows: new Map(), samples: [] };
}

function updateServer(server, config, backends, now) {
  const s = server.section;
  // One address, or a list of them (several binds, port ranges).
  const bind = Array.isArray(config.bind) ? config.bind.join(", ") : config.bind;
  setText($(".bind", s), String(bind ?? "—"));
  setText($(".protocol", s), String(config.protocol ?? "tcp"));
  setText($(".balance", s), String(config.balance ?? "weight"));

  let active = 0;
  let rate = 0;
  const tbody = $("tbody", s);
  const seen = new Set();
  backends.forEach((b, i) => {
    const key = String(b.key);
    seen.add(key);
    let row = server.rows.get(key);
    if (!row) {
      row = $("#backend-template").content.firstElementChild.cloneNode(true);
      row.dataset.backend = key;
      server.rows.set(key, row);
    }
    if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] || null);
    updateRow(row, b);
    const stats = b.stats || {};
    active += Number(stats.active_connections) || 0;
    rate += Number(stats.bandwidth) || 0;
  });
  for (const [key, row] of server.rows) {
    if (!seen.has(key)) {
      row.remove();
      server.rows.delete(key);
    }
  }
  $(".no-backends", s).hidden = backends.length > 0;
  // Every backend down (failed check or ejected): where `all_down` sends clients.
  const allDown = backends.length > 0 && backends.every((b) => b.health === "down" || b.ejected != null);
  const fallback = {
    close: "new clients are closed",
    any: "new clients are tried on any backend (all_down = \"any\")",
    last: "new clients go to the backends up most recently (all_down = \"last\")",
  };
  const banner = $(".all-down", s);
  banner.hidden = !allDown;
  if (allDown) setText(banner, "Every backend is down: " + (fallback[config.all_down] || fallback.close) + ".");
  // Tiers below min_healthy_percent: all their enabled backends count as up.
  const panicking = panickingTiers(backends, Number(config.min_healthy_percent) || 0);
  const panicBanner = $(".panic", s);
  panicBanner.hidden = allDown || panicking.length === 0;
  if (!panicBanner.hidden) {
    setText(
      panicBanner,
      "Below min_healthy_percent (" + config.min_healthy_percent + " %): " + panicking.join(", ") +
        " — all enabled backends there take clients, up or not.",
    );
  }
  setText($(".sum-active", s), count(active));
  setText($(".sum-rate", s), bytes(rate) + "/s");

  server.samples.push({ t: now, active, rate });
  while (server.samples.length && server.samples[0].t < now - WINDOW_MS) server.samples.shift();
  drawChart($(".chart-active", s), server.samples, "active", now, count);
  drawChart($(".chart-rate", s), server.samples, "rate", now, (v) => bytes(v) + "/s");
}

// The clients client protection holds back now; hidden for a server without it.
function updateClients(server, clients) {
  const box = $(".clients", server.section);
  box.hidden = clients === null;
  if (clients === null) return;
  const limited = clients.filter((c) => c.limited || c.blocked_seconds);
  const signature = limited.map((c) => c.client + c.limited + c.open + c.rate + c.blocked_seconds).join();
  const list = $(".limited", box);
  if (list.dataset.signature !== signature) {
    list.dataset.signature = signature;
    list.replaceChildren(
      ...limited.map((c) => {
        const item = document.createElement("li");
        item.dataset.client = c.client;
        item.textContent =
          c.client + " — " + (c.limited || "within its limits") + "; " + count(c.open) + " open, " + Number(c.rate).toFixed(1) + " new/s" +
          (c.blocked_seconds ? "; blocked for flooding, " + Math.ceil(c.blocked_seconds) + " s left" : "");
        return item;
      }),
    );
  }
  $(".no-limited", box).hidden = limited.length > 0;
}

// The tiers (by backup flag and priority) with fewer than `min` per cent of their
// enabled backends up, as the server judges them (`min_healthy_percent`).
function panickingTiers(backends, min) {
  if (!min) return [];
  const tiers = new Map();
  for (const b of backends) {
    if (adminState(b) !== "enabled") continue;
    const name = (b.backup ? "backup " : "") + "priority " + (b.priority ?? 1);
    const tier = tiers.get(name) || { up: 0, enabled: 0 };
    tier.enabled += 1;
    if (b.health !== "down" && b.ejected == null) tier.up += 1;
    tiers.set(name, tier);
  }
  return [...tiers].filter(([, t]) => t.up * 100 < min * t.enabled).map(([name]) => name);
}

// The API names draining "draining"; backend lines say "drain". Both mean the same.
function adminState(b) {
  return b.state === "drain" ? "draining" : String(b.state || "enabled");
}

// One word for the badge: the operator's choice wins over health, because a disabled or
// draining backend gets no new connections whatever its health.
function shownState(b) {
  const admin = adminState(b);
  if (admin !== "enabled") return admin;
  if (b.health === "down") return "down";
  return b.ejected != null ? "ejected" : "up";
}

function updateRow(row, b) {
  const stats = b.stats || {};
  const admin = adminState(b);
  const shown = shownState(b);
  row.dataset.state = admin;
  row.dataset.health = String(b.health || "");

  setText($(".addr", row), String(b.key));
  const tags = [];
  if (b.backup) tags.push("backup");
  if (b.priority != null && b.priority !== 1) tags.push("priority " + b.priority);
  if (b.max_connections) tags.push("max " + b.max_connections);
  if (b.sni) tags.push("sni " + b.sni);
  if (stats.connect_failures) tags.push(count(stats.connect_failures) + " connect failures");
  if (b.ejected != null) tags.push("ejected, back in " + Math.ceil(Number(b.ejected) / 1000) + " s");
  if (b.warming != null) tags.push("warming up, " + Number(b.warming) + " % of its share");
  setText($(".tags", row), tags.join(" · "));

  const badge = $(".state", row);
  setText(badge, shown);
  badge.className = "badge state " + shown;
  badge.title =
    "admin state: " + admin + ", health: " + (b.health || "unknown") + (b.ejected != null ? ", ejected" : "");

  const input = $("input.weight", row);
  if (document.activeElement !== input && !input.dataset.dirty) input.value = String(b.weight);
  input.dataset.current = String(b.weight);

  setText($(".active", row), count(stats.active_connections));
  setText($(".total", row), count(stats.total_connections));
  setText($(".bytes-to", row), bytes(stats.bytes_to_backend));
  setText($(".bytes-from", row), bytes(stats.bytes_from_backend));
  setText($(".rate", row), bytes(stats.bandwidth) + "/s");

  const history = Array.isArray(b.health_history) ? b.health_history.slice(-MARKS) : [];
  // The history holds transitions only; without any, one mark still shows the health.
  const shownHistory = history.length ? history : [{ time_ms: null, up: b.health !== "down" }];
  const signature = shownHistory.map((h) => h.time_ms + (h.up ? "u" : "d")).join();
  const marks = $(".marks", row);
  // Rebuilt only on change, so an open tooltip is not torn down every second.
  if (marks.dataset.signature !== signature) {
    marks.dataset.signature = signature;
    marks.replaceChildren(
      ...shownHistory.map((h) => {
        const mark = document.createElement("i");
        const word = h.up ? "up" : "down";
        mark.className = "mark " + word;
        mark.title =
          h.time_ms == null ? word + ", no change seen yet" : word + " since " + new Date(h.time_ms).toLocaleString();
        return mark;
      }),
    );
  }
  setText(
    $(".checks", row),
    count(stats.checks_passed) + " passed, " + count(stats.checks_failed) + " failed",
  );

  $('button[data-action="drain"]', row).disabled = admin === "draining";
  $('button[data-action="disable"]', row).disabled = admin === "disabled";
  $('button[data-action="enable"]', row).disabled = admin === "enabled";
}

const ACTIONS = {
  drain: { body: { state: "drain" }, verb: "Drain", detail: "it takes no new connections; open ones finish" },
  disable: { body: { state: "disabled" }, verb: "Disable", detail: "it takes no new connections" },
  enable: { body: { state: "enabled" }, verb: "Enable", detail: "it takes connections again" },
};

async function change(serverName, key, body, question) {
  if (!window.confirm(question)) return;
  const path = "/servers/" + enc(serverName) + "/backends/" + enc(key);
  try {
    const updated = await api("PATCH", path, body);
    changedAt = ++seq;
    clearError();
    const server = servers.get(serverName);
    const row = server && server.rows.get(key);
    if (row && updated && typeof updated === "object" && updated.key === key) updateRow(row, updated);
    if (row && "weight" in body) delete $("input.weight", row).dataset.dirty;
  } catch (e) {
    showError(serverName + " " + key + ": " + describe(e));
  }
  refresh();
}

function where(el) {
  const row = el.closest("tr[data-backend]");
  const section = el.closest("section[data-server]");
  return row && section ? { server: section.dataset.server, key: row.dataset.backend, row } : null;
}

function onClick(event) {
  const button = event.target.closest("button[data-action]");
  const action = button && ACTIONS[button.dataset.action];
  const at = button && where(button);
  if (!action || !at) return;
  change(at.server, at.key, action.body, action.verb + " " + at.key + " on " + at.server + "? " + capital(action.detail) + ".");
}

function onSubmit(event) {
  if (!event.target.matches(".weight-form")) return;
  event.preventDefault();
  const at = where(event.target);
  if (!at) return;
  const input = $("input.weight", at.row);
  const weight = Number(input.value);
  if (!Number.isInteger(weight) || weight < 1) {
    showError(at.server + " " + at.key + ": the weight must be a whole number, 1 or more");
    return;
  }
  change(at.server, at.key, { weight }, "Set the weight of " + at.key + " on " + at.server + " to " + weight + "?");
}

function onInput(event) {
  if (event.target.matches("input.weight")) event.target.dataset.dirty = "1";
}

// Leaving the field unchanged hands it back to the live value.
function onBlur(event) {
  const input = event.target;
  if (input.matches && input.matches("input.weight") && input.value === input.dataset.current) delete input.dataset.dirty;
}

function drawChart(canvas, samples, field, now, format) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  const ratio = window.devicePixelRatio || 1;
  const pw = Math.round(width * ratio);
  const ph = Math.round(height * ratio);
  if (canvas.width !== pw || canvas.height !== ph) {
    canvas.width = pw;
    canvas.height = ph;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const style = getComputedStyle(canvas);
  const color = style.color;
  const muted = getComputedStyle(document.body).getPropertyValue("--muted").trim() || "#888";
  const pad = { left: 6, right: 6, top: 18, bottom: 16 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const max = niceCeil(samples.reduce((m, s) => Math.max(m, s[field]), 0), field === "rate" ? 1024 : 1000);
  const x = (t) => pad.left + ((t - (now - WINDOW_MS)) / WINDOW_MS) * plotW;
  const y = (v) => pad.top + (1 - v / max) * plotH;

  ctx.strokeStyle = muted;
  ctx.globalAlpha = 0.25;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const v of [0, max / 2, max]) {
    const yy = Math.round(y(v)) + 0.5;
    ctx.moveTo(pad.left, yy);
    ctx.lineTo(width - pad.right, yy);
  }
  ctx.stroke();
  ctx.globalAlpha = 1;

  ctx.fillStyle = muted;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "alphabetic";
  ctx.textAlign = "left";
  ctx.fillText("max " + format(max), pad.left, 12);
  ctx.fillText("−5 min", pad.left, height - 4);
  ctx.textAlign = "right";
  ctx.fillText("now", width - pad.right, height - 4);
  const last = samples[samples.length - 1];
  if (last) {
    ctx.fillStyle = color;
    ctx.font = "600 11px system-ui, sans-serif";
    ctx.fillText(format(last[field]), width - pad.right, 12);
  }

  // Runs of samples without a gap (a failed poll breaks the line rather than bridging it).
  const runs = [];
  let run = [];
  for (const s of samples) {
    if (run.length && s.t - run[run.length - 1].t > 3 * POLL_MS) {
      runs.push(run);
      run = [];
    }
    run.push(s);
  }
  if (run.length) runs.push(run);

  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 1.5;
  ctx.lineJoin = "round";
  for (const r of runs) {
    ctx.beginPath();
    r.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s[field])) : ctx.moveTo(x(s.t), y(s[field]))));
    if (r.length === 1) ctx.arc(x(r[0].t), y(r[0][field]), 1.5, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.lineTo(x(r[r.length - 1].t), y(0));
    ctx.lineTo(x(r[0].t), y(0));
    ctx.closePath();
    ctx.globalAlpha = 0.15;
    ctx.fill();
    ctx.globalAlpha = 1;
  }
}

// The smallest 1, 2 or 5 times a power of ten (in units of `base`) at or above v.
function niceCeil(v, base) {
  if (!(v > 0)) return base === 1024 ? 1024 : 1;
  let unit = 1;
  while (v / unit >= base) unit *= base;
  const m = v / unit;
  const p = Math.pow(10, Math.floor(Math.log10(m)));
  const step = [1, 2, 5, 10].find((n) => n * p >= m - 1e-9);
  return step * p * unit;
}

function count(n) {
  return (Number(n) || 0).toLocaleString("en-US");
}

function bytes(n) {
  let v = Number(n) || 0;
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString();
}

function capital(s) {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function start() {
  const main = $("#servers");
  main.addEventListener("click", onClick);
  main.addEventListener("submit", onSubmit);
  main.addEventListener("input", onInput);
  main.addEventListener("focusout", onBlur);
  $("#error-close").addEventListener("click", clearError);
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("#token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#token").value = "";
    $("#token-form").hidden = true;
    waitingForToken = false;
    setStatus("connecting…", false);
    refresh();
  });
  // Charts follow the width of the window without waiting for the next poll.
  window.addEventListener("resize", () => {
    for (const server of servers.values()) {
      const now = lastUpdate || Date.now();
      drawChart($(".chart-active", server.section), server.samples, "active", now, count);
      drawChart($(".chart-rate", server.section), server.samples, "rate", now, (v) => bytes(v) + "/s");
    }
  });
  loop();
}

start();
