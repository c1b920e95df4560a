// rtlab demo pane: WebRTC data channel, reliable (`webrtc`) or not (`webrtc-unreliable`: the same module). The
// browser's own RTCPeerConnection offers one data channel, `chat`; the offer and the answer cross in one
// ordinary POST (signaling), and from then on the messages travel peer to peer over UDP (ICE, DTLS, SCTP),
// with the WebSocket's frames: {"type": "send", ...} up, {"type": "message", ...} down.
import { Pane, RETRY_MS, byteLength, explain, formatBytes, formatMs, nowMs } from "/static/pane.js";

// Every gathered candidate goes in the offer (non-trickle ICE): wait for gathering to finish, at most this long.
const GATHER_TIMEOUT_MS = 5000;
// What one message costs on UDP beyond its own bytes (estimated; the server counts the datagrams exactly):
// an SCTP common header (12) and DATA chunk (16), in a DTLS 1.2 record (13) sealed with AES-GCM (8 + 16).
const DATAGRAM_OVERHEAD_EST = 65;
// What opening the channel costs before the first message, each way: ICE checks, the DTLS handshake (certificates
// included), SCTP's four-way handshake and the channel's open message; about this much between Chromium 150 and
// aiortc 1.16, as the server counted it. ICE's consent checks every few seconds and SCTP's acks are not estimated.
const HANDSHAKE_EST = 1700;
const UNRELIABLE = { ordered: false, maxRetransmits: 0 };

function candidateCount(sdp) {
  return sdp.split(/\r?\n/).filter((line) => line.startsWith("a=candidate:")).length;
}

function gatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(false), GATHER_TIMEOUT_MS);
    const check = () => pc.iceGatheringState === "complete" && done(true);
    function done(complete) {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve(complete);
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

const EXPLAIN_COMMON = [
  "A ", ["strong", "peer-to-peer"], " connection the browser makes itself: the page sends an ", ["em", "offer"],
  " (what it can do, and the addresses where it can be reached) in one ordinary POST, the server answers, and " +
  "from then on both sides talk directly over UDP — ICE finds the path, DTLS encrypts, SCTP carries a ",
  ["strong", "data channel"], " in both directions (", ["strong", "full duplex"], "), with a few dozen bytes " +
  "of headers per message. ",
];
const EXPLAIN_RELIABLE = ["This channel retransmits what is lost and keeps order, as TCP does."];
const EXPLAIN_UNRELIABLE = [
  "This channel (", ["em", "ordered: false, maxRetransmits: 0"], ") sends each message once and never waits for " +
  "an earlier one: nothing lost holds the others back, but a lost message stays lost — a game's choice for " +
  "positions that are stale a moment later, never a chat's.",
];

// One module for both registry entries (`webrtc`, `webrtc-unreliable`): the entry's name picks the channel.
export default class WebRTCPane extends Pane {
  static explain = [...EXPLAIN_COMMON, ...EXPLAIN_RELIABLE];

  addControls(box) {
    this.unreliable = /-unreliable$/.test(this.transport);
    if (this.unreliable) explain(this.node(".explain"), [...EXPLAIN_COMMON, ...EXPLAIN_UNRELIABLE]);
    this.pc = null;
    this.channel = null;
    this.openedAt = null;
    this.state = "closed";
  }

  async start() {
    await this.join();
    this.connect();
  }

  async connect() {
    if (this.paused || this.pc) return;
    const pc = new RTCPeerConnection({ iceServers: [] }); // no STUN, no TURN: host candidates only
    this.pc = pc;
    this.state = "gathering candidates…";
    const started = performance.now();
    const channel = pc.createDataChannel("chat", this.unreliable ? UNRELIABLE : {});
    this.channel = channel;
    channel.addEventListener("open", () => {
      if (this.pc !== pc) return;
      this.openedAt = performance.now();
      this.counts.estOut += HANDSHAKE_EST;
      this.counts.estIn += HANDSHAKE_EST;
      this.live();
      const kind = this.unreliable ? "unordered, no retransmits" : "ordered, reliable";
      this.log("⇅", "data channel open", `chat (${kind}) · ICE, DTLS, SCTP ~${formatBytes(HANDSHAKE_EST)} each way · ` +
        `${formatMs(this.openedAt - started)} from the offer`);
      this.logPair(pc);
    });
    channel.addEventListener("message", (event) => {
      if (this.pc !== pc || typeof event.data !== "string") return;
      const size = byteLength(event.data);
      this.counts.framesDown += 1;
      this.counts.estIn += size + DATAGRAM_OVERHEAD_EST;
      let frame = null;
      try {
        frame = JSON.parse(event.data);
      } catch (_) {
        frame = null;
      }
      const kind = frame && typeof frame.type === "string" ? frame.type : "";
      const what = kind === "message" ? `message #${frame.id}` : kind === "close" ? `close ${frame.code}` : kind || "message";
      // A data channel has no close code: the server says why in a last message (the WebSocket's codes).
      const why = kind === "error" ? frame.error : kind === "close" ? frame.reason : "";
      const detail = typeof why === "string" && why ? ` · ${why}` : "";
      this.log("↓", what, `~${formatBytes(size + DATAGRAM_OVERHEAD_EST)} (${size} payload)${detail}`, kind === "error" ? "err" : "");
      if (frame && frame.type === "message") this.receive([frame], true);
    });
    channel.addEventListener("close", () => this.lost(pc, "data channel closed"));
    pc.addEventListener("connectionstatechange", () => {
      if (this.pc !== pc) return;
      if (pc.connectionState === "failed" || pc.connectionState === "closed") this.lost(pc, `connection ${pc.connectionState}`);
    });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      const complete = await gatheringComplete(pc);
      if (this.pc !== pc) return;
      const sdp = pc.localDescription.sdp;
      const candidates = candidateCount(sdp);
      this.log("↑", "offer (SDP)", `${candidates} candidate${candidates === 1 ? "" : "s"} in it${complete ? "" : " (gathering timed out)"} · ${formatBytes(byteLength(sdp))}`);
      this.state = "signaling…";
      const { response, body } = await this.http("POST", "webrtc", `since=${this.lastId}`, { type: "offer", sdp });
      if (this.pc !== pc) return;
      if (!response.ok || !body || body.type !== "answer" || typeof body.sdp !== "string") throw new Error("no answer");
      this.state = "connecting (ICE, DTLS, SCTP)…";
      await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
      this.log("↓", "answer (SDP)", `${candidateCount(body.sdp)} candidate${candidateCount(body.sdp) === 1 ? "" : "s"} · ICE checks start`);
    } catch (error) {
      if (this.pc === pc) this.lost(pc, error && error.message ? error.message : "signaling failed");
    }
  }

  /** Log the candidate pair ICE chose: which addresses the datagrams actually travel between. */
  async logPair(pc) {
    try {
      const stats = await pc.getStats();
      let pair = null;
      stats.forEach((report) => {
        if (report.type === "transport" && report.selectedCandidatePairId) pair = stats.get(report.selectedCandidatePairId);
      });
      if (!pair) return;
      const local = stats.get(pair.localCandidateId);
      const remote = stats.get(pair.remoteCandidateId);
      // The browser's own address may be hidden behind an mDNS name, and then stats leave it out.
      const where = (c) => (c ? `${c.address || c.ip || "(hidden)"}:${c.port} ${c.candidateType}` : "?");
      this.log("⇅", "ICE pair", `${where(local)} ⇄ ${where(remote)}`);
    } catch (_) {
      // stats are a nicety
    }
  }

  /** The connection `pc` is gone: forget it and, unless paused, offer again with since= the last id shown. */
  lost(pc, why) {
    if (this.pc !== pc) return;
    this.pc = null;
    this.channel = null;
    this.openedAt = null;
    this.state = "closed";
    pc.close();
    this.log("↓", "closed", `${why}${this.paused ? "" : " · offering again"}`, this.paused ? "" : "err");
    if (!this.paused) setTimeout(() => this.connect(), RETRY_MS);
  }

  async send(text) {
    const channel = this.channel;
    if (!channel || channel.readyState !== "open") {
      this.log("↑", "not sent", "the data channel is not open", "err");
      return;
    }
    const frame = JSON.stringify({ type: "send", user: this.user, text, sent_at: nowMs() / 1000 });
    const size = byteLength(frame);
    channel.send(frame);
    this.counts.framesUp += 1;
    this.counts.estOut += size + DATAGRAM_OVERHEAD_EST;
    this.log("↑", "send", `~${formatBytes(size + DATAGRAM_OVERHEAD_EST)} (${size} payload)`);
  }

  pause() {
    super.pause();
    const pc = this.pc;
    if (pc) this.lost(pc, "paused");
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
    return `channel open for ${((performance.now() - this.openedAt) / 1000).toFixed(0)} s`;
  }
}
