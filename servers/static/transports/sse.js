// rtlab demo pane: Server-Sent Events. One response that never ends, read by the browser's own EventSource;
// sending is an ordinary POST. Watch the wire log when the stream drops: EventSource reconnects by itself and
// tells the server the last id it saw (Last-Event-ID), so nothing is missed.
import { Pane, RETRY_MS, byteLength, formatBytes, formatMs, requestBytes } from "/static/pane.js";

// What the page cannot see: the stream's response head (aiohttp 3.14 with aiohttp-sse: ~190 bytes), and
// the chunked framing around each event (a hex length line and a CRLF: ~6 bytes).
const STREAM_HEAD_EST = 190;
const CHUNK_OVERHEAD_EST = 6;

export default class ServerSentEventsPane extends Pane {
  static explain = [
    "One ordinary HTTP request whose response never ends: the server ", ["em", "streams"], " each message down " +
    "it as an event the moment it arrives. Like a WebSocket the connection stays open (", ["strong", "persistence"],
    "), but it is ", ["strong", "one way"], ": this page sends with a separate POST, so it is not full duplex. " +
    "The browser's own EventSource keeps the stream: when it drops, the browser reconnects by itself and sends " +
    "Last-Event-ID, and the server resumes after it. A comment every 15 s keeps an idle stream alive.",
  ];

  addControls(box) {
    this.source = null;
    this.openedAt = null;
    this.opens = 0;
  }

  async start() {
    await this.join();
    this.connect();
  }

  connect() {
    if (this.paused || this.source) return;
    const query = `since=${this.lastId}`;
    const url = this.path("events", query);
    const started = performance.now();
    const out = requestBytes("GET", url);
    this.counts.requests += 1;
    this.counts.estOut += out;
    this.log("↑", `GET events?${query}`, `opens the stream · ↑~${formatBytes(out)}`);
    const source = new EventSource(url);
    this.source = source;
    source.addEventListener("open", () => {
      if (this.source !== source) return;
      this.opens += 1;
      if (this.opens > 1) {
        // The browser reconnected on its own, with the same URL and a Last-Event-ID header.
        const again = requestBytes("GET", url) + `Last-Event-ID: ${this.lastId}\r\n`.length;
        this.counts.requests += 1;
        this.counts.estOut += again;
        this.log("↑", "GET events (EventSource reconnect)", `Last-Event-ID: ${this.lastId} · ↑~${formatBytes(again)}`);
      }
      this.openedAt = performance.now();
      this.live();
      this.counts.estIn += STREAM_HEAD_EST;
      this.log("↓", "200 text/event-stream", `the response stays open · ↓~${formatBytes(STREAM_HEAD_EST)} · ` +
        `${formatMs(this.openedAt - started)}`);
    });
    source.addEventListener("message", (event) => {
      if (this.source !== source) return;
      const wire = byteLength(`id: ${event.lastEventId}\ndata: ${event.data}\n\n`) + CHUNK_OVERHEAD_EST;
      this.counts.framesDown += 1;
      this.counts.estIn += wire;
      let message = null;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        message = null;
      }
      this.log("↓", `event #${event.lastEventId}`, `~${formatBytes(wire)} (${byteLength(event.data)} payload)`);
      if (message) this.receive([message], true);
    });
    source.addEventListener("error", () => {
      if (this.source !== source) return;
      this.openedAt = null;
      if (source.readyState === EventSource.CONNECTING) {
        this.log("↓", "stream ended", `EventSource reconnects by itself, Last-Event-ID ${this.lastId}`, "err");
        return;
      }
      // CLOSED: the server refused the stream (e.g. 503 while draining); EventSource gives up, so do it here.
      source.close();
      this.source = null;
      this.log("↓", "stream refused", "EventSource gave up; the page reconnects", "err");
      if (!this.paused) setTimeout(() => this.connect(), RETRY_MS);
    });
  }

  pause() {
    super.pause();
    if (this.source) this.source.close();
    this.source = null;
    this.openedAt = null;
    this.log("↑", "stream closed", "paused");
  }

  resume() {
    super.resume();
    this.connect();
  }

  emptyText() {
    return "none: it never asks";
  }

  framesText() {
    return `none / ${this.counts.framesDown.toLocaleString("en")} events`;
  }

  statusText() {
    if (this.openedAt === null) return this.source ? "connecting…" : "closed";
    return `stream open for ${((performance.now() - this.openedAt) / 1000).toFixed(0)} s`;
  }
}
