// xdpmesh dashboard: reads the admin API it is served by (same origin) and renders it.
// Plain JavaScript, no framework, no external resources (CSP default-src 'self').
// Every string from the gateway enters the DOM through textContent or an attribute, never as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const INTERVAL_MS = Math.max(0.5, Number(params.get("interval")) || 2) * 1000;
const WINDOW_MS = Math.max(1, Number(params.get("window")) || 30) * 1000;
const TAP_ON = params.get("tap") !== "off";
const TAP_SECONDS = Math.max(1, Number(params.get("tap_seconds")) || 30);
const TAP_LIMIT = 1000;
const TAP_ROWS = 50;
const LIFETIME_WARN = 0.2;
const MIN_WINDOW = 10;

// ------------------------------------------------------------------------------------------
// Prometheus text format 0.0.4.

// Parses the exposition text into samples {name, labels, value}; HELP and TYPE lines fill
// `types` (family -> type). Malformed lines are skipped.
function parseProm(text) {
  const samples = [];
  const types = new Map();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    if (line.startsWith("#")) {
      const m = /^#\s+TYPE\s+(\S+)\s+(\S+)/.exec(line);
      if (m) types.set(m[1], m[2]);
      continue;
    }
    const s = parseSample(line);
    if (s) samples.push(s);
  }
  return { samples, types };
}

function parseSample(line) {
  let i = 0;
  while (i < line.length && /[a-zA-Z0-9_:]/.test(line[i])) i++;
  if (i === 0) return null;
  const name = line.slice(0, i);
  const labels = {};
  if (line[i] === "{") {
    i++;
    for (;;) {
      while (line[i] === " " || line[i] === ",") i++;
      if (line[i] === "}") { i++; break; }
      const start = i;
      while (i < line.length && /[a-zA-Z0-9_]/.test(line[i])) i++;
      const key = line.slice(start, i);
      if (key === "" || line[i] !== "=" || line[i + 1] !== "\"") return null;
      i += 2;
      let value = "";
      for (;;) {
        if (i >= line.length) return null;
        const c = line[i++];
        if (c === "\"") break;
        if (c === "\\") {
          const e = line[i++];
          value += e === "n" ? "\n" : e; // \\ and \" stand for themselves
        } else {
          value += c;
        }
      }
      labels[key] = value;
    }
  }
  const rest = line.slice(i).trim().split(/\s+/);
  const value = parseValue(rest[0]);
  if (value === null) return null;
  return { name, labels, value };
}

