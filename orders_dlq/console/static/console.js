// The console page: three views (overview, list, one dead letter) over the JSON endpoints.
"use strict";

const $ = (id) => document.getElementById(id);
let state = { pageRequest: 0, readOnly: false, next: null, query: "", chart: null, chartNames: "", letter: null, timer: null };

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json", "X-Requested-By": "dlq-console" },
                     body: JSON.stringify(body) });
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

// Bytes come as {size, text, hex}: the text when they are readable, else the hex.
function shown(value) {
  if (value === null || value === undefined || typeof value !== "object") return value;
  if ("hex" in value) return value.text ?? `hex ${value.hex}${value.cut ? "..." : ""}`;
  if (Array.isArray(value)) return value.map((item) => item.name ? `${item.name}=${shown(item.value)}` : shown(item)).join(", ");
  return JSON.stringify(value);
}

function fillTable(table, pairs) {
  table.replaceChildren();
  for (const [name, value] of pairs) {
    const row = document.createElement("tr");
    cell(row, name);
    cell(row, shown(value));
    table.appendChild(row);
  }
}

function age(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor(seconds % 3600 / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor(seconds % 86400 / 3600)}h`;
}

// -- overview ---------------------------------------------------------------------------------------
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#637939", "#aaaaaa"];

function drawChart(chart) {
  const names = Object.keys(chart.series);
  const data = [chart.times, ...names.map((name) => chart.series[name])];
  const key = names.join("\u0000") + "/" + chart.step_minutes;
  if (state.chart && state.chartNames === key) { state.chart.setData(data); return; }
  if (state.chart) state.chart.destroy();
  state.chartNames = key;
  const width = Math.max(400, Math.min(1100, document.body.clientWidth - 40));
  state.chart = new uPlot({
    width, height: 260,
    series: [{}, ...names.map((name, i) => ({ label: name, stroke: COLOURS[i % COLOURS.length], width: 2,
                                              points: { show: false } }))],
    axes: [{}, { label: chart.step_minutes > 1 ? `per ${chart.step_minutes} minutes` : "per minute" }],
    scales: { x: { time: true } },
  }, data, $("chart"));
}

async function loadOverview() {
  try {
    const o = await api("/api/overview");
    state.overviewLoaded = true;
    showError("");
    $("topic").textContent = o.dlq_topic;
    state.readOnly = o.read_only;
    $("readonly").hidden = !o.read_only;
    $("ov-total").textContent = o.dead_letters;
    $("ov-open").textContent = o.status.open;
    $("ov-resolved").textContent = o.status.resolved;
    $("ov-replayed").textContent = o.status.replayed;
    $("ov-discarded").textContent = o.status.discarded;
    $("ov-unreadable").textContent = (o.by_kind.unreadable || 0) + (o.by_kind.tombstone || 0);
    $("ov-rate").textContent = o.rate_per_minute;
    $("ov-oldest").textContent = o.oldest_open ? `${age(o.oldest_open.age_seconds)} ago` : (o.oldest_known ? "none" : "older than the 1000 oldest");
    $("ov-lag").textContent = o.lag.lag === null ? "-" : o.lag.lag;
    $("ov-lag").title = `${o.lag.group} on ${o.lag.topic} ${o.lag.note || ""}`;
    $("ov-spool").textContent = o.spool.waiting;
    const ix = o.indexing;
    $("ov-indexing").textContent = ix.done ? `indexed ${ix.indexed} message(s), following` :
      `indexing ${ix.indexed} of ${ix.end} message(s)...` + (ix.error ? ` (${ix.error})` : "");
    $("ov-memory").textContent = o.rss_bytes ? `memory ${(o.rss_bytes / 1048576).toFixed(0)} MB` : "";
    fillTable($("ov-stages"), Object.entries(o.by_stage));
    fillTable($("ov-reasons"), Object.entries(o.by_reason));
    drawChart(o.chart);
  } catch (e) { showError(e.message); }
}

// -- list -------------------------------------------------------------------------------------------
function filterQuery() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("filters"))) {
    if (value !== "" && name !== "partition" && name !== "offset") params.set(name, value);
  }
  return params;
}

function addRows(rows) {
  const body = $("rows").querySelector("tbody");
  for (const r of rows) {
    const row = document.createElement("tr");
    row.dataset.position = `${r.partition}@${r.offset}`;
    const link = document.createElement("a");
    link.href = `#letter/${r.partition}/${r.offset}`;
    link.textContent = `[${r.partition}]@${r.offset}`;
    const first = cell(row, ""); first.appendChild(link);
    if (r.unreadable !== null) {
      row.className = "unreadable";
      cell(row, r.kind);
      const why = cell(row, `not a dead letter: ${r.unreadable}`);
      why.colSpan = 5;
    } else {
      cell(row, r.status); cell(row, r.failed_at); cell(row, r.stage);
      cell(row, r.kind === "orders_dlq" ? r.reason : `${r.reason} (${r.kind})`);
      cell(row, r.order_id); cell(row, r.product);
    }
    body.appendChild(row);
  }
}

