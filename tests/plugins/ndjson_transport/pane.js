// The NDJSON stream's demo pane (a test plugin): fetch with a streamed body, one message JSON per line.
import { Pane, RETRY_MS, byteLength, formatBytes } from "/static/pane.js";

export default class NdjsonPane extends Pane {
  static explain = ["A test plugin: one long HTTP response, one message JSON per line, read with fetch's stream."];

  async start() {
    await this.join();
    this.read();
  }

  async read() {
    while (!this.paused) {
      try {
        const response = await fetch(this.path("ndjson", `since=${this.lastId}`), { cache: "no-store" });
        this.counts.requests += 1;
        this.log("⇅", "GET ndjson", `${response.status} · the response stays open`);
        this.live();
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          const lines = buffer.split("\n");
          buffer = lines.pop();
          for (const line of lines.filter(Boolean)) {
            this.counts.framesDown += 1;
            this.counts.estIn += byteLength(line) + 1;
            this.log("↓", "line", formatBytes(byteLength(line) + 1));
            this.receive([JSON.parse(line)], true);
          }
        }
      } catch (_) {
        // logged by the next request
      }
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }

  statusText() {
    return "streaming";
  }
}
