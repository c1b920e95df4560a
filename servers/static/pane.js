// rtlab teaching demo: what every pane shares. A transport's pane module (/static/transports/<name>.js)
// extends Pane; demo.js builds one pane per transport the server mounts. Every message is rendered with
// textContent (never as HTML); the page's Content-Security-Policy also makes HTML sinks throw.

export const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
export const LOG_LINES = 200; // wire log lines kept per pane
export const MESSAGES_KEPT = 200; // messages shown per pane
export const LATENCIES_KEPT = 1000; // samples behind the median
export const HISTORY_ON_JOIN = 20;
export const BURST_SIZE = 20;
export const CHART_SECONDS = 60;
export const RETRY_MS = 1000;

// The page cannot see the request headers the browser adds, so it rebuilds them from what it knows (user
// agent, languages, client hints) in the shape Chromium 156 sends them; other browsers differ by some tens of bytes.
export const encoder = new TextEncoder();
export const byteLength = (text) => encoder.encode(text).length;
export const nowMs = () => performance.timeOrigin + performance.now();

const params = new URLSearchParams(location.search);
export const room = ROOM_RE.test(params.get("room") || "") ? params.get("room") : "demo";
export const session = randomId();

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function formatBytes(n) {
  if (n < 10000) return `${Math.round(n).toLocaleString("en")} B`;
  if (n < 10e6) return `${(n / 1000).toFixed(1)} kB`;
  return `${(n / 1e6).toFixed(1)} MB`;
}

