// rtlab teaching demo: one room, one member per transport the server mounts, side by side. The panes come
// from /demo/transports (the transports /healthz lists, with label, colour and pane module); each module
// extends pane.js's Pane. Every message is rendered with textContent (never as HTML); the page's
// Content-Security-Policy also makes HTML sinks throw.

import { CHART_SECONDS, Pane, el, formatBytes, paneElement, room } from "/static/pane.js";

// --- charts: drawn by hand on small canvases, one scale per row so transports compare ---------------

function drawChart(canvas, values, max, color, unit, total) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const left = 6;
  const top = 18;
  const bottom = height - 16;
  const right = width - 6;
  ctx.strokeStyle = "#d0d4da";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(left, bottom + 0.5);
  ctx.lineTo(right, bottom + 0.5);
  ctx.stroke();
  ctx.fillStyle = "#555";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(`scale: 0 – ${unit(max)}`, left, 12);
  ctx.fillText(`−${CHART_SECONDS} s`, left, height - 3);
  const now = "now";
  ctx.fillText(now, right - ctx.measureText(now).width, height - 3);
  const label = `last ${CHART_SECONDS} s: ${total(values.reduce((a, b) => a + b, 0))}`;
  ctx.fillStyle = color;
  ctx.fillText(label, right - ctx.measureText(label).width, 12);
  if (!values.length) return;
  // One bar per second: a poll every 2 s reads as a bar every other second.
  const step = (right - left) / CHART_SECONDS;
  const barWidth = Math.max(1, step * 0.7);
  ctx.fillStyle = color;
  values.forEach((v, i) => {
    const x = right - (values.length - i) * step + (step - barWidth) / 2;
    const h = max > 0 ? Math.min(1, v / max) * (bottom - top) : 0;
    if (h > 0) ctx.fillRect(x, bottom - Math.max(1, h), barWidth, Math.max(1, h));
  });
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 5, 10]) if (value <= m * power) return m * power;
  return 10 * power;
}

// --- exact bytes: counted by the server per client id, when the server offers it -------------------

async function refreshExact(panes) {
  const ids = panes.map((p) => p.clientId).join(",");
  let response;
  try {
    response = await fetch(`/demo/clients/bytes?ids=${ids}`, { cache: "no-store" });
  } catch (_) {
    return true; // try again next second
  }
  if (!response.ok) return response.status >= 500; // 4xx: asking again will not help
  let body;
  try {
    body = await response.json();
  } catch (_) {
    return true;
  }
  if (!body || body.exact !== true) return false; // this server does not count bytes (--no-metrics)
  for (const pane of panes) {
    const counts = body && body.clients && body.clients[pane.clientId];
    if (counts && Number.isFinite(counts.bytes_in) && Number.isFinite(counts.bytes_out)) {
      // The server's "in" is what this page sent.
      pane.exact = { sent: counts.bytes_in, received: counts.bytes_out };
    }
  }
  return true;
}

/** The pane of a transport that brings no browser module: what it is, without a client to show it. */
class NoClientPane extends Pane {
  async start() {
    this.log("·", "no browser client", "this transport has no pane module; its traffic shows in Locust and the notebooks");
  }

  async send(_text) {
    this.log("↑", "not sent", "this pane has no client of its own", "err");
  }

  statusText() {
    return "no browser client";
  }
}

async function loadPanes() {
  const response = await fetch("/demo/transports", { cache: "no-store" });
  const { transports } = await response.json();
  const container = document.getElementById("view-panes");
  const panes = [];
  for (const info of transports) {
    const root = paneElement();
    root.id = `pane-${info.name}`;
    root.dataset.transport = info.name;
    root.style.setProperty("--accent", info.colour); // CSSOM, not an inline style: allowed by the CSP
    root.querySelector(".label").textContent = info.label;
    container.append(root);
    let Kind = NoClientPane;
    if (info.module) {
      try {
        Kind = (await import(info.module)).default;
      } catch (error) {
        console.error(`pane module ${info.module}`, error);
      }
    }
    panes.push(new Kind(info, root));
  }
  return panes;
}

