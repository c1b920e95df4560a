// rtlab demo pane: WebTransport over HTTP/3 (placeholder until the pane lands).
import { Pane } from "/static/pane.js";

export default class WebTransportPane extends Pane {
  static explain = ["WebTransport over HTTP/3."];
}
