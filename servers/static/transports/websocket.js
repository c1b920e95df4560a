// rtlab demo pane: WebSocket. One upgrade, then frames both ways over the one open connection.
import { BROWSER, NO_CACHE, Pane, RETRY_MS, byteLength, formatBytes, formatMs, headerLines, nowMs } from "/static/pane.js";

// The page cannot see the upgrade request's headers nor the 101 answer, so it rebuilds the request the way
// Chromium 156 sends it; aiohttp 3.14's 101 answer is ~200 bytes.
const UPGRADE_RESPONSE_EST = 200;

// WebSocket framing (RFC 6455): 2 header bytes, +2 or +8 for longer payloads, +4 mask client→server.
function frameOverhead(payloadBytes, masked) {
  const length = payloadBytes < 126 ? 2 : payloadBytes < 65536 ? 4 : 10;
  return length + (masked ? 4 : 0);
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


export default class WebSocketPane extends Pane {
  static explain = [
    "One HTTP request upgrades to a connection that stays open (", ["strong", "persistence"], "). Over that one " +
    "TCP connection either side may send whenever it likes (", ["strong", "full duplex"], "), so the server ",
    ["em", "pushes"], " each message the moment it arrives, in a frame with a few bytes of framing. While " +
    "nobody talks, nothing crosses the wire but a ping every 20 s. The price: the server holds every open " +
    "socket (state), which makes it harder to scale.",
  ];

  addControls(box) {
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
      this.live();
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
