// rtlab demo pane: WebTransport over HTTP/3, on streams (`webtransport`) or datagrams (`webtransport-datagram`: the
// same module). The page asks the server where its HTTP/3 endpoint is and for its certificate's SHA-256 (a GET on
// this room's path), then the browser's own WebTransport opens a session there: one QUIC connection over UDP, TLS 1.3
// inside QUIC, one CONNECT. Messages are the WebSocket's: {"type": "send", ...} up, {"type": "message", ...} down.
import { Pane, RETRY_MS, byteLength, encoder, explain, formatBytes, formatMs, nowMs } from "/static/pane.js";

// What one message costs on UDP beyond its own bytes (estimated; the server counts the datagrams exactly): a QUIC
// short header (1 + 8-byte connection id + packet number ~2) and the AEAD tag (16), and a STREAM frame opening a new
// stream (type, id, length; the stream's type and session id, ~6) or a DATAGRAM frame (type, length, session, ~4).
const STREAM_OVERHEAD_EST = 36;
const DATAGRAM_OVERHEAD_EST = 32;
// The QUIC handshake (Initial packets padded to 1 200 bytes and more, the certificate, TLS 1.3) and HTTP/3's control
// streams, SETTINGS and the CONNECT, each way; about this much between Chromium 156 and aioquic 1.7, as the server
// counted it. Acknowledgements and the server's keep-alive pings are not estimated.
const HANDSHAKE_OUT_EST = 3000;
const HANDSHAKE_IN_EST = 2600;

const decoder = new TextDecoder();

function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

const EXPLAIN_COMMON = [
  "HTTP/3's answer to the WebSocket: the page asks the server where its ", ["strong", "HTTP/3"], " endpoint is, " +
  "then the browser opens a ", ["strong", "QUIC"], " connection to it over UDP (TLS inside, one round trip) and a " +
  "WebTransport ", ["em", "session"], " on it with one CONNECT request. Both sides may send at any time (",
  ["strong", "full duplex"], "). ",
];
const EXPLAIN_STREAMS = [
  "Each message travels on a QUIC ", ["strong", "stream"], " of its own: QUIC retransmits what is lost, as TCP " +
  "does, but a lost packet holds up only the message it carried, not every message behind it (no head-of-line " +
  "blocking across streams); a later message may overtake an earlier one.",
];
const EXPLAIN_DATAGRAMS = [
  "Each message is one QUIC ", ["strong", "datagram"], ": sent once, never retransmitted, in no order — a lost " +
  "datagram's message stays lost, and nothing waits for it (the seed's lossy case, without WebRTC's ICE, DTLS " +
  "and SCTP).",
];

// One module for both registry entries: the entry's name picks how messages travel.
export default class WebTransportPane extends Pane {
  static explain = [...EXPLAIN_COMMON, ...EXPLAIN_STREAMS];

  addControls(box) {
    this.datagrams = /-datagram$/.test(this.transport);
    if (this.datagrams) explain(this.node(".explain"), [...EXPLAIN_COMMON, ...EXPLAIN_DATAGRAMS]);
    this.wt = null;
    this.writer = null;
    this.openedAt = null;
    this.state = "closed";
    this.streamsIn = 0;
  }

  async start() {
    await this.join();
    this.connect();
  }

  async connect() {
    if (this.paused || this.wt) return;
    this.state = "asking where…";
    let wt = null;
    try {
      const { response, body } = await this.http("GET", this.transport, "");
      if (!response.ok || !body || typeof body.url !== "string") throw new Error("no endpoint");
      const url = `${body.url}?since=${this.lastId}&client=${this.clientId}`;
      const hash = fromBase64(body.certificate.sha256);
      this.state = "connecting (QUIC, TLS, CONNECT)…";
      const started = performance.now();
      wt = new WebTransport(url, { serverCertificateHashes: [{ algorithm: "sha-256", value: hash }] });
      this.wt = wt;
      wt.closed.then(
        (info) => this.lost(wt, `session closed ${info && info.closeCode !== undefined ? info.closeCode : ""} ${(info && info.reason) || ""}`.trim()),
        (error) => this.lost(wt, `session failed: ${error && error.message ? error.message : error}`),
      );
      await wt.ready;
      if (this.wt !== wt) return;
      this.openedAt = performance.now();
      this.counts.requests += 1;
      this.counts.estOut += HANDSHAKE_OUT_EST;
      this.counts.estIn += HANDSHAKE_IN_EST;
      this.live();
      this.log("⇅", "session open", `QUIC + TLS 1.3 + CONNECT ~${formatBytes(HANDSHAKE_OUT_EST + HANDSHAKE_IN_EST)} · ` +
        `${formatMs(this.openedAt - started)} · certificate pinned by its SHA-256`);
      this.readStreams(wt);
      if (this.datagrams) {
        this.writer = wt.datagrams.writable.getWriter();
        this.readDatagrams(wt);
      }
    } catch (error) {
      if (wt === null || this.wt === wt) this.lost(wt, error && error.message ? error.message : "no session");
    }
  }