function parseValue(s) {
  if (s === undefined || s === "") return null;
  if (s === "+Inf" || s === "Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  if (s === "NaN") return NaN;
  const v = Number(s);
  return Number.isNaN(v) ? null : v;
}

function seriesKey(s) {
  return s.name + "{" + Object.keys(s.labels).sort().map((k) => k + "=" + JSON.stringify(s.labels[k])).join(",") + "}";
}

// histogram_quantile as Prometheus computes it: `buckets` are [upper bound, cumulative count]
// pairs (+Inf included); linear interpolation inside the bucket that holds the rank. NaN when
// there is nothing to rank.
function histogramQuantile(q, buckets) {
  const b = buckets.filter(([le]) => !Number.isNaN(le)).sort((x, y) => x[0] - y[0]);
  if (b.length < 2 || b[b.length - 1][0] !== Infinity) return NaN;
  // Cumulative counts must not decrease (a scrape between two workers' updates may say so).
  for (let i = 1; i < b.length; i++) if (b[i][1] < b[i - 1][1]) b[i][1] = b[i - 1][1];
  const total = b[b.length - 1][1];
  if (!(total > 0)) return NaN;
  const rank = q * total;
  let i = 0;
  while (i < b.length - 1 && b[i][1] < rank) i++;
  if (i === b.length - 1) return b[b.length - 2][0]; // in the +Inf bucket: the highest bound
  const upper = b[i][0];
  const lower = i === 0 ? 0 : b[i - 1][0];
  const below = i === 0 ? 0 : b[i - 1][1];
  const inBucket = b[i][1] - below;
  if (i === 0 && upper <= 0) return upper;
  if (inBucket <= 0) return upper;
  return lower + (upper - lower) * ((rank - below) / inBucket);
}

// ------------------------------------------------------------------------------------------
// Scrapes make a window: each series' increase since the oldest scrape of the last WINDOW_MS
// (as `rate(x[30s])`), and the seconds between the two.

let scrapeHistory = []; // [{at: ms, values: Map key -> value}], oldest first
let scrapes = 0;

// Sets `delta` (the increase over the window, or null before a second scrape) on every sample;
// returns the window's seconds (null without one).
function advance(samples, at) {
  while (scrapeHistory.length > 1 && at - scrapeHistory[1].at >= WINDOW_MS) scrapeHistory.shift();
  const base = scrapeHistory.length > 0 ? scrapeHistory[0] : null;
  const values = new Map();
  for (const s of samples) {
    const k = seriesKey(s);
    values.set(k, s.value);
    if (base === null) { s.delta = null; continue; }
    const before = base.values.get(k);
    if (before === undefined) s.delta = s.value; // a series born since: it started at 0
    else if (s.value < before) s.delta = s.value; // a counter reset (the gateway restarted)
    else s.delta = s.value - before;
  }
  scrapeHistory.push({ at, values });
  return base === null ? null : Math.max(0.001, (at - base.at) / 1000);
}

// Groups `samples` of family `name` by `keyOf(labels)` (null: skipped) into
// {labels, total, delta, buckets?}.
function group(samples, name, keyOf) {
  const out = new Map();
  for (const s of samples) {
    if (s.name !== name) continue;
    const k = keyOf(s.labels);
    if (k === null) continue;
    let g = out.get(k);
    if (!g) { g = { labels: s.labels, total: 0, delta: null }; out.set(k, g); }
    g.total += s.value;
    if (s.delta !== null) g.delta = (g.delta || 0) + s.delta;
  }
  return out;
}

// The golden metrics of one grouping: requests, successes and the latency buckets. Over the
// window when it holds at least MIN_WINDOW requests (fewer say little), else since the
// gateway started (`basis`); `basisOf(labels)`, when given, imposes another grouping's basis
// (a route's on its endpoints, so that their shares add up).
function golden(samples, keyOf, basisOf) {
  const all = group(samples, "xdpmesh_requests_total", keyOf);
  const ok = group(samples, "xdpmesh_requests_total",
    (l) => (l.classification === "success" ? keyOf(l) : null));
  const buckets = new Map();
  for (const s of samples) {
    if (s.name !== "xdpmesh_request_duration_seconds_bucket") continue;
    const k = keyOf(s.labels);
    if (k === null) continue;
    let per = buckets.get(k);
    if (!per) { per = new Map(); buckets.set(k, per); }
    const le = parseValue(s.labels.le);
    const b = per.get(le) || { total: 0, delta: 0 };
    b.total += s.value;
    if (s.delta !== null) b.delta += s.delta;
    per.set(le, b);
  }
  const rows = new Map();
  for (const [k, g] of all) {
    const basis = basisOf ? basisOf(g.labels) : g.delta !== null && g.delta >= MIN_WINDOW ? "window" : "total";
    const windowed = basis === "window";
    const n = windowed ? g.delta || 0 : g.total;
    const o = ok.get(k);
    const good = o ? (windowed ? o.delta || 0 : o.total) : 0;
    const per = buckets.get(k) || new Map();
    const pairs = [...per].map(([le, b]) => [le, windowed ? b.delta : b.total]);
    rows.set(k, {
      labels: g.labels,
      total: g.total,
      delta: g.delta,
      n,
      basis,
      success: n > 0 ? good / n : NaN,
      p50: histogramQuantile(0.5, pairs),
      p99: histogramQuantile(0.99, pairs),
    });
  }
  return rows;
}

// ------------------------------------------------------------------------------------------
// DOM helpers: elements from text only.

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function num(text, attrs) {
  const a = Object.assign({}, attrs || {});
  a.class = ((a.class || "") + " num").trim();
  return el("td", a, text);
}

function replaceRows(table, rows, emptyText, columns) {
  const body = document.querySelector(table + " tbody");
  if (rows.length === 0) rows = [el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText))];
  body.replaceChildren(...rows);
}