export function formatMs(ms) {
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 10000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

export function clockTime(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

// The response as it was on the wire, as far as fetch lets the page see it (same origin: all of it).
export function responseBytes(response, bodyBytes) {
  let head = `HTTP/1.1 ${response.status} ${response.statusText}\r\n`;
  for (const [name, value] of response.headers) head += `${name}: ${value}\r\n`;
  return byteLength(head) + 2 + bodyBytes;
}

export function headerLines(headers) {
  return headers.map(([name, value]) => `${name}: ${value}\r\n`).join("");
}

// What a browser says about itself on every request, as far as the page can know it.
function browserHeaders() {
  const languages = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  const acceptLanguage = languages
    .slice(0, 10)
    .map((lang, i) => (i ? `${lang};q=${(1 - i / 10).toFixed(1)}` : lang))
    .join(",");
  const hints = navigator.userAgentData; // Chromium's client hints, sent only where this exists
  return {
    userAgent: [["User-Agent", navigator.userAgent]],
    clientHints: hints
      ? [
          ["sec-ch-ua-platform", `"${hints.platform}"`],
          ["sec-ch-ua", hints.brands.map((b) => `"${b.brand}";v="${b.version}"`).join(", ")],
          ["sec-ch-ua-mobile", hints.mobile ? "?1" : "?0"],
        ]
      : [],
    accept: [
      ["Accept-Encoding", "gzip, deflate, br, zstd"],
      ["Accept-Language", acceptLanguage],
    ],
  };
}
export const BROWSER = browserHeaders();
export const NO_CACHE = [["Pragma", "no-cache"], ["Cache-Control", "no-cache"]]; // what cache: "no-store" adds

/** The protocol a finished request went over ("h2", "http/1.1"), from the browser's resource timing; "" unknown. */
export function protocolOf(url) {
  const entries = performance.getEntriesByName(new URL(url, location.href).href, "resource");
  const last = entries[entries.length - 1];
  if (performance.getEntriesByType("resource").length > 200) performance.clearResourceTimings(); // bounded
  return last && last.nextHopProtocol ? last.nextHopProtocol : "";
}

export function requestBytes(method, url, body) {
  const bodyBytes = body === undefined ? 0 : byteLength(body);
  const headers = [
    ["Host", location.host],
    ["Connection", "keep-alive"],
    ...(body === undefined ? [] : [["Content-Length", String(bodyBytes)]]),
    ...NO_CACHE,
    ...BROWSER.clientHints,
    ...BROWSER.userAgent,
    ...(body === undefined ? [] : [["Content-Type", "application/json"]]),
    ["Accept", "*/*"],
    ...(body === undefined ? [] : [["Origin", location.origin]]),
    ["Sec-Fetch-Site", "same-origin"],
    ["Sec-Fetch-Mode", "cors"],
    ["Sec-Fetch-Dest", "empty"],
    ...BROWSER.accept,
  ];
  return byteLength(`${method} ${url} HTTP/1.1\r\n${headerLines(headers)}\r\n`) + bodyBytes;
}


/**
 * A new pane's parts, empty, as every page shows them (the single demo and the cluster page): its heading, its
 * explanation, controls, status line, counters, byte table, messages, send form and wire log. Built element by
 * element: the pages' Content-Security-Policy makes every string-to-HTML sink throw.
 */
export function paneElement() {
  const root = el("article", "pane");
  const heading = el("h2");
  heading.append(el("span", "swatch"), el("span", "label"));
  const status = el("div", "status", "starting…");
  status.setAttribute("aria-live", "off");
  const stats = el("dl", "stats");
  for (const [term, name, value] of [["HTTP requests", "requests", "0"], ["empty polls", "empty", "0"],
    ["frames ↑ / ↓", "frames", "—"], ["latency last / median", "latency", "—"]]) {
    const row = el("div");
    row.append(el("dt", "", term), el("dd", `stat-${name}`, value));
    stats.append(row);
  }
  const bytes = el("table", "bytes");
  const head = el("tr");
  head.append(el("th"), el("th", "", "sent"), el("th", "", "received"));
  bytes.append(el("thead"), el("tbody"));
  bytes.tHead.append(head);
  for (const [kind, label, value] of [["exact", "exact", "—"], ["est", "est.", "0 B"]]) {
    const row = el("tr", kind === "exact" ? "bytes-exact" : "bytes-estimate");
    row.append(el("th", "", label), el("td", `stat-${kind}-out`, value), el("td", `stat-${kind}-in`, value));
    bytes.tBodies[0].append(row);
  }
  const messages = el("ol", "messages");
  messages.setAttribute("aria-label", "messages");
  const form = el("form", "send");
  form.setAttribute("autocomplete", "off");
  const input = el("input");
  Object.assign(input, { name: "text", type: "text", maxLength: 4096, placeholder: "say something", required: true });
  input.setAttribute("aria-label", "message text");
  const button = el("button", "", "Send");
  button.type = "submit";
  form.append(input, button);
  const wireHeading = el("h3", "", "wire log ");
  wireHeading.append(el("span", "hint", "(newest first)"));
  const wire = el("ol", "wire");
  wire.setAttribute("aria-label", "wire log");
  root.append(heading, el("p", "explain"), el("div", "controls"), status, stats, bytes, messages, form, wireHeading, wire);
  return root;
}

/**
 * Fill `node` with a pane's explanation: an array of strings and [tag, text] pairs (e.g. ["strong",
 * "persistence"]), each rendered as text, so a module can emphasise words without writing markup.
 */
export function explain(node, parts) {
  node.replaceChildren();
  for (const part of parts) {
    if (typeof part === "string") node.append(part);
    else node.append(el(part[0], "", part[1]));
  }
}

/** One member of the room; subclasses say how it sends and how it learns of new messages. */
export class Pane {
  /**
   * `info` is this transport's entry from /demo/transports ({name, label, colour, summary, module});
   * `root` is its pane, cloned from the page's template, with .explain and .controls still empty.
   */
  constructor(info, root) {
    this.transport = info.name;
    this.info = info;
    // Each pane's member is named after its transport, or `info.member` where a page shows several of one transport.
    this.user = (info.member || info.name).slice(0, 32);
    this.clientId = `${session}-${info.member || info.name}`;
    this.root = root;
    this.lastId = 0;
    this.paused = false;
    this.counts = { requests: 0, empty: 0, framesUp: 0, framesDown: 0, estOut: 0, estIn: 0 };
    this.exact = null; // {sent, received} by this page, counted by the server when it can
    this.latencies = [];
    this.lastLatency = null;
    this.samples = { requests: [], bytes: [] };
    this.prev = { requests: 0, bytes: 0, exact: false };
    this.node = (selector) => this.root.querySelector(selector);
    explain(this.node(".explain"), this.constructor.explain || [info.summary]);
    const controls = this.node(".controls");
    this.addControls(controls);
    this.pauseButton = el("button", "pause", "Pause");
    this.pauseButton.type = "button";
    this.pauseButton.addEventListener("click", () => (this.paused ? this.resume() : this.pause()));
    const burst = el("button", "burst", `Burst \u00d7${BURST_SIZE}`);
    burst.type = "button";
    burst.addEventListener("click", () => this.burst());
    controls.append(this.pauseButton, burst);
    this.node("form.send").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = event.target.elements.text;
      const text = input.value;
      if (!text) return;
      input.value = "";
      this.send(text);
    });
  }

  /** Add controls of this transport's own (a select, say) to `box`; the pause and burst buttons follow. */
  addControls(box) {}

  /** A labelled select of [value, text] options in `box`; returns the select. */
  select(box, label, className, options, selected) {
    const wrap = el("label", "", `${label} `);
    const select = el("select", className);
    for (const [value, text] of options) {
      const option = el("option", "", text);
      option.value = String(value);
      option.selected = value === selected;
      select.append(option);
    }
    wrap.append(select);
    box.append(wrap);
    return select;
  }

  /** Start receiving; called once the pane is on the page. */
  async start() {}

  /** Send one message from this pane's member. By default an ordinary POST, as the one-way transports (polling, event streams) do. */
  async send(text) {
    try {
      await this.http("POST", "messages", "", { user: this.user, text, sent_at: nowMs() / 1000 });
    } catch (_) {
      // logged
    }
  }

  statusText() {
    return "";
  }

  /** Mark the pane live: joined, and receiving as its transport does (tests and the curious wait on it). */
  live() {
    this.root.dataset.state = "live";
  }

  path(route, query = "") {
    const sep = query ? "&" : "";
    return `/rooms/${encodeURIComponent(room)}/${route}?${query}${sep}client=${this.clientId}`;
  }

  // --- the wire log and counters -----------------------------------------------------------------

  log(direction, what, detail, kind = "") {
    const list = this.node("ol.wire");
    const line = el("li", kind);
    line.append(
      el("span", "t", clockTime(Date.now())),
      el("span", "dir", direction),
      el("span", "what", what),
      el("span", "detail", detail),
    );
    list.prepend(line);
    while (list.childElementCount > LOG_LINES) list.lastElementChild.remove();
    this.render();
    if (Pane.onWire) Pane.onWire();
  }

  /** Make one HTTP request, count it, log it, and return {response, body, text} (body is parsed JSON). */
  async http(method, route, query, payload, signal) {
    const url = this.path(route, query);
    const body = payload === undefined ? undefined : JSON.stringify(payload);
    const started = performance.now();
    const out = requestBytes(method, url, body);
    this.counts.requests += 1;
    this.counts.estOut += out;
    const shown = `${method} ${route}${query ? "?" + query : ""}`;
    let response;
    let text;
    try {
      response = await fetch(url, {
        method,
        body,
        signal,
        cache: "no-store",
        headers: body === undefined ? {} : { "Content-Type": "application/json" },
      });
      text = await response.text();
    } catch (error) {
      const aborted = error && error.name === "AbortError";
      const why = aborted ? `abandoned by the page (${this.abortReason || "aborted"})` : "network error";
      this.log("↑", shown, `${why} · ↑~${formatBytes(out)}`, aborted ? "" : "err");
      throw error;
    }
    const ms = performance.now() - started;
    const inBytes = responseBytes(response, byteLength(text));
    this.counts.estIn += inBytes;
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch (_) {
      parsed = null;
    }
    let note = "";
    if (!response.ok) note = ` · ${parsed && typeof parsed.error === "string" ? parsed.error : response.statusText}`;
    else if (parsed && Array.isArray(parsed.messages)) {
      note = parsed.messages.length ? ` · ${parsed.messages.length} msg${parsed.messages.length > 1 ? "s" : ""}` : " · empty";
    }
    const protocol = protocolOf(url);
    this.log(
      "⇅",
      shown,
      `${response.status} · ↑~${formatBytes(out)} ↓${formatBytes(inBytes)} · ${formatMs(ms)}${note}${protocol ? ` · ${protocol}` : ""}`,
      response.ok ? (note === " · empty" ? "empty" : "") : "err",
    );
    return { response, body: parsed };
  }

  // --- messages ----------------------------------------------------------------------------------

  receive(messages, live) {
    const list = this.node("ol.messages");
    const receivedAt = nowMs();
    for (const m of messages) {
      if (m && Pane.onMessage) Pane.onMessage(this, m); // every message as it came, before the page drops repeats
      if (!m || typeof m.id !== "number" || m.id <= this.lastId) continue; // already shown
      this.lastId = m.id;
      const item = el("li", live ? "" : "old");
      item.dataset.id = String(m.id);
      item.append(el("span", "id", `#${m.id}`), el("span", "user", String(m.user)), el("span", "text", String(m.text)));
      if (live && typeof m.sent_at === "number") {
        const latency = receivedAt - m.sent_at * 1000;
        this.lastLatency = latency;
        this.latencies.push(latency);
        if (this.latencies.length > LATENCIES_KEPT) this.latencies.shift();
        item.append(el("span", "lat", formatMs(latency)));
      }
      const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
      list.append(item);
      while (list.childElementCount > MESSAGES_KEPT) list.firstElementChild.remove();
      if (atBottom) list.scrollTop = list.scrollHeight;
    }
    this.render();
  }

  async join() {
    try {
      const { body } = await this.http("GET", "history", `limit=${HISTORY_ON_JOIN}`);
      if (body && Array.isArray(body.messages)) this.receive(body.messages, false);
    } catch (_) {
      // A failed join is in the wire log; the transport loop starts from id 0 and catches up.
    }
  }

  async burst() {
    for (let i = 1; i <= BURST_SIZE; i += 1) {
      await this.send(`burst ${i}/${BURST_SIZE} from ${this.transport}`);
    }
  }

  pause() {
    this.paused = true;
    this.pauseButton.textContent = "Resume";
    this.root.classList.add("paused");
    this.render();
  }

  resume() {
    this.paused = false;
    this.pauseButton.textContent = "Pause";
    this.root.classList.remove("paused");
    this.render();
  }

  // --- display -----------------------------------------------------------------------------------

  totalBytes() {
    if (this.exact) return this.exact.sent + this.exact.received;
    return this.counts.estIn + this.counts.estOut;
  }

  sample() {
    const requests = this.counts.requests;
    const bytes = this.totalBytes();
    const exact = Boolean(this.exact);
    // When exact counts first arrive the total jumps from one source to the other: not traffic.
    const bytesDelta = exact === this.prev.exact ? bytes - this.prev.bytes : 0;
    for (const [name, value] of [["requests", requests - this.prev.requests], ["bytes", bytesDelta]]) {
      const series = this.samples[name];
      series.push(Math.max(0, value));
      if (series.length > CHART_SECONDS) series.shift();
    }
    this.prev = { requests, bytes, exact };
  }

  render() {
    const c = this.counts;
    this.node(".stat-requests").textContent = c.requests.toLocaleString("en");
    this.node(".stat-empty").textContent = this.emptyText();
    this.node(".stat-frames").textContent = this.framesText();
    this.node(".stat-est-out").textContent = `~${formatBytes(c.estOut)}`;
    this.node(".stat-est-in").textContent = `~${formatBytes(c.estIn)}`;
    this.node(".stat-exact-out").textContent = this.exact ? formatBytes(this.exact.sent) : "—";
    this.node(".stat-exact-in").textContent = this.exact ? formatBytes(this.exact.received) : "—";
    this.node(".stat-latency").textContent =
      this.lastLatency === null ? "—" : `${formatMs(this.lastLatency)} / ${formatMs(median(this.latencies))}`;
    this.node(".status").textContent = this.paused ? "paused" : this.statusText();
  }

  emptyText() {
    return this.counts.empty.toLocaleString("en");
  }

  framesText() {
    return "none (plain HTTP)";
  }
}
