// DLBA dashboard: polls /dashboard.json, draws the tables, the client table and the rate
// sparklines, and sends the operator's actions (with the CSRF token) to the admin API.
"use strict";

const POLL_MS = 2000;
const HISTORY_S = 300;              // sparklines show the last five minutes
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                 "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c"];
const NONE_COLOUR = "#d0d4da";

let csrf = "";
let last = null;                    // the last dashboard.json
const history = new Map();          // key -> [{t, hits}] (raw counters; rates drawn from them)

const $ = (id) => document.getElementById(id);

function fmtTime(epoch) {
  if (!epoch) return "never";
  const d = new Date(epoch * 1000);
  const ago = Math.max(0, Date.now() / 1000 - epoch);
  return `${d.toLocaleTimeString()} (${ago < 60 ? ago.toFixed(0) + " s" : (ago / 60).toFixed(1) + " min"} ago)`;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

// --- request-rate history ---------------------------------------------------------------
function record(key, t, hits) {
  let h = history.get(key);
  if (!h) { h = []; history.set(key, h); }
  h.push({ t, hits });
  while (h.length > 2 && t - h[0].t > HISTORY_S) h.shift();
}

function rates(key) {
  const h = history.get(key) || [];
  const out = [];
  for (let i = 1; i < h.length; i++) {
    const dt = h[i].t - h[i - 1].t;
    const dh = h[i].hits - h[i - 1].hits;
    out.push(dt > 0 && dh >= 0 ? dh / dt : 0);   // a counter reset counts as 0, not negative
  }
  return out;
}

function sparkline(key) {
  const r = rates(key);
  const c = document.createElement("canvas");
  c.className = "spark";
  const dpr = window.devicePixelRatio || 1;
  c.width = 100 * dpr; c.height = 22 * dpr;
  const g = c.getContext("2d");
  g.scale(dpr, dpr);
  const max = Math.max(1, ...r);
  const n = Math.max(15, r.length);   // newest at the right; at least 30 s wide
  g.strokeStyle = "#d8dde3"; g.lineWidth = 1; g.beginPath();
  g.moveTo(0, 20.5); g.lineTo(100, 20.5); g.stroke();   // the zero line shows the extent
  g.strokeStyle = "#4e79a7"; g.lineWidth = 1.5; g.beginPath();
  r.forEach((v, i) => {
    const x = 100 - (r.length - 1 - i) * 100 / (n - 1);
    const y = 20 - v / max * 18;
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  const now = r.length ? r[r.length - 1] : 0;
  const wrap = document.createElement("span");
  wrap.title = `${now.toFixed(1)} req/s now, peak ${max.toFixed(1)}`;
  wrap.append(c, " " + now.toFixed(1) + "/s");
  return wrap;
}

// --- tables ---------------------------------------------------------------------------------
function cell(row, content, cls) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = content ?? "";
  if (cls) td.className = cls;
  row.append(td);
  return td;
}

function fill(tableId, rows, emptyText, build) {
  const body = $(tableId).tBodies[0];
  const frag = document.createDocumentFragment();
  if (!rows || rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, emptyText);
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    frag.append(tr);
  } else {
    rows.forEach((r) => { const tr = document.createElement("tr"); build(tr, r); frag.append(tr); });
  }
  body.replaceChildren(frag);
}

function backendState(b) {
  if (b.failed) return "down";
  if (!b.enabled) return "disabled";
  return b.state || "up";
}

function backendCells(tr, b, key) {
  tr.dataset.backend = b.id;
  cell(tr, String(b.id));
  cell(tr, b.address);
  cell(tr, b.cookie_groups);
  cell(tr, Number(b.avg_response_ms || 0).toFixed(2));
  cell(tr, b.hits);
  cell(tr, sparkline(key));
  cell(tr, b.open_connections);
  cell(tr, b.unable_to_connect);
  const st = backendState(b);
  cell(tr, st, "state st-" + st);
  cell(tr, b.effective_weight !== undefined && b.effective_weight !== b.weight
    ? `${b.weight} (${b.effective_weight})` : b.weight);
}

function render(d) {
  const st = d.node;
  const sch = d.scheduler || {};
  const summary = sch.summary;
  const t = d.time;

  $("node-name").textContent = st.node;
  $("role").textContent = st.role;
  $("scheduler").textContent = sch.name || (st.role === "standalone" ? "— (standalone)" : "none yet");
  $("table-version").textContent = summary ? summary.table_version : st.table_version;
  $("last-sweep").textContent = summary ? fmtTime(summary.last_sweep) : "—";
  $("panic").textContent = summary ? (summary.panic ? "ON" : "off") : "—";
  $("panic").className = summary && summary.panic ? "st-down" : "";
  $("updated").textContent = new Date(t * 1000).toLocaleTimeString();
  // This node's proxy workers (children of its gunicorn master): serving, and retiring ones
  // that finish their connections after a reload; none listed: the node is one process.
  const ws = st.workers || [];
  const serving = ws.filter((w) => !w.retiring).length;
  const retiring = ws.length - serving;
  $("workers").textContent = ws.length
    ? `${serving}${retiring ? ` (+${retiring} retiring)` : ""}` : "1 process";
  if (sch.error) say(`scheduler data: ${sch.error}`, true);
  ["panic-on", "panic-off"].forEach((id) => { $(id).disabled = !sch.name; });

  // Fig. 5: from the scheduler's sweep; a standalone node shows its own row.
  const nodes = summary ? summary.nodes : st.nodes;
  // Config version skew: a push that did not reach every node (shown, not hidden).
  const versions = new Set(nodes.map((n) => n.config_version ?? st.config_version));
  const skew = versions.size > 1;
  $("config-version").textContent = skew
    ? `${st.config_version} (skew: ${[...versions].sort().join(", ")})` : st.config_version;
  $("config-version").className = skew ? "st-down" : "";
  nodes.forEach((n) => record("node:" + n.name, t, n.hits));
  fill("nodes", nodes, "no nodes", (tr, n) => {
    tr.dataset.node = n.name;
    cell(tr, n.name);
    cell(tr, n.address);
    cell(tr, n.ip_groups);
    cell(tr, Number(n.avg_response_ms || 0).toFixed(2));
    cell(tr, n.hits);
    cell(tr, sparkline("node:" + n.name));
    cell(tr, n.open_connections);
    const s = n.failed ? "failed" : (n.enabled === false ? "disabled" : "up");
    cell(tr, s, "state st-" + s);
    cell(tr, n.weight);
    cell(tr, n.config_version ?? st.config_version, skew ? "st-down" : "");
    // Enable/disable a node: kept by the scheduler, so only when there is one.
    const box = document.createElement("div");
    box.className = "btns";
    cell(tr, box);
    if (sch.name) {
      ["enable", "disable"].forEach((a) => {
        const btn = document.createElement("button");
        btn.type = "button";
        btn.textContent = a;
        btn.dataset.node = n.name;
        btn.dataset.action = a;
        btn.disabled = (a === "enable") === (n.enabled !== false);
        box.append(btn);
      });
    }
  });

  // Fig. 8: the array's sum; on a standalone node its own table is the whole array.
  const sum = summary ? summary.backends : st.backends;
  sum.forEach((b) => record("sum:" + b.id, t, b.hits));
  fill("summary", sum, "no back ends", (tr, b) => backendCells(tr, b, "sum:" + b.id));

  // Fig. 7: this node's own table, with the actions.
  st.backends.forEach((b) => record("be:" + b.id, t, b.hits));
  fill("backends", st.backends, "no back ends", (tr, b) => {
    backendCells(tr, b, "be:" + b.id);
    const box = document.createElement("div");
    box.className = "btns";
    cell(tr, box);
    ["enable", "disable", "drain"].forEach((a) => {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.textContent = a;
      btn.dataset.backend = b.id;
      btn.dataset.action = a;
      box.append(btn);
    });
  });

  renderServices(st.services || { services: [], pools: {}, classes: [] });
  drawTable(sch.table, d.array || []);
}

// Virtual services, their pools (queue depth, shed count) and client classes, this node's.
function renderServices(sv) {
  fill("services", sv.services, "no services", (tr, s) => {
    tr.dataset.service = s.name;
    [s.name, s.vips.join(" "), s.ports.join(" ") || "listen", s.pool, s.routes, s.requests]
      .forEach((v) => cell(tr, v));
  });
  const pools = Object.entries(sv.pools).sort((a, b) => a[0].localeCompare(b[0]));
  fill("pools", pools, "no pools", (tr, [name, p]) => {
    tr.dataset.pool = name;
    [name, p.policy, p.backends.join(" "), p.slots ? `${p.slots_used}/${p.slots}` : "-",
      p.queue_depth, p.queued].forEach((v) => cell(tr, v));
    cell(tr, p.shed, p.shed ? "st-draining" : "");
    cell(tr, p.timeouts);
  });
  const prio = Object.fromEntries(sv.classes.map((c) => [c.name, c.priority]));
  const rows = pools.flatMap(([name, p]) => Object.entries(p.classes)
    .sort((a, b) => (prio[a[0]] ?? 0) - (prio[b[0]] ?? 0))
    .map(([cls, c]) => ({ pool: name, cls, ...c })));
  fill("classes", rows, "no requests yet", (tr, c) => {
    tr.dataset.class = `${c.pool}/${c.cls}`;
    [c.pool, c.cls, prio[c.cls] ?? "", c.requests, c.queued].forEach((v) => cell(tr, v));
    cell(tr, c.shed, c.shed ? "st-draining" : "");
    cell(tr, c.waiting);
  });
}

// The objects the array chose for the CDN (GET /cdn), grouped by virtual service (each has its
// own choice and base), and this node's offload counters.
async function renderCdn() {
  try {
    const r = await fetch("/cdn", { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) return;
    const c = await r.json();
    const n = c.counters;
    $("cdn-caption").textContent = !c.enabled ? "(off: [cdn] enabled = false)"
      : `(decided by ${c.decider}; pages rewritten ${n.rewritten}, cache hits ${n.cache_hits}, ` +
        `misses ${n.cache_misses}, bytes offloaded ${n.bytes_offloaded})`;
    // One row per chosen object; a service with none gets one row saying why.
    const rows = (c.services || []).flatMap((s) => s.objects.length ? s.objects.map(
      (o, i) => ({ ...o, first: i === 0 })) : [{ service: s.service, first: true,
      none: s.enabled ? "nothing chosen yet" : "off" }]);
    fill("cdn", c.enabled ? rows : [], "off", (tr, o) => {
      tr.dataset.service = o.service;
      cell(tr, o.first ? o.service : "");
      if (o.none) {
        cell(tr, o.none).colSpan = 4;
        return;
      }
      tr.dataset.object = o.path;
      [o.path, o.bytes, o.count, o.cdn_url].forEach((v) => cell(tr, v));
    });
  } catch (e) {
    // the rest of the page stands without this panel
  }
}

// --- the client table picture ---------------------------------------------------------------
function colourOf(name, order) {
  const i = order.indexOf(name);
  if (i >= 0) return PALETTE[i % PALETTE.length];
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function drawTable(table, order) {
  const canvas = $("buckets");
  const legend = $("legend");
  if (!table) {
    canvas.dataset.cells = "0";
    canvas.hidden = true;
    $("table-caption").textContent = "(kept by the scheduler; this node has none)";
    legend.replaceChildren();
    return;
  }
  canvas.hidden = false;
  const size = table.owners.length;
  const cols = Math.ceil(Math.sqrt(size));
  const rows = Math.ceil(size / cols);
  const px = Math.max(1, Math.floor(512 / cols));
  canvas.width = cols * px;
  canvas.height = rows * px;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const colours = table.names.map((n) => colourOf(n, order));
  const counts = new Array(table.names.length).fill(0);
  let none = 0, idle = 0;
  const gap = px >= 4 ? 1 : 0;
  for (let b = 0; b < size; b++) {
    const o = table.owners[b];
    const faded = table.idle ? table.idle[b] === 1 : false;
    if (o >= 0) counts[o]++; else none++;
    if (faded) idle++;
    g.globalAlpha = faded ? 0.3 : 1;
    g.fillStyle = o >= 0 ? colours[o] : NONE_COLOUR;
    g.fillRect((b % cols) * px, Math.floor(b / cols) * px, px - gap, px - gap);
  }
  g.globalAlpha = 1;
  canvas.dataset.cells = String(size);
  $("table-caption").textContent =
    `(version ${table.version}, ${size} buckets${table.idle ? `, ${idle} idle (faded)` : ""})`;
  const items = table.names.map((n, i) => {
    const li = document.createElement("li");
    li.style.setProperty("--swatch", colours[i]);
    li.textContent = `${n}: ${counts[i]}`;
    return li;
  });
  if (none) {
    const li = document.createElement("li");
    li.style.setProperty("--swatch", NONE_COLOUR);
    li.textContent = `unassigned: ${none}`;
    items.push(li);
  }
  legend.replaceChildren(...items);
}

// --- polling and actions ----------------------------------------------------------------------
async function poll() {
  try {
    const r = await fetch("/dashboard.json", { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) {
      say("Not signed in: open this page as /?token=<admin token> once.", true);
      return;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    last = await r.json();
    csrf = last.csrf;
    render(last);
    await renderCdn();
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (e) {
    say(`refresh failed: ${e.message}`, true);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function act(method, path, what) {
  say(`${what}…`, false);
  try {
    const r = await fetch(path, {
      method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf },
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    say(`${what}: done`, false);
  } catch (e) {
    say(`${what}: ${e.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("backends").addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    const { backend, action } = btn.dataset;
    const everywhere = $("scope-array").checked;
    const path = everywhere ? `/dashboard/backends/${backend}/${action}` : `/backends/${backend}/${action}`;
    act("POST", path, `${action} back end ${backend}${everywhere ? " on every node" : ""}`);
  });
  $("nodes").addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    const { node, action } = btn.dataset;
    act("POST", `/dashboard/nodes/${encodeURIComponent(node)}/${action}`, `${action} node ${node}`);
  });
  $("panic-on").addEventListener("click", () => {
    if (confirm("Panic mode: spread the client table evenly and pin the scheduler?")) {
      act("POST", "/dashboard/panic", "panic on");
    }
  });
  $("panic-off").addEventListener("click", () => act("DELETE", "/dashboard/panic", "panic off"));
  poll();
});