function fmtRate(r) {
  if (r === null || r === undefined || Number.isNaN(r)) return "–";
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

function fmtPct(f) {
  return Number.isNaN(f) ? "–" : (f * 100).toFixed(f === 1 ? 0 : 1) + " %";
}

function fmtSeconds(s) {
  if (Number.isNaN(s) || s === undefined || s === null) return "–";
  if (s === Infinity) return "> 10 s";
  if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}

function fmtDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  const neg = s < 0;
  s = Math.abs(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  const t = d > 0 ? d + " d " + h + " h" : h > 0 ? h + " h " + m + " min" : m > 0 ? m + " min" : Math.floor(s) + " s";
  return neg ? "expired " + t + " ago" : t;
}

function successClass(f) {
  if (Number.isNaN(f)) return "";
  return f >= 0.99 ? "good" : f >= 0.9 ? "warn" : "bad";
}

function attrNum(v) {
  return Number.isFinite(v) ? v.toFixed(6) : "";
}

// ------------------------------------------------------------------------------------------
// Panels.

function goldenCells(g, seconds) {
  const rate = seconds && g.delta !== null ? g.delta / seconds : null;
  return [
    num(fmtRate(rate), { "data-rate": rate === null ? "" : attrNum(rate) }),
    num(fmtPct(g.success) + (g.basis === "total" ? " ∑" : ""), {
      class: successClass(g.success), "data-success": attrNum(g.success), "data-basis": g.basis,
      title: g.basis === "total" ? "since the gateway started: fewer than " + MIN_WINDOW + " requests in the window" : "over the window",
    }),
    num(fmtSeconds(g.p50), { "data-p50": attrNum(g.p50) }),
    num(fmtSeconds(g.p99), { "data-p99": attrNum(g.p99) }),
    num(String(g.total), { "data-total": g.total }),
  ];
}

function byLabels(...names) {
  return (l) => JSON.stringify(names.map((n) => l[n] || ""));
}

function renderServices(samples, seconds) {
  const rows = [...golden(samples, byLabels("direction", "service"))]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([, g]) => el("tr", { class: "service", "data-direction": g.labels.direction || "", "data-service": g.labels.service || "" },
      el("td", {}, g.labels.direction || ""), el("td", {}, g.labels.service || "–"), ...goldenCells(g, seconds)));
  replaceRows("#services", rows, "no requests yet", 7);
}

function renderRoutes(samples, seconds) {
  const routeKey = byLabels("direction", "route", "service");
  const routes = golden(samples, routeKey);
  const endpoints = golden(samples, byLabels("direction", "route", "service", "endpoint"),
    (l) => (routes.get(routeKey(l)) || { basis: "total" }).basis);
  const rows = [];
  for (const [rk, r] of [...routes].sort(([a], [b]) => a.localeCompare(b))) {
    const route = r.labels.route || "";
    const dir = r.labels.direction || "";
    const svc = r.labels.service || "";
    rows.push(el("tr", { class: "route", "data-route": route, "data-direction": dir, "data-service": svc },
      el("td", {}, dir), el("td", { class: "name" }, route === "" ? "(no named route)" : route), el("td", {}, svc),
      el("td", {}, ""), ...goldenCells(r, seconds)));
    const mine = [...endpoints].filter(([k]) => k.startsWith(rk.slice(0, -1) + ","))
      .sort(([a], [b]) => a.localeCompare(b));
    for (const [, e] of mine) {
      const share = r.n > 0 ? e.n / r.n : NaN;
      const bar = el("span", { class: "share" });
      bar.style.width = (Number.isFinite(share) ? share * 6 : 0).toFixed(2) + "em";
      const cell = el("td", { class: "share-cell", "data-share": attrNum(share), "data-basis": r.basis });
      cell.append(bar, fmtPct(share));
      rows.push(el("tr", { class: "endpoint", "data-route": route, "data-direction": dir, "data-service": svc, "data-endpoint": e.labels.endpoint || "" },
        el("td", {}, ""), el("td", { class: "name" }, e.labels.endpoint || "(none)"), el("td", {}, svc),
        cell, ...goldenCells(e, seconds)));
    }
  }
  replaceRows("#routes", rows, "no requests yet", 9);
}

