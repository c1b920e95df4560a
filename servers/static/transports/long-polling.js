// rtlab demo pane: long polling. Ask, let the server hold the question, ask again the moment it answers.
import { Pane, RETRY_MS } from "/static/pane.js";

const pauseFor = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export default class LongPollingPane extends Pane {
  static explain = [
    "The page asks, and the server ", ["em", "holds"], " the request open until there is a message or the " +
    "wait runs out; that open request is the server's only way to reach this member, so it answers the " +
    "moment something happens. Then the page asks again at once. A message arrives in about one round " +
    "trip, but still costs a whole HTTP request and response per member, and the server keeps one open " +
    "request (a socket, some memory) for every waiting member.",
  ];

  addControls(box) {
    this.wait = this.select(box, "wait up to", "long-poll-wait", [[5, "5 s"], [10, "10 s"], [20, "20 s"], [30, "30 s"]], 20);
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
      this.live(); // once a poll is in flight, the server can answer it the moment a message arrives
      try {
        const query = `since=${this.lastId}&wait=${this.wait.value}`;
        const { response, body } = await this.http("GET", "messages", query, undefined, this.controller.signal);
        if (response.ok && body && Array.isArray(body.messages)) {
          if (!body.messages.length) this.counts.empty += 1;
          this.receive(body.messages, true);
        } else {
          await pauseFor(RETRY_MS);
        }
      } catch (error) {
        if (!(error && error.name === "AbortError")) await pauseFor(RETRY_MS);
      } finally {
        this.controller = null;
        this.heldSince = null;
      }
    }
    this.looping = false;
    this.render();
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