function buildCharts(panes) {
  const grid = document.querySelector(".chart-grid");
  grid.style.setProperty("--columns", String(panes.length));
  grid.append(el("div", "chart-head"));
  for (const pane of panes) {
    const head = el("div", "chart-head");
    head.dataset.transport = pane.transport;
    head.style.setProperty("--accent", pane.info.colour);
    head.append(el("span", "swatch"), pane.info.label);
    grid.append(head);
  }
  for (const [series, label] of [["requests", "HTTP requests per second"], ["bytes", "bytes per second, both directions"]]) {
    const rowLabel = el("div", "chart-row-label", label);
    if (series === "bytes") rowLabel.id = "bytes-row-label";
    grid.append(rowLabel);
    for (const pane of panes) {
      const canvas = el("canvas", "chart");
      canvas.dataset.transport = pane.transport;
      canvas.dataset.series = series;
      canvas.width = 360;
      canvas.height = 150;
      canvas.style.setProperty("--accent", pane.info.colour);
      grid.append(canvas);
    }
  }
}

async function main() {
  document.getElementById("room-name").textContent = room;
  document.title = `rtlab demo — room ${room}`;
  const panes = await loadPanes();
  document.getElementById("pane-count").textContent = `${panes.length} transport${panes.length === 1 ? "" : "s"}`;
  buildCharts(panes);
  panes.forEach((p) => p.render());

  const views = { panes: document.getElementById("view-panes"), charts: document.getElementById("view-charts") };
  let current = "panes";
  for (const tab of document.querySelectorAll(".view-tab")) {
    tab.addEventListener("click", () => {
      current = tab.dataset.view;
      for (const [name, view] of Object.entries(views)) view.hidden = name !== current;
      for (const other of document.querySelectorAll(".view-tab")) other.setAttribute("aria-pressed", String(other === tab));
      if (current === "charts") drawCharts();
    });
  }

  let exactAvailable = true;
  const byteSource = document.getElementById("byte-source");
  // Over HTTPS (make demo TLS=1) a proxy is between: the page's protocol, and the server counts its side only.
  const navigation = performance.getEntriesByType("navigation")[0];
  const proxied = location.protocol === "https:";
  document.getElementById("page-protocol").textContent =
    `page over ${navigation && navigation.nextHopProtocol ? navigation.nextHopProtocol : "?"}${proxied ? " and TLS" : ""}`;
  const byteRowLabel = document.getElementById("bytes-row-label");
  // Ask for exact counts soon after traffic too, not only every second, so they keep up with the log.
  let exactTimer = null;
  Pane.onWire = () => {
    if (!exactAvailable || exactTimer !== null) return;
    exactTimer = setTimeout(async () => {
      exactAvailable = await refreshExact(panes);
      exactTimer = null;
      panes.forEach((p) => p.render());
    }, 100);
  };

  function drawCharts() {
    for (const series of ["requests", "bytes"]) {
      const max = niceMax(Math.max(0, ...panes.flatMap((p) => p.samples[series])));
      const unit = series === "requests" ? (v) => `${Number(v.toFixed(1))}/s` : (v) => `${formatBytes(v)}/s`;
      const total = series === "requests" ? (v) => `${v} requests` : (v) => formatBytes(v);
      for (const pane of panes) {
        const canvas = document.querySelector(`canvas[data-transport="${pane.transport}"][data-series="${series}"]`);
        drawChart(canvas, pane.samples[series], max, pane.info.colour, unit, total);
      }
    }
  }

  setInterval(async () => {
    if (exactAvailable) exactAvailable = await refreshExact(panes);
    const exact = panes.every((p) => p.exact);
    byteSource.textContent = !exact ? "bytes: page estimates"
      : proxied ? "bytes: exact, counted by the server behind the proxy (its HTTP/1.1, not this page's)"
      : "bytes: exact, counted by the server";
    byteRowLabel.textContent = `bytes per second, both directions (${exact ? "exact" : "estimated"})`;
    for (const pane of panes) {
      pane.root.classList.toggle("has-exact", Boolean(pane.exact));
      pane.sample();
    }
    if (current === "charts") drawCharts();
  }, 1000);
  setInterval(() => panes.forEach((p) => p.render()), 250);

  for (const pane of panes) pane.start();
  window.rtlabDemo = { room, panes }; // for the curious, in the console
}

main();