async function loadPage(fresh) {
  const request = ++state.pageRequest;  // a newer "Show" makes the answer to an older one stale
  const params = filterQuery();
  const form = new FormData($("filters"));
  if (fresh) {
    state.next = null;
    if (form.get("partition")) params.set("partition", form.get("partition"));
    if (form.get("offset")) params.set("offset", form.get("offset"));
  } else if (state.next) {
    params.set("partition", state.next.partition);
    params.set("offset", state.next.offset);
  }
  $("export").hidden = state.readOnly;
  $("export").href = "/api/export?" + filterQuery().toString();
  try {
    const page = await api("/api/list?" + params.toString());
    if (request !== state.pageRequest) return;
    if (fresh) $("rows").querySelector("tbody").replaceChildren();
    showError("");
    addRows(page.rows);
    state.next = page.next;
    $("more").hidden = !page.next;
    const shown = $("rows").querySelector("tbody").children.length;
    $("list-info").textContent = `${shown} shown, ${page.scanned} message(s) read for this page in ` +
      `${page.elapsed_seconds}s` + (page.next ? `; continues at [${page.next.partition}]@${page.next.offset}` : "; end of the DLQ");
  } catch (e) { showError(e.message); }
}

// -- one dead letter --------------------------------------------------------------------------------
function headerPairs(headers) {
  const pairs = [];
  for (const [convention, list] of Object.entries(headers)) {
    for (const h of list) {
      pairs.push([`${convention}: ${h.name}`, h.value]);
    }
  }
  return pairs;
}

async function loadLetter(partition, offset) {
  if (!state.overviewLoaded) await loadOverview();  // read-only or not decides which actions show
  $("letter-title").textContent = `[${partition}]@${offset}`;
  $("replay-result").textContent = ""; $("resolve-result").textContent = "";
  $("replay").disabled = true; $("force-box").hidden = true; $("force").checked = false;
  try {
    const d = await api(`/api/letter/${partition}/${offset}`);
    showError("");
    state.letter = d;
    $("letter-title").textContent = d.position;
    const mark = d.mark ? `${d.mark.status} by ${d.mark.by} at ${d.mark.at}${d.mark.note ? ": " + d.mark.note : ""}` : "open";
    $("letter-kind").textContent = d.row.unreadable !== null
      ? `not a dead letter (${d.row.kind}): ${d.row.unreadable}`
      : `written by ${d.row.kind}; status: ${mark}`;
    $("letter-actions").hidden = state.readOnly || d.row.unreadable !== null;
    fillTable($("letter-fields"), d.dead_letter ? Object.entries(d.dead_letter) : [["key", d.key], ["value", d.value]]);
    fillTable($("letter-order"), d.order ? Object.entries(d.order) : [["not decodable", d.order_error || "no original value"]]);
    fillTable($("letter-headers"), headerPairs(d.headers));
    $("letter-hex").textContent = d.hex.length ? d.hex.join("\n") : "(no bytes)";
  } catch (e) { showError(e.message); }
}

async function replay(dryRun) {
  const d = state.letter;
  try {
    const r = await post("/api/replay", { partition: d.row.partition, offset: d.row.offset, dry_run: dryRun,
                                          force: $("force").checked });
    showError("");
    $("replay-result").textContent = (dryRun ? "dry run: " : "") + r.action +
      (r.target ? ` -> ${r.target}` : "") + (r.why ? ` (${r.why})` : "") + "\n" + r.summary;
    if (dryRun) {
      const marked = r.action === "already_replayed" || r.action === "already_handled";
      $("force-box").hidden = !marked;
      $("force-text").textContent = marked ? `It is marked (${r.why}). Replay it anyway.` : "";
      // A marked one (replayed, resolved, discarded) is sent again only once the box is ticked.
      $("replay").disabled = !(r.action === "replay" || (marked && $("force").checked));
    } else {
      $("replay").disabled = true;
    }
  } catch (e) { showError(e.message); }
}

async function resolve(status) {
  const d = state.letter;
  try {
    const r = await post("/api/resolve", { partition: d.row.partition, offset: d.row.offset, status,
                                           note: $("note").value });
    showError("");
    $("resolve-result").textContent = `${r.status} by ${r.by} at ${r.at}`;
    $("letter-kind").textContent = `written by ${d.row.kind}; status: ${r.status} by ${r.by} at ${r.at}` +
      (r.note ? ": " + r.note : "");
  } catch (e) { showError(e.message); }
}

// -- routing ----------------------------------------------------------------------------------------
function route() {
  const hash = location.hash || "#overview";
  for (const id of ["overview", "list", "letter"]) $(id).hidden = !hash.startsWith("#" + id);
  clearInterval(state.timer);
  if (hash.startsWith("#letter/")) {
    const [, partition, offset] = hash.split("/");
    loadLetter(partition, offset);
  } else if (hash.startsWith("#list")) {
    (state.overviewLoaded ? Promise.resolve() : loadOverview()).then(() => loadPage(true));
  } else {
    loadOverview();
    state.timer = setInterval(loadOverview, 2000);  // live: the index follows the DLQ
  }
}

$("filters").addEventListener("submit", (e) => { e.preventDefault(); loadPage(true); });
$("more").addEventListener("click", () => loadPage(false));
$("preview").addEventListener("click", () => replay(true));
$("replay").addEventListener("click", () => replay(false));
$("force").addEventListener("change", () => { $("replay").disabled = !$("force").checked; });
$("resolve").addEventListener("click", () => resolve("resolved"));
$("discard").addEventListener("click", () => resolve("discarded"));
window.addEventListener("hashchange", route);
route();
