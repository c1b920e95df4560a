// rtlab demo pane: short polling. Ask at once, every interval, whether or not anything is new.
import { Pane, RETRY_MS } from "/static/pane.js";

export default class ShortPollingPane extends Pane {
  static explain = [
    "The page asks the server ", ["q", "anything new?"], " every few seconds. Each ask is a whole HTTP request " +
    "and response, headers and all, and most answers are empty. Between asks the server cannot reach this " +
    "member: there is no open connection, so it cannot push. A new message waits, on average, half an " +
    "interval before anyone asks for it.",
  ];

  addControls(box) {
    this.interval = this.select(box, "poll every", "poll-interval",
      [[500, "0.5 s"], [1000, "1 s"], [2000, "2 s"], [5000, "5 s"]], 2000);
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
        this.live();
      }
    } catch (_) {
      delay = Math.max(delay, RETRY_MS);
    } finally {
      this.polling = false;
    }
    if (!this.paused) this.schedule(delay);
    this.render();
  }

  // The sender hears its own message only when a poll brings it back, like everyone else (Pane.send).

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
