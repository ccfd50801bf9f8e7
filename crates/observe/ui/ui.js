// The flow page: a live table from /api/flows (Server-Sent Events), the service map from
// /api/map and the counters from /api/status, all with the filters of the form. The form's
// input names are the query keys, which are the flags of `trellis observe`.
"use strict";

const ROWS_MAX = 1000; // rows kept in the table; older ones are removed
const PENDING_MAX = 5000; // flows held while paused; beyond that they are counted, not kept
const REFRESH_MS = 2000; // map and status
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const form = $("filters");
const rows = $("flow-rows");
let source = null;
let paused = false;
let pending = [];
let skipped = 0;

function query() {
  const p = new URLSearchParams();
  for (const el of form.elements) {
    if (el.name && el.value.trim() !== "") p.append(el.name, el.value.trim());
  }
  return p.toString();
}

function fillForm() {
  const p = new URLSearchParams(location.search);
  for (const el of form.elements) {
    if (el.name) el.value = p.get(el.name) || "";
  }
}

function showError(text) {
  const e = $("error");
  e.textContent = text || "";
  e.hidden = !text;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

function addRow(kind, f) {
  const tr = document.createElement("tr");
  tr.id = "flow-" + f.id;
  if (kind === "lost") {
    tr.className = "lost";
    tr.dataset.lost = "true";
    const td = document.createElement("td");
    td.colSpan = 6;
    td.textContent = f.text;
    tr.appendChild(td);
  } else {
    tr.className = "flow";
    tr.dataset.verdict = f.verdict;
    tr.dataset.type = f.type;
    cell(tr, f.time, "time");
    cell(tr, f.source, "source");
    cell(tr, f.destination, "destination");
    cell(tr, f.type, "type");
    cell(tr, f.verdict, "verdict v-" + verdictClass(f.verdict));
    cell(tr, f.summary, "summary");
    tr.title = f.node ? "node " + f.node : "";
  }
  rows.insertBefore(tr, rows.firstChild);
  while (rows.childElementCount > ROWS_MAX) rows.removeChild(rows.lastChild);
}

function countRows() {
  let text = rows.childElementCount + " shown";
  if (paused) text += ", " + (pending.length + skipped) + " new while paused";
  $("flow-count").textContent = text;
}

function receive(kind, e) {
  const f = JSON.parse(e.data);
  if (paused) {
    if (pending.length < PENDING_MAX) pending.push([kind, f]);
    else skipped++;
  } else {
    addRow(kind, f);
  }
  countRows();
}

function connect() {
  if (source) source.close();
  source = null;
  rows.textContent = "";
  pending = [];
  skipped = 0;
  const q = query();
  history.replaceState(null, "", q ? "?" + q : location.pathname);
  // The map request checks the filters first: an EventSource cannot read an error body.
  fetch("api/map" + (q ? "?" + q : ""))
    .then((r) => r.json().then((body) => [r.ok, body]))
    .then(([ok, body]) => {
      if (!ok) {
        showError(body.error);
        drawMap({ nodes: [], edges: [], flows: 0 });
        return;
      }
      showError("");
      drawMap(body);
      source = new EventSource("api/flows" + (q ? "?" + q : ""));
      source.addEventListener("flow", (e) => receive("flow", e));
      source.addEventListener("lost", (e) => receive("lost", e));
      source.addEventListener("problem", (e) => showError(JSON.parse(e.data).error));
      source.onerror = () => {
        // The browser would reconnect and replay into the table twice: start over instead.
        source.close();
        showError("flow stream closed; reconnecting");
        setTimeout(connect, REFRESH_MS);
      };
      countRows();
    })
    .catch((err) => showError("cannot reach the server: " + err));
}

function verdictClass(v) {
  return ["FORWARDED", "DROPPED", "ERROR"].includes(v) ? v : "other";
}

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

// Three columns: clients (and anything that is a source), Services, workloads that only
// receive. Rows sorted by id, so the same flows always draw the same map.
function drawMap(m) {
  const svg = $("map");
  svg.textContent = "";
  $("map-count").textContent = m.flows + " flows in the buffer";
  const isSource = new Set(m.edges.map((e) => e.source));
  const column = (n) => (n.kind === "service" ? 1 : isSource.has(n.id) ? 0 : 2);
  const cols = [[], [], []];
  for (const n of m.nodes) cols[column(n)].push(n);
  const W = 170, H = 30, COL = 280, ROW = 64, X0 = 20, Y0 = 50;
  const pos = {};
  cols.forEach((c, i) => c.forEach((n, j) => (pos[n.id] = { x: X0 + i * COL, y: Y0 + j * ROW })));
  const height = Y0 + Math.max(1, ...cols.map((c) => c.length)) * ROW;
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", "0 0 760 " + height);
  const defs = el("defs", {}, svg);
  for (const v of ["FORWARDED", "DROPPED", "ERROR", "other"]) {
    const mk = el("marker", { id: "arrow-" + v, viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", class: "head v-" + v }, mk);
  }
  // Parallel edges (one per verdict) between the same nodes bend apart.
  const seen = {};
  for (const e of m.edges) {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) continue;
    const pair = e.source + " " + e.target;
    const k = (seen[pair] = (seen[pair] || 0) + 1) - 1;
    const v = verdictClass(e.verdict);
    const g = el("g", { class: "edge v-" + v, "data-source": e.source, "data-target": e.target,
      "data-verdict": e.verdict, "data-flows": e.flows }, svg);
    let d, lx, ly;
    if (e.source === e.target) {
      const x = a.x + W - 40 - k * 30, y = a.y;
      d = `M${x},${y} C${x - 20},${y - 40} ${x + 30},${y - 40} ${x + 12},${y}`;
      lx = x + 5; ly = y - 34;
    } else {
      const forward = b.x > a.x;
      const x1 = forward ? a.x + W : a.x, y1 = a.y + H / 2;
      const x2 = forward ? b.x : b.x + W, y2 = b.y + H / 2;
      const bend = (k % 2 ? 1 : -1) * Math.ceil(k / 2) * 22 + (a.x === b.x ? 60 : 0);
      const mx = (x1 + x2) / 2 + (a.x === b.x ? bend : 0);
      const my = (y1 + y2) / 2 + (a.x === b.x ? 0 : bend);
      d = `M${x1},${y1} Q${mx},${my} ${x2},${y2}`;
      lx = (x1 + 2 * mx + x2) / 4; ly = (y1 + 2 * my + y2) / 4 - 4;
    }
    el("path", { d, class: "line", "marker-end": `url(#arrow-${v})` }, g);
    const label = el("text", { x: lx, y: ly, class: "count", "text-anchor": "middle" }, g);
    label.textContent = e.flows;
    el("title", {}, g).textContent = `${e.source} → ${e.target}: ${e.flows} ${e.verdict}`;
  }
  for (const n of m.nodes) {
    const p = pos[n.id];
    const g = el("g", { class: "node k-" + n.kind, "data-node": n.id, "data-kind": n.kind }, svg);
    el("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6 }, g);
    const t = el("text", { x: p.x + W / 2, y: p.y + H / 2 + 4, "text-anchor": "middle" }, g);
    t.textContent = n.label.length > 24 ? n.label.slice(0, 23) + "…" : n.label;
    el("title", {}, g).textContent = `${n.kind} ${n.label}`;
  }
}

function refresh() {
  fetch("api/status")
    .then((r) => r.json())
    .then((s) => {
      $("node").textContent = s.node_name ? "node " + s.node_name : "";
      const st = $("status");
      st.dataset.lost = s.lost_events;
      st.dataset.seen = s.seen_flows;
      st.className = s.lost_events > 0 ? "lossy" : "";
      st.textContent = `${s.num_flows}/${s.max_flows} flows stored, ${s.seen_flows} seen, ` +
        `${s.lost_events} lost`;
    })
    .catch(() => ($("status").textContent = "server unreachable"));
  if (!paused && source) {
    const q = query();
    fetch("api/map" + (q ? "?" + q : ""))
      .then((r) => (r.ok ? r.json() : null))
      .then((m) => m && drawMap(m))
      .catch(() => {});
  }
}

$("pause").addEventListener("click", () => {
  paused = !paused;
  const b = $("pause");
  b.textContent = paused ? "Resume" : "Pause";
  b.dataset.paused = paused;
  if (!paused) {
    for (const [kind, f] of pending) addRow(kind, f);
    pending = [];
    skipped = 0;
    refresh();
  }
  countRows();
});
form.addEventListener("submit", (e) => {
  e.preventDefault();
  connect();
});
$("clear").addEventListener("click", () => {
  form.reset();
  for (const el of form.elements) if (el.name) el.value = "";
  connect();
});

// Health probe results (Gatus's API, /api/v1/endpoints/statuses) where the process probes;
// the section stays hidden where it does not (404).
const HEALTH_MS = 5000;
async function health() {
  let list;
  try {
    const r = await fetch("api/v1/endpoints/statuses?pageSize=20");
    if (!r.ok) {
      $("health-section").hidden = true;
      return;
    }
    list = await r.json();
  } catch (_) {
    return;
  }
  $("health-section").hidden = false;
  const body = $("health-rows");
  body.replaceChildren();
  let healthy = 0;
  for (const ep of list) {
    const results = ep.results || [];
    const last = results[results.length - 1];
    if (last && last.success) healthy++;
    const tr = document.createElement("tr");
    tr.dataset.key = ep.key;
    tr.className = last && last.success ? "healthy" : "unhealthy";
    cell(tr, ep.group || "");
    cell(tr, ep.name || "");
    const bars = document.createElement("td");
    for (const r of results) {
      const b = document.createElement("span");
      b.className = "result " + (r.success ? "ok" : "fail");
      const conds = (r.conditionResults || [])
        .map((c) => (c.success ? "✓ " : "✗ ") + c.condition)
        .join("\n");
      b.title = r.timestamp + "\n" + conds + (r.errors ? "\n" + r.errors.join("\n") : "");
      bars.appendChild(b);
    }
    tr.appendChild(bars);
    let text = "-";
    if (last) {
      text = (last.success ? "ok" : "FAIL") + (last.status ? " " + last.status : "") +
        " " + Math.round(last.duration / 1e6) + " ms";
      if (last.errors) text += " " + last.errors.join("; ");
    }
    cell(tr, text);
    body.appendChild(tr);
  }
  $("health-count").textContent = healthy + " of " + list.length + " healthy";
}

fillForm();
connect();
refresh();
setInterval(refresh, REFRESH_MS);
health();
setInterval(health, HEALTH_MS);