// Refusals: the proxy's and the admin API's by reason, a route's rate limits and faults.
function renderRefused(samples, seconds) {
  const sources = [
    ["proxy", "xdpmesh_proxy_refused_total", (l) => l.reason || ""],
    ["admin API", "xdpmesh_admin_refused_total", (l) => l.reason || ""],
    ["route rate limit", "xdpmesh_route_rate_limited_total", (l) => "429 on route " + (l.route || "")],
    ["route fault", "xdpmesh_route_faults_total", (l) => (l.fault || "fault") + " on route " + (l.route || "")],
  ];
  const rows = [];
  for (const [by, family, reasonOf] of sources) {
    const g = group(samples, family, reasonOf);
    for (const [reason, v] of [...g].sort(([a], [b]) => a.localeCompare(b))) {
      if (!(v.total > 0)) continue;
      const rate = seconds && v.delta !== null ? v.delta / seconds : null;
      rows.push(el("tr", { "data-refused-by": by, "data-reason": reason },
        el("td", {}, by), el("td", {}, reason), num(String(v.total), { "data-total": v.total }), num(fmtRate(rate))));
    }
  }
  replaceRows("#refused", rows, "nothing refused or denied", 4);
}

function renderBuild(samples) {
  const b = samples.find((s) => s.name === "xdpmesh_build_info");
  document.getElementById("build").textContent = b ? "v" + (b.labels.version || "?") + " (" + (b.labels.commit || "?") + ")" : "";
}

function renderEndpoints(list) {
  const rows = (Array.isArray(list) ? list : []).map((e) => {
    const health = String(e.health || "");
    const cls = e.ejected || health === "unhealthy" ? "bad" : "";
    return el("tr", { class: cls, "data-service": e.service || "", "data-endpoint": e.endpoint || "", "data-health": health, "data-ejected": String(!!e.ejected) },
      el("td", {}, e.service || ""), el("td", {}, e.endpoint || "–"),
      el("td", { class: health === "healthy" ? "good" : health === "unhealthy" ? "bad" : "" }, health),
      el("td", {}, e.ejected ? "for " + fmtSeconds((e.ejected_for_ms || 0) / 1000) : "no"),
      num(String(e.ejections ?? "")), num(String(e.outstanding ?? ""), { "data-outstanding": e.outstanding ?? "" }),
      num(e.ewma_latency_ms === null || e.ewma_latency_ms === undefined ? "–" : fmtSeconds(e.ewma_latency_ms / 1000)),
      num(String(e.pool_idle ?? "")), el("td", {}, e.last_probe_failure || ""));
  });
  replaceRows("#endpoints", rows, "no endpoints", 9);
}

function validityCells(v) {
  if (!v) return [el("td", {}, "not loaded"), el("td", {}, "–"), el("td", {}, "–")];
  const left = Number(v.lifetime_left);
  return [
    el("td", {}, v.not_after ? new Date(v.not_after * 1000).toISOString().replace(".000Z", "Z") : "–"),
    num(fmtDuration(v.expires_in_s), { "data-expires-in": v.expires_in_s ?? "" }),
    num(Number.isFinite(left) ? (left * 100).toFixed(1) + " %" : "–", { "data-lifetime-left": Number.isFinite(left) ? left.toFixed(4) : "" }),
  ];
}

function renderConfig(dump) {
  document.getElementById("generation").textContent = dump && dump.generation !== undefined ? "tables generation " + dump.generation : "";
  const rows = [];
  const add = (kind, name, v) => {
    const left = v ? Number(v.lifetime_left) : NaN;
    const cls = !v ? "" : left <= 0 ? "bad" : left < LIFETIME_WARN ? "warn" : "";
    rows.push(el("tr", { class: cls, "data-kind": kind, "data-identity": name }, el("td", {}, kind), el("td", {}, name), ...validityCells(v)));
  };
  for (const i of (dump && dump.identities) || []) add("identity", String(i.id || ""), i.validity);
  for (const r of (dump && dump.trust_roots) || []) add("trust root", String(r.subject || ""), r.validity);
  replaceRows("#identities", rows, "no identities", 5);
}

