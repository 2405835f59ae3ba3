// The chc dashboard: one EventSource on /events (init, then a sample a second, then
// end), the chain drawn as SVG boxes, two uPlot charts, two tables.  Nothing is
// fetched from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const num = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const MAX_POINTS = 600;
const MAX_ROWS = 50;

let graph = null;
let series = [[], [], [], [], []];      // time, pps in, pps out, latency mean, latency max
let charts = [];
let stopped = false;

function node(tag, attrs, parent, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }

function setState(text, cls) {
  const p = $("state");
  p.textContent = text;
  p.className = "pill " + (cls || "");
}

// -- the chain ------------------------------------------------------------------------
const BOX_W = 250, GAP_X = 70, ROW = 18, HEAD = 38, GAP_Y = 16, X0 = 70;

function drawGraph(latest) {
  const svg = $("graph");
  svg.textContent = "";
  const defs = node("defs", {}, svg);
  const marker = node("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
                                  markerWidth: 7, markerHeight: 7, orient: "auto" }, defs);
  node("path", { d: "M0,0 L10,5 L0,10 z", fill: "#6b7280" }, marker);
  const insts = latest ? latest.instances : [];
  const byVertex = {};
  for (const i of insts) (byVertex[i.vertex] = byVertex[i.vertex] || []).push(i);
  const maxPps = Math.max(1, ...insts.map((i) => i.pps));
  const columns = {};
  for (const v of graph.vertices) (columns[v.column] = columns[v.column] || []).push(v);
  const pos = {};
  let height = 0, width = 0;
  for (const [c, vs] of Object.entries(columns)) {
    let y = 8;
    for (const v of vs) {
      const rows = Math.max(1, (byVertex[v.name] || []).length);
      const h = HEAD + rows * ROW + 6;
      pos[v.name] = { x: X0 + (Number(c) - 1) * (BOX_W + GAP_X), y, w: BOX_W, h };
      y += h + GAP_Y;
      width = Math.max(width, pos[v.name].x + BOX_W + 10);
    }
    height = Math.max(height, y);
  }
  const entries = graph.edges.filter((e) => e.from === "root").map((e) => pos[e.to]).filter(Boolean);
  const ry = entries.length ? entries.reduce((a, p) => a + p.y + p.h / 2, 0) / entries.length : 30;
  pos.root = { x: 14, y: ry - 8, w: 16, h: 16 };
  const root = node("g", { class: "root" }, svg);
  node("circle", { cx: 22, cy: ry, r: 8 }, root);
  node("text", { x: 8, y: ry + 24 }, root, "root");
  for (const e of graph.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + Math.min(b.h / 2, HEAD / 2 + 6);
    const mid = (x1 + x2) / 2;
    node("path", { class: "edge " + e.kind, d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 1},${y2}`,
                   "marker-end": "url(#arrow)" }, svg);
  }
  for (const v of graph.vertices) {
    const p = pos[v.name];
    const g = node("g", { class: "vertex" + (v.offpath ? " offpath" : ""), "data-vertex": v.name,
                          transform: `translate(${p.x},${p.y})` }, svg);
    node("rect", { class: "box", width: p.w, height: p.h, rx: 6 }, g);
    node("text", { class: "name", x: 10, y: 17 }, g, v.name);
    node("text", { class: "nf", x: 10, y: 31 }, g, v.nf + (v.offpath ? " (off-path)" : ""));
    (byVertex[v.name] || []).forEach((inst, k) => {
      const y = HEAD + k * ROW;
      const row = node("g", { class: "instance " + inst.state, "data-instance": inst.instance,
                              "data-direction": inst.direction, "data-pps": inst.pps,
                              "data-queue": inst.queue }, g);
      node("rect", { class: "bar", x: 10, y: y + 3, height: ROW - 6, width: 1 + 90 * inst.pps / maxPps }, row);
      const arrow = inst.direction === "reverse" ? "\u21a9" : "\u25b8";
      const label = `#${inst.instance} ${arrow} ${num.format(inst.pps)}/s`;
      node("text", { x: 106, y: y + 13 }, row, label + (inst.state === "active" ? "" : ` (${inst.state})`));
      node("text", { class: inst.queue ? "queued" : "", x: p.w - 10, y: y + 13, "text-anchor": "end" }, row,
           `q ${num.format(inst.queue)}`);
    });
  }
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, 300)} ${Math.max(height, 60)}`);
  svg.style.height = Math.max(height, 60) + "px";
  svg.style.maxWidth = Math.max(width, 300) + "px";
}

// -- charts ---------------------------------------------------------------------------
function makeCharts() {
  charts.forEach((c) => c.destroy());
  const w = (id) => Math.max(300, $(id).parentElement.clientWidth - 24);
  const common = (id) => ({ width: w(id), height: 220, legend: { live: false },
                            axes: [{}, { size: 60 }], scales: { x: { time: true } } });
  charts = [
    new uPlot({ ...common("throughput"), series: [{}, { label: "in", stroke: "#4f46e5", width: 2 },
                                                 { label: "out", stroke: "#15803d", width: 2 }] },
              [series[0], series[1], series[2]], $("throughput")),
    new uPlot({ ...common("latency-chart"), series: [{}, { label: "mean", stroke: "#b45309", width: 2 },
                                                    { label: "max", stroke: "#dc2626", width: 1, dash: [4, 3] }] },
              [series[0], series[3], series[4]], $("latency-chart")),
  ];
}

function redrawCharts() {
  if (!charts.length) return;
  charts[0].setData([series[0], series[1], series[2]]);
  charts[1].setData([series[0], series[3], series[4]]);
}

function addPoint(p) {
  p.forEach((v, k) => series[k].push(v));
  if (series[0].length > MAX_POINTS) series.forEach((s) => s.shift());
}

// -- tables ---------------------------------------------------------------------------
function prepend(table, cells, fresh, detail) {
  const body = $(table).tBodies[0];
  const tr = document.createElement("tr");
  if (fresh) tr.className = "fresh";
  cells.forEach((c, k) => {
    const td = document.createElement("td");
    td.textContent = c;
    if (detail && k === cells.length - 1) td.className = "detail";
    tr.appendChild(td);
  });
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
}

function addAlert(a, fresh) {
  prepend("alerts", [clock(a.time), a.vertex, a.instance, a.kind, a.host, num.format(a.clock)], fresh);
}

const PLAIN = new Set(["kind", "vertex", "instance", "time", "vt"]);
function addEvent(e, fresh) {
  const detail = Object.entries(e).filter(([k]) => !PLAIN.has(k))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  prepend("events", [clock(e.time), e.kind, e.vertex, e.instance === null ? "" : e.instance, detail], fresh, true);
}

// -- samples --------------------------------------------------------------------------
function totals(s) {
  $("packets-in").textContent = num.format(s.packets_in);
  $("packets-out").textContent = num.format(s.packets_out);
  $("dropped").textContent = num.format(s.dropped);
  $("pps-in").textContent = num.format(s.pps_in);
  $("latency").textContent = s.latency_ms ? `${s.latency_ms.mean.toFixed(2)} ms` : "-";
  $("log").textContent = num.format(s.log);
  $("round-trips").textContent = num.format(s.store.round_trips);
  $("alerts-total").textContent = num.format(s.alerts_total);
  $("uptime").textContent = `${num.format(s.t)} s`;
}

function init(state) {
  graph = state.graph;
  $("title").textContent = state.title;
  document.title = `chc: ${state.title}`;
  series = [[], [], [], [], []];
  state.series.forEach(addPoint);
  for (const t of ["alerts", "events"]) $(t).tBodies[0].textContent = "";
  state.alerts.forEach((a) => addAlert(a, false));
  state.events.forEach((e) => addEvent(e, false));
  if (state.latest) totals(state.latest);
  drawGraph(state.latest);
  makeCharts();
  setState(state.running ? "live" : "stopped", state.running ? "live" : "stopped");
}

function sample(s) {
  const lat = s.latency_ms;
  addPoint([s.time, s.pps_in, s.pps_out, lat && lat.mean, lat && lat.max]);
  s.alerts.forEach((a) => addAlert({ ...a, time: s.time }, true));
  s.events.forEach((e) => addEvent({ ...e, time: s.time }, true));
  totals(s);
  drawGraph(s);
  redrawCharts();
}

const source = new EventSource("/events");
source.addEventListener("init", (e) => init(JSON.parse(e.data)));
source.addEventListener("sample", (e) => sample(JSON.parse(e.data)));
source.addEventListener("end", () => { stopped = true; setState("stopped", "stopped"); source.close(); });
source.onerror = () => { if (!stopped) setState("reconnecting"); };
window.addEventListener("resize", () => { if (graph) makeCharts(); });
