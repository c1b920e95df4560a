// rtlab teaching demo: one room, three members, one per transport. Every message is rendered with
// textContent (never as HTML); the page's Content-Security-Policy also makes HTML sinks throw.
"use strict";

(() => {
  const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
  const LOG_LINES = 200; // wire log lines kept per pane
  const MESSAGES_KEPT = 200; // messages shown per pane
  const LATENCIES_KEPT = 1000; // samples behind the median
  const HISTORY_ON_JOIN = 20;
  const BURST_SIZE = 20;
  const CHART_SECONDS = 60;
  const RETRY_MS = 1000;

  // The page cannot see the request headers the browser adds, nor the WebSocket upgrade answer, so it
  // rebuilds them from what it knows (user agent, languages, client hints) in the shape Chromium 156
  // sends them; other browsers differ by some tens of bytes. aiohttp 3.14's 101 answer is ~200 bytes.
  const UPGRADE_RESPONSE_EST = 200;

  const encoder = new TextEncoder();
  const byteLength = (text) => encoder.encode(text).length;
  const nowMs = () => performance.timeOrigin + performance.now();

  const params = new URLSearchParams(location.search);
  const room = ROOM_RE.test(params.get("room") || "") ? params.get("room") : "demo";
  const session = randomId();

  function randomId() {
    const bytes = crypto.getRandomValues(new Uint8Array(8));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function formatBytes(n) {
    if (n < 10000) return `${Math.round(n).toLocaleString("en")} B`;
    if (n < 10e6) return `${(n / 1000).toFixed(1)} kB`;
    return `${(n / 1e6).toFixed(1)} MB`;
  }

  function formatMs(ms) {
    if (ms < 10) return `${ms.toFixed(1)} ms`;
    if (ms < 10000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(1)} s`;
  }

  function clockTime(ms) {
    const d = new Date(ms);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  // WebSocket framing (RFC 6455): 2 header bytes, +2 or +8 for longer payloads, +4 mask client→server.
  function frameOverhead(payloadBytes, masked) {
    const length = payloadBytes < 126 ? 2 : payloadBytes < 65536 ? 4 : 10;
    return length + (masked ? 4 : 0);
  }

  // The response as it was on the wire, as far as fetch lets the page see it (same origin: all of it).
  function responseBytes(response, bodyBytes) {
    let head = `HTTP/1.1 ${response.status} ${response.statusText}\r\n`;
    for (const [name, value] of response.headers) head += `${name}: ${value}\r\n`;
    return byteLength(head) + 2 + bodyBytes;
  }

  function headerLines(headers) {
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
  const BROWSER = browserHeaders();
  const NO_CACHE = [["Pragma", "no-cache"], ["Cache-Control", "no-cache"]]; // what cache: "no-store" adds

  function requestBytes(method, url, body) {
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

  function upgradeBytes(url) {
    const headers = [
      ["Host", location.host],
      ["Connection", "Upgrade"],
      ...NO_CACHE,
      ...BROWSER.userAgent,
      ["Upgrade", "websocket"],
      ["Origin", location.origin],
      ["Sec-WebSocket-Version", "13"],
      ...BROWSER.accept,
      ["Sec-WebSocket-Key", "x".repeat(24)],
      ["Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"],
    ];
    return byteLength(`GET ${url} HTTP/1.1\r\n${headerLines(headers)}\r\n`);
  }

  /** One member of the room; subclasses say how it sends and how it learns of new messages. */
  class Pane {
    constructor(transport, user, suffix) {
      this.transport = transport;
      this.user = user;
      this.clientId = `${session}-${suffix}`;
      this.root = document.getElementById(`pane-${transport}`);
      this.root.append(document.getElementById("pane-body").content.cloneNode(true));
      this.lastId = 0;
      this.paused = false;
      this.counts = { requests: 0, empty: 0, framesUp: 0, framesDown: 0, estOut: 0, estIn: 0 };
      this.exact = null; // {sent, received} by this page, counted by the server when it can
      this.latencies = [];
      this.lastLatency = null;
      this.samples = { requests: [], bytes: [] };
      this.prev = { requests: 0, bytes: 0, exact: false };
      this.node = (selector) => this.root.querySelector(selector);
      this.pauseButton = this.node(".pause");
      this.pauseButton.addEventListener("click", () => (this.paused ? this.resume() : this.pause()));
      this.node(".burst").addEventListener("click", () => this.burst());
      this.node("form.send").addEventListener("submit", (event) => {
        event.preventDefault();
        const input = event.target.elements.text;
        const text = input.value;
        if (!text) return;
        input.value = "";
        this.send(text);
      });
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
      this.log(
        "⇅",
        shown,
        `${response.status} · ↑~${formatBytes(out)} ↓${formatBytes(inBytes)} · ${formatMs(ms)}${note}`,
        response.ok ? (note === " · empty" ? "empty" : "") : "err",
      );
      return { response, body: parsed };
    }

    // --- messages ----------------------------------------------------------------------------------

    receive(messages, live) {
      const list = this.node("ol.messages");
      const receivedAt = nowMs();
      for (const m of messages) {
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

  /** Short polling: ask at once, every interval, whether or not anything is new. */
  class ShortPollingPane extends Pane {
    constructor() {
      super("short-polling", "short-polling", "sp");
      this.interval = this.node(".poll-interval");
      this.interval.addEventListener("change", () => this.reschedule());
      this.timer = null;
      this.nextAt = null;
      this.polling = false;
    }

    async start() {
      await this.join();
      this.poll();
    }

    reschedule() {
      if (this.timer === null) return;
      clearTimeout(this.timer);
      this.schedule(Number(this.interval.value));
    }

    schedule(ms) {
      this.nextAt = performance.now() + ms;
      this.timer = setTimeout(() => this.poll(), ms);
    }

    async poll() {
      this.timer = null;
      if (this.paused || this.polling) return;
      this.polling = true;
      let delay = Number(this.interval.value);
      try {
        const { response, body } = await this.http("GET", "messages", `since=${this.lastId}`);
        if (response.ok && body && Array.isArray(body.messages)) {
          if (!body.messages.length) this.counts.empty += 1;
          this.receive(body.messages, true);
        }
      } catch (_) {
        delay = Math.max(delay, RETRY_MS);
      } finally {
        this.polling = false;
      }
      if (!this.paused) this.schedule(delay);
      this.render();
    }

    async send(text) {
      // The sender hears its own message only when a poll brings it back, like everyone else.
      try {
        await this.http("POST", "messages", "", { user: this.user, text, sent_at: nowMs() / 1000 });
      } catch (_) {
        // logged
      }
    }

    pause() {
      super.pause();
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = null;
    }

    resume() {
      super.resume();
      this.poll();
    }

    statusText() {
      if (this.polling) return "asking…";
      if (this.timer === null || this.nextAt === null) return "idle";
      return `next ask in ${Math.max(0, (this.nextAt - performance.now()) / 1000).toFixed(1)} s`;
    }
  }

  /** Long polling: ask, let the server hold the question, ask again the moment it answers. */
  class LongPollingPane extends Pane {
    constructor() {
      super("long-polling", "long-polling", "lp");
      this.wait = this.node(".long-poll-wait");
      this.wait.addEventListener("change", () => this.restart());
      this.controller = null;
      this.looping = false;
      this.heldSince = null;
    }

    async start() {
      await this.join();
      this.loop();
    }

    restart() {
      // A held request keeps its old wait; drop it so the next one asks with the new wait.
      this.abortReason = "wait changed";
      if (this.controller) this.controller.abort();
    }

    async loop() {
      if (this.looping) return;
      this.looping = true;
      while (!this.paused) {
        this.controller = new AbortController();
        this.heldSince = performance.now();
        try {
          const query = `since=${this.lastId}&wait=${this.wait.value}`;
          const { response, body } = await this.http("GET", "messages", query, undefined, this.controller.signal);
          if (response.ok && body && Array.isArray(body.messages)) {
            if (!body.messages.length) this.counts.empty += 1;
            this.receive(body.messages, true);
          } else {
            await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
          }
        } catch (error) {
          if (!(error && error.name === "AbortError")) await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
        } finally {
          this.controller = null;
          this.heldSince = null;
        }
      }
      this.looping = false;
      this.render();
    }

    async send(text) {
      try {
        await this.http("POST", "messages", "", { user: this.user, text, sent_at: nowMs() / 1000 });
      } catch (_) {
        // logged
      }
    }

    pause() {
      super.pause();
      this.abortReason = "paused";
      if (this.controller) this.controller.abort();
    }

    resume() {
      super.resume();
      this.loop();
    }

    statusText() {
      if (this.heldSince === null) return "idle";
      return `request held open for ${((performance.now() - this.heldSince) / 1000).toFixed(1)} s`;
    }
  }

  /** WebSocket: one upgrade, then frames both ways over the one open connection. */
  class WebSocketPane extends Pane {
    constructor() {
      super("websocket", "websocket", "ws");
      this.socket = null;
      this.openedAt = null;
    }

    async start() {
      await this.join();
      this.connect();
    }

    connect() {
      if (this.paused || this.socket) return;
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const query = `since=${this.lastId}`;
      const url = `${scheme}//${location.host}${this.path("ws", query)}`;
      const started = performance.now();
      this.counts.requests += 1;
      const upgrade = upgradeBytes(this.path("ws", query));
      this.counts.estOut += upgrade;
      this.log("↑", `GET ws?${query}`, `upgrade request · ↑~${formatBytes(upgrade)}`);
      const socket = new WebSocket(url);
      this.socket = socket;
      socket.addEventListener("open", () => {
        this.openedAt = performance.now();
        this.counts.estIn += UPGRADE_RESPONSE_EST;
        const ms = formatMs(this.openedAt - started);
        this.log("↓", "101 Switching Protocols", `connection stays open · ↓~${formatBytes(UPGRADE_RESPONSE_EST)} · ${ms}`);
      });
      socket.addEventListener("message", (event) => {
        if (typeof event.data !== "string") return;
        const size = byteLength(event.data);
        this.counts.framesDown += 1;
        this.counts.estIn += size + frameOverhead(size, false);
        let frame = null;
        try {
          frame = JSON.parse(event.data);
        } catch (_) {
          frame = null;
        }
        const what = frame && frame.type === "message" ? `frame #${frame.id}` : frame && frame.type === "error" ? "error frame" : "frame";
        const detail = frame && frame.type === "error" && typeof frame.error === "string" ? ` · ${frame.error}` : "";
        this.log("↓", what, `${formatBytes(size + frameOverhead(size, false))} (${size} payload)${detail}`, detail ? "err" : "");
        if (frame && frame.type === "message") this.receive([frame], true);
      });
      socket.addEventListener("close", (event) => {
        if (this.socket !== socket) return;
        this.socket = null;
        this.openedAt = null;
        this.log("↓", `closed ${event.code}`, event.reason || (this.paused ? "paused" : "reconnecting"), this.paused ? "" : "err");
        if (!this.paused) setTimeout(() => this.connect(), RETRY_MS);
      });
    }

    async send(text) {
      const socket = this.socket;
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        this.log("↑", "not sent", "the socket is not open", "err");
        return;
      }
      const frame = JSON.stringify({ type: "send", user: this.user, text, sent_at: nowMs() / 1000 });
      const size = byteLength(frame);
      socket.send(frame);
      this.counts.framesUp += 1;
      this.counts.estOut += size + frameOverhead(size, true);
      this.log("↑", "frame send", `${formatBytes(size + frameOverhead(size, true))} (${size} payload)`);
    }

    pause() {
      super.pause();
      if (this.socket) this.socket.close(1000, "paused");
    }

    resume() {
      super.resume();
      this.connect();
    }

    emptyText() {
      return "none: it never asks";
    }

    framesText() {
      return `${this.counts.framesUp.toLocaleString("en")} / ${this.counts.framesDown.toLocaleString("en")}`;
    }

    statusText() {
      if (this.openedAt === null) return this.socket ? "connecting…" : "closed";
      return `connection open for ${((performance.now() - this.openedAt) / 1000).toFixed(0)} s`;
    }
  }

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

  function main() {
    document.getElementById("room-name").textContent = room;
    document.title = `rtlab demo — room ${room}`;
    const panes = [new ShortPollingPane(), new LongPollingPane(), new WebSocketPane()];
    panes.forEach((p) => p.render());
    const colors = {};
    for (const pane of panes) colors[pane.transport] = getComputedStyle(pane.root).getPropertyValue("--accent").trim() || "#333";

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
          drawChart(canvas, pane.samples[series], max, colors[pane.transport], unit, total);
        }
      }
    }

    setInterval(async () => {
      if (exactAvailable) exactAvailable = await refreshExact(panes);
      const exact = panes.every((p) => p.exact);
      byteSource.textContent = exact ? "bytes: exact, counted by the server" : "bytes: page estimates";
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
})();