// ------------------------------------------------------------------------------------------
// The refresh loop.

async function getText(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.text();
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [metrics, endpoints, dump] = await Promise.all([
      getText("/metrics"),
      getText("/endpoints").then(JSON.parse),
      getText("/config_dump").then(JSON.parse),
    ]);
    const { samples } = parseProm(metrics);
    const seconds = advance(samples, Date.now());
    renderBuild(samples);
    renderServices(samples, seconds);
    renderRoutes(samples, seconds);
    renderRefused(samples, seconds);
    renderEndpoints(endpoints);
    renderConfig(dump);
    scrapes++;
    status.dataset.state = "ok";
    status.dataset.scrapes = String(scrapes);
    status.dataset.window = seconds === null ? "" : seconds.toFixed(3);
    status.textContent = "updated " + new Date().toLocaleTimeString() +
      (seconds === null ? " · rates from the next refresh" : " · rates over the last " + seconds.toFixed(1) + " s");
  } catch (e) {
    status.dataset.state = "error";
    status.textContent = "last refresh failed at " + new Date().toLocaleTimeString() + ": " + (e && e.message ? e.message : String(e));
  } finally {
    setTimeout(refresh, INTERVAL_MS);
  }
}

// ------------------------------------------------------------------------------------------
// The live tap: GET /tap streams one JSON object per line as requests complete.

function tapStatus(state, text) {
  const p = document.getElementById("tap-status");
  p.dataset.state = state;
  p.textContent = text;
}

function tapRow(o) {
  const dur = Number(o.duration_us);
  const status = o.status === null || o.status === undefined ? "" : String(o.status);
  const cls = status.startsWith("5") || o.outcome === "cut" ? "bad" : status.startsWith("4") ? "warn" : "";
  return el("tr", { class: cls + " tap", "data-status": status, "data-route": String(o.route ?? ""), "data-endpoint": String(o.endpoint ?? "") },
    el("td", {}, String(o.time || o.timestamp || "")), el("td", {}, String(o.route ?? "")), el("td", {}, String(o.service ?? "")),
    el("td", {}, String(o.endpoint ?? "")), el("td", {}, String(o.method ?? "")), el("td", {}, String(o.path ?? "")),
    num(status), num(Number.isFinite(dur) ? fmtSeconds(dur / 1e6) : ""));
}

async function tap() {
  const body = document.querySelector("#tap tbody");
  let lost = 0;
  let ended = null;
  const url = "/tap?limit=" + TAP_LIMIT + "&seconds=" + TAP_SECONDS;
  try {
    const r = await fetch(url, { cache: "no-store" });
    if (r.status === 404) {
      tapStatus("unavailable", "tap not available on this gateway (GET /tap answered 404)");
      return;
    }
    if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
    tapStatus("streaming", "streaming " + url);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line === "" || line.startsWith(":")) continue; // SSE comments
        let o;
        try { o = JSON.parse(line.startsWith("data:") ? line.slice(5) : line); } catch (_) { continue; }
        if (o === null || typeof o !== "object") continue;
        // {"type":"dropped","dropped":N}: N lines lost to a slow reader since the last report;
        // {"type":"end","reason":R,...}: the stream's last line; anything else is a request.
        if (o.type === "dropped") {
          lost += Number(o.dropped) || 0;
          tapStatus("streaming", "streaming " + url + " · " + lost + " lines lost (a slow reader)");
          continue;
        }
        if (o.type === "end") {
          ended = String(o.reason || "");
          continue;
        }
        body.prepend(tapRow(o));
        while (body.children.length > TAP_ROWS) body.lastElementChild.remove();
      }
    }
    tapStatus("reconnecting", "tap stream ended (" + (ended === null ? "cut" : ended) + ")" +
      (lost > 0 ? ", " + lost + " lines lost" : "") + "; reconnecting");
    setTimeout(tap, 1000);
  } catch (e) {
    tapStatus("error", "tap failed: " + (e && e.message ? e.message : String(e)) + "; retrying in 5 s");
    setTimeout(tap, 5000);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  if (TAP_ON) tap();
  else tapStatus("off", "tap off (?tap=off)");
});