  /** Every unidirectional stream the server opens: a message per line (one per stream, here). */
  async readStreams(wt) {
    const streams = wt.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value: stream, done } = await streams.read();
        if (done || this.wt !== wt) return;
        this.streamsIn += 1;
        this.readStream(wt, stream, this.streamsIn);
      }
    } catch (_) {
      // the session ended: wt.closed says why
    }
  }

  async readStream(wt, stream, n) {
    const reader = stream.getReader();
    let text = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (value) text += decoder.decode(value, { stream: true });
        let end;
        while ((end = text.indexOf("\n")) >= 0) {
          this.frame(wt, text.slice(0, end), `stream ${n}`, STREAM_OVERHEAD_EST);
          text = text.slice(end + 1);
        }
        if (done) break;
      }
      if (text) this.frame(wt, text, `stream ${n}`, STREAM_OVERHEAD_EST);
    } catch (_) {
      // reset by the server, or the session ended
    }
  }

  async readDatagrams(wt) {
    const reader = wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.wt !== wt) return;
        this.frame(wt, decoder.decode(value), "datagram", DATAGRAM_OVERHEAD_EST);
      }
    } catch (_) {
      // the session ended
    }
  }

  frame(wt, text, carrier, overhead) {
    if (this.wt !== wt) return;
    const size = byteLength(text);
    this.counts.framesDown += 1;
    this.counts.estIn += size + overhead;
    let frame = null;
    try {
      frame = JSON.parse(text);
    } catch (_) {
      frame = null;
    }
    const kind = frame && typeof frame.type === "string" ? frame.type : "";
    const what = kind === "message" ? `${carrier}: message #${frame.id}` : `${carrier}: ${kind || "?"}`;
    const detail = kind === "error" && typeof frame.error === "string" ? ` · ${frame.error}` : "";
    this.log("↓", what, `~${formatBytes(size + overhead)} (${size} payload)${detail}`, kind === "error" ? "err" : "");
    if (kind === "message") this.receive([frame], true);
  }

  /** The session `wt` is gone: forget it and, unless paused, open another with since= the last id shown. */
  lost(wt, why) {
    if (wt !== null && this.wt !== wt) return;
    this.wt = null;
    this.writer = null;
    this.openedAt = null;
    this.state = "closed";
    this.log("↓", "closed", `${why}${this.paused ? "" : " · connecting again"}`, this.paused ? "" : "err");
    if (!this.paused) setTimeout(() => this.connect(), RETRY_MS);
  }

  async send(text) {
    const wt = this.wt;
    if (!wt || this.openedAt === null) {
      this.log("↑", "not sent", "the session is not open", "err");
      return;
    }
    const frame = JSON.stringify({ type: "send", user: this.user, text, sent_at: nowMs() / 1000 });
    const size = byteLength(frame);
    try {
      if (this.datagrams && this.writer) {
        await this.writer.write(encoder.encode(frame));
        this.counts.estOut += size + DATAGRAM_OVERHEAD_EST;
        this.log("↑", "datagram: send", `~${formatBytes(size + DATAGRAM_OVERHEAD_EST)} (${size} payload)`);
      } else {
        const stream = await wt.createUnidirectionalStream();
        const writer = stream.getWriter();
        await writer.write(encoder.encode(`${frame}\n`));
        await writer.close();
        this.counts.estOut += size + 1 + STREAM_OVERHEAD_EST;
        this.log("↑", "stream: send", `~${formatBytes(size + 1 + STREAM_OVERHEAD_EST)} (${size} payload) · a new stream`);
      }
      this.counts.framesUp += 1;
    } catch (error) {
      this.log("↑", "not sent", error && error.message ? error.message : "the session closed", "err");
    }
  }

  pause() {
    super.pause();
    const wt = this.wt;
    if (wt) {
      this.lost(wt, "paused");
      wt.close({ closeCode: 1000, reason: "paused" });
    }
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
    if (this.openedAt === null) return this.state;
    return `session open for ${((performance.now() - this.openedAt) / 1000).toFixed(0)} s`;
  }
}
