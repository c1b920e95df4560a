// rtlab cluster demo: one room over three server instances behind HAProxy (experiments/demo_cluster.py serves this
// page through HAProxy's frontend, so the members' requests are routed exactly as any client's). Each column is an
// instance, as it reports itself (GET /admin/events, relayed on /cluster/events); each pane is a real member of
// the room, built from the same pane modules as the single demo. Text is always rendered with textContent.

import { Pane, el, formatMs, paneElement } from "/static/pane.js";

const MISSED_AFTER_S = 4; // a message posted this long ago should have reached every member that had joined
const POSTS_KEPT = 5000;
const PATHS_SHOWN = 20;
const FLASH_MS = 900;
const EXTRA_WEBSOCKETS = 2; // three WebSocket members, so that round robin spreads some over every instance

const view = {
  generation: null,
  mode: null,
  broker: null,
  columns: new Map(), // instance name -> {root, index}
  names: new Map(), // instance name (the cluster's) -> the name the instance gave itself (hello)
  panes: [],
  byClient: new Map(), // client id -> pane
  posts: new Map(), // message key -> {t, instance, user, id}
  paths: new Map(), // message key -> {li, posted, fanout: Map(instance -> members)}
  holding: {},
  instanceCount: 0,
};

const keyOf = (m) => `${m.user}|${m.sent_at}`;

async function post(path, body) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  } catch (_) {
    return { error: "the page server did not answer" };
  }
  let parsed = {};
  try {
    parsed = await response.json();
  } catch (_) {
    parsed = {};
  }
  if (!response.ok) return { error: parsed.error || response.statusText };
  return parsed;
}

function say(text, kind = "") {
  const node = document.getElementById("action");
  node.textContent = text;
  node.className = `action ${kind}`;
}

function flash(node, text) {
  if (!node) return;
  node.textContent = text;
  node.classList.remove("flashing");
  void node.offsetWidth; // restart the animation
  node.classList.add("flashing");
}

// --- the instances ------------------------------------------------------------------------------------------

function buildColumns(state) {
  const box = document.getElementById("instances");
  box.replaceChildren();
  view.columns.clear();
  const template = document.getElementById("instance");
  state.instances.forEach((instance, index) => {
    const root = template.content.firstElementChild.cloneNode(true);
    root.dataset.instance = instance.name;
    root.querySelector(".name").textContent = "…"; // until the instance says its name
    root.querySelector(".drain").addEventListener("click", () => act("drain", index));
    root.querySelector(".kill").addEventListener("click", () => act("kill", index));
    root.querySelector(".restart").addEventListener("click", () => act("restart", index));
    box.append(root);
    view.columns.set(instance.name, { root, index });
  });
  view.instanceCount = state.instances.length;
  const words = ["no", "one", "two", "three", "four", "five"];
  document.getElementById("instance-count").textContent = words[state.instances.length] || String(state.instances.length);
}

function nameOf(instance) {
  return view.names.get(instance) || instance;
}

function updateColumns(state) {
  for (const instance of state.instances) {
    const column = view.columns.get(instance.name);
    if (!column) continue;
    const { root } = column;
    root.querySelector(".pid").textContent = instance.alive ? `pid ${instance.pid}` : "not running";
    root.classList.toggle("dead", !instance.alive);
    root.dataset.drained = String(Boolean(instance.drained));
    root.querySelector(".restart").disabled = instance.alive;
    root.querySelector(".kill").disabled = !instance.alive;
    root.querySelector(".drain").disabled = !instance.alive || instance.drained;
  }
  for (const [name, hello] of Object.entries(state.hello || {})) hello && onHello(hello, name);
}

function onHello(event, name = event.instance) {
  // The column's title is what the instance calls itself (its --instance), from its own event stream.
  for (const [key, column] of view.columns) {
    if (key === name || key === event.instance) {
      view.names.set(key, event.instance);
      column.root.querySelector(".name").textContent = event.instance;
      column.root.dataset.name = event.instance;
    }
  }
}

function label(client, transport) {
  const pane = view.byClient.get(client);
  return pane ? pane.info.displayName : `another page (${transport})`;
}

function onHolding(event) {
  view.holding = event.instances;
  const where = new Map(); // client -> [instance, ...]
  for (const [instance, held] of Object.entries(event.instances)) {
    const column = view.columns.get(instance);
    if (!column) continue;
    const { root } = column;
    const parts = Object.entries(held.held).map(([transport, n]) => `${n} ${transport}`);
    const total = Object.values(held.held).reduce((a, b) => a + b, 0);
    root.querySelector(".holds").textContent = total ? `holds ${total}: ${parts.join(", ")}` : "holds no member";
    root.dataset.holds = String(total);
    const chips = root.querySelector(".chips");
    chips.replaceChildren();
    for (const [client, transport] of held.clients) {
      const chip = el("li", "chip", label(client, transport));
      const pane = view.byClient.get(client);
      if (pane) {
        chip.style.setProperty("--accent", pane.info.colour);
        chip.dataset.member = pane.info.member;
      }
      chips.append(chip);
      if (!where.has(client)) where.set(client, []);
      where.get(client).push(instance);
    }
    root.querySelector(".crowd-here").textContent = held.crowd ? `+ ${held.crowd} crowd members` : "";
    root.dataset.crowd = String(held.crowd);
  }
  for (const pane of view.panes) {
    const held = where.get(pane.clientId);
    pane.heldBy = held ? held.map(nameOf) : [];
    pane.root.dataset.heldBy = pane.heldBy.join(",");
  }
}

function onOpen(event) {
  const pane = view.byClient.get(event.client);
  if (!pane) return;
  const instance = nameOf(event.instance);
  if (!event.route.startsWith("POST")) pane.asked = instance;
  if (pane.down && !event.route.startsWith("POST") && instance !== pane.down.instance) {
    pane.back = { ms: (event.t - pane.down.t) * 1000, instance };
    pane.down = null;
  }
  const column = view.columns.get(event.instance);
  if (column && pane.transport === "short-polling") flash(column.root.querySelector(".last"), `${pane.info.displayName} asked`);
}

// --- each message's path --------------------------------------------------------------------------------------

function pathEntry(event) {
  const key = keyOf(event);
  let entry = view.paths.get(key);
  if (!entry) {
    const li = el("li", "path");
    li.dataset.key = key;
    document.getElementById("paths").prepend(li);
    entry = { li, posted: null, fanout: new Map(), user: event.user, firstAt: Date.now() };
    view.paths.set(key, entry);
    const list = document.getElementById("paths");
    while (list.childElementCount > PATHS_SHOWN) {
      const old = list.lastElementChild;
      view.paths.delete(old.dataset.key);
      old.remove();
    }
  }
  return entry;
}

function renderPath(entry) {
  const li = entry.li;
  li.replaceChildren();
  const posted = entry.posted;
  li.append(el("span", "who", posted ? `#${posted.id} ${entry.user}` : entry.user));
  if (posted) {
    li.append(el("span", "step posted", `posted on ${nameOf(posted.instance)}`));
    if (posted.broker === "redis") li.append(el("span", "step publish", "1 publish to Redis"));
  }
  const deliveries = [...entry.fanout.entries()];
  let members = 0;
  for (const [instance, n] of deliveries) {
    members += n;
    li.append(el("span", "step fanout", `${nameOf(instance)}: ${n} member${n === 1 ? "" : "s"}`));
  }
  li.dataset.instances = String(deliveries.length);
  li.dataset.members = String(members);
  const silent = [...view.columns.keys()].filter((i) => !entry.fanout.has(i)).map(nameOf);
  const summary = `${deliveries.length} instance deliver${deliveries.length === 1 ? "y" : "ies"}, ${members} member deliver${members === 1 ? "y" : "ies"}`;
  li.append(el("span", "sum", summary));
  if (posted && posted.broker !== "redis" && silent.length && Date.now() - entry.firstAt > 1000) {
    li.append(el("span", "never", `${silent.join(" and ")} never hear of it`));
  }
}

// A dot travelling between two boxes of the diagram: a message on its way (Web Animations; positions through CSSOM,
// which the page's Content-Security-Policy allows).
function travel(from, to, colour, delayMs = 0) {
  const diagram = document.querySelector(".diagram");
  if (!from || !to || document.hidden) return;
  const box = diagram.getBoundingClientRect();
  const a = from.getBoundingClientRect();
  const b = to.getBoundingClientRect();
  const dot = el("span", "dot");
  dot.style.setProperty("--accent", colour);
  dot.style.left = `${a.left + a.width / 2 - box.left}px`;
  dot.style.top = `${a.top + a.height / 2 - box.top}px`;
  diagram.append(dot);
  const dx = b.left + b.width / 2 - (a.left + a.width / 2);
  const dy = b.top + b.height / 2 - (a.top + a.height / 2);
  const flight = dot.animate([{ transform: "translate(0, 0)", opacity: 1 }, { transform: `translate(${dx}px, ${dy}px)`, opacity: 1 }],
    { duration: 700, delay: delayMs, easing: "ease-in-out", fill: "both" });
  flight.finished.then(() => dot.remove(), () => dot.remove());
}

function colourOf(user) {
  const pane = view.panes.find((p) => p.user === user);
  return pane ? pane.info.colour : "#8a94a0";
}

function onPosted(event) {
  view.posts.set(keyOf(event), { t: event.t, instance: event.instance, user: event.user, id: event.id });
  if (view.posts.size > POSTS_KEPT) view.posts.delete(view.posts.keys().next().value);
  const entry = pathEntry(event);
  entry.posted = event;
  renderPath(entry);
  setTimeout(() => renderPath(entry), 1100);
  const column = view.columns.get(event.instance);
  if (column) flash(column.root.querySelector(".last"), `#${event.id} posted here`);
  if (event.broker === "redis") {
    flash(document.getElementById("redis-flash"), `#${event.id} published`);
    travel(column && column.root, document.getElementById("redis"), colourOf(event.user));
  }
}

function onFanout(event) {
  const entry = pathEntry(event);
  entry.fanout.set(event.instance, event.members);
  renderPath(entry);
  const column = view.columns.get(event.instance);
  // Up to Redis first, then down to every instance with members in the room (the poster's own included: its members
  // hear of the message through Redis too); on loopback both happen within a millisecond, so the eye gets a delay.
  if (column && view.broker === "redis") travel(document.getElementById("redis"), column.root, colourOf(event.user), 700);
  if (column) {
    flash(column.root.querySelector(".last"), `#${event.id} → ${event.members} member${event.members === 1 ? "" : "s"}`);
    column.root.classList.remove("pulse");
    void column.root.offsetWidth;
    column.root.classList.add("pulse");
  }
}

// --- actions ------------------------------------------------------------------------------------------------------

async function act(action, index) {
  say(`${action}…`);
  const answer = await post("/cluster/action", { action, instance: index });
  if (answer.error) say(`${action}: ${answer.error}`, "err");
}

function describeAction(event) {
  const name = nameOf(event.instance || "");
  if (event.action === "drain") {
    const parts = [];
    if (event.websockets_closed) parts.push(`${event.websockets_closed} WebSocket${event.websockets_closed === 1 ? "" : "s"} closed with 1012`);
    if (event.polls_released) parts.push(`${event.polls_released} held poll${event.polls_released === 1 ? "" : "s"} answered`);
    if (event.streams_closed) parts.push(`${event.streams_closed} event stream${event.streams_closed === 1 ? "" : "s"} ended`);
    return `${name} drained (${event.took_ms} ms): out of HAProxy's rotation first, then ${parts.join(", ") || "nobody to let go"}; ` +
      "its members come back through HAProxy to the others and resume after the last id they saw.";
  }
  if (event.action === "kill") return `${name} killed (SIGKILL, pid ${event.pid}): its connections broke with no goodbye.`;
  if (event.action === "restart") return `${name} started again (pid ${event.pid}); HAProxy's health check brings it back.`;
  if (event.action === "restart-redis") return `Redis restarted: unreachable for ${formatMs(event.outage_s * 1000)}; the servers reconnected and caught up from its history.`;
  return event.action;
}

function onAction(event) {
  if (event.t === view.actionAt) return; // the same action again, with a later state
  view.actionAt = event.t;
  say(describeAction(event), "done");
  if (event.action === "drain" || event.action === "kill") {
    for (const pane of view.panes) {
      if ((pane.heldBy || []).includes(nameOf(event.instance))) {
        pane.down = { t: event.t, instance: nameOf(event.instance) };
        pane.back = null;
      }
    }
  }
}

// --- the members: panes and their ledger --------------------------------------------------------------------------

/** What the cluster page adds to a pane: where its member is held, and its ledger. */
function memberLedger() {
  const box = el("div", "member");
  const ledger = el("dl", "ledger");
  for (const [term, name] of [["received", "received"], ["missed", "missed"], ["twice", "twice"], ["back after", "back"]]) {
    const cell = el("div");
    cell.append(el("dt", "", term), el("dd", `stat-${name}`, name === "back" ? "—" : "0"));
    ledger.append(cell);
  }
  box.append(el("p", "where", "—"), ledger);
  return box;
}

async function loadPanes(transports) {
  const container = document.getElementById("view-panes");
  const infos = await (await fetch("/cluster/transports", { cache: "no-store" })).json();
  const members = [];
  for (const info of infos.transports) {
    if (!transports.includes(info.name)) continue;
    const count = info.name === "websocket" ? 1 + EXTRA_WEBSOCKETS : 1;
    for (let i = 1; i <= count; i += 1) {
      const member = count > 1 ? `${info.name}-${i}` : info.name;
      members.push({ ...info, member, displayName: count > 1 ? `${info.label} ${i}` : info.label });
    }
  }
  const panes = [];
  for (const info of members) {
    const root = paneElement();
    root.querySelector("h2").after(memberLedger());
    root.id = `pane-${info.member}`;
    root.dataset.transport = info.name;
    root.dataset.member = info.member;
    root.style.setProperty("--accent", info.colour);
    root.querySelector(".label").textContent = info.displayName;
    container.append(root);
    const Kind = (await import(info.module)).default;
    const pane = new Kind(info, root);
    pane.got = new Set();
    pane.received = 0;
    pane.twice = 0;
    pane.missed = 0;
    pane.heldBy = [];
    panes.push(pane);
    view.byClient.set(pane.clientId, pane);
  }
  return panes;
}

Pane.onMessage = (pane, message) => {
  const key = keyOf(message);
  if (pane.got.has(key)) pane.twice += 1;
  else {
    pane.got.add(key);
    pane.received += 1;
  }
};

function ledger() {
  const now = Date.now() / 1000;
  for (const pane of view.panes) {
    if (pane.joinedAt === undefined) continue;
    let missed = 0;
    for (const [key, post] of view.posts) {
      if (post.t >= pane.joinedAt && post.t <= now - MISSED_AFTER_S && !pane.got.has(key)) missed += 1;
    }
    pane.missed = missed;
  }
}

function renderLedger(pane) {
  pane.node(".stat-received").textContent = pane.received.toLocaleString("en");
  pane.node(".stat-missed").textContent = pane.missed.toLocaleString("en");
  pane.node(".stat-twice").textContent = pane.twice.toLocaleString("en");
  pane.root.classList.toggle("missing", pane.missed > 0);
  pane.root.dataset.missed = String(pane.missed);
  pane.node(".stat-back").textContent = pane.back ? formatMs(pane.back.ms) : pane.down ? "away…" : "—";
  let where;
  if (pane.back && pane.heldBy.length) where = `back on ${pane.heldBy.join(", ")} after ${formatMs(pane.back.ms)}`;
  else if (pane.heldBy.length) where = `connection held by ${pane.heldBy.join(", ")}`;
  else if (pane.asked) where = `no connection held; last asked ${pane.asked}`;
  else where = "—";
  pane.node(".where").textContent = where;
}

async function startPanes(panes) {
  // One after another, each once live: round robin then spreads the members over the instances.
  for (const pane of panes) {
    pane.joinedAt = Date.now() / 1000;
    pane.start();
    const deadline = Date.now() + 5000;
    while (pane.root.dataset.state !== "live" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  }
}

// --- the crowd -------------------------------------------------------------------------------------------------

function buildCrowd(state) {
  const size = document.getElementById("crowd-size");
  const rate = document.getElementById("crowd-rate");
  size.replaceChildren();
  rate.replaceChildren();
  for (const n of [0, 30, 90, 150, 300].filter((n) => n <= state.limits.crowd)) {
    const option = el("option", "", String(n));
    option.value = String(n);
    option.selected = n === (state.crowd.size || 0);
    size.append(option);
  }
  for (const r of [0, 0.5, 1, 2, 5].filter((r) => r <= state.limits.rate)) {
    const option = el("option", "", String(r));
    option.value = String(r);
    option.selected = r === (state.crowd.rate || 1);
    rate.append(option);
  }
}

function onCrowd(stats) {
  const node = document.getElementById("crowd-stats");
  if (!stats.size) {
    node.textContent = "no crowd";
    return;
  }
  const back = stats.reconnects ? `, ${stats.reconnects} reconnects (median ${stats.reconnect_p50_ms} ms, slowest ${stats.reconnect_max_ms} ms)` : "";
  node.textContent = `${stats.connected} of ${stats.size} members connected; ${stats.sent} messages sent, ` +
    `${stats.received.toLocaleString("en")} received, ${stats.missed} missed (of the ${stats.checked} sent over ` +
    `10 s ago, counted per member that had joined), ${stats.duplicates} twice${back}`;
  node.dataset.connected = String(stats.connected);
}

// --- state and events --------------------------------------------------------------------------------------------

function applyState(state) {
  if (view.generation !== null && state.generation !== view.generation) {
    location.reload(); // a new cluster: every member starts again in the new architecture
    return;
  }
  const first = view.generation === null;
  view.generation = state.generation;
  view.mode = state.mode;
  view.broker = state.broker;
  if (first) {
    buildColumns(state);
    buildCrowd(state);
  }
  document.body.dataset.mode = state.mode;
  for (const button of document.querySelectorAll("button.mode")) {
    button.setAttribute("aria-pressed", String(button.dataset.mode === state.mode));
  }
  document.getElementById("mode-explain").textContent = state.explain;
  document.getElementById("balance").textContent = state.balance === "uri" ? "balance uri depth 2 (hash of the room)" : `balance ${state.balance}`;
  document.getElementById("redis").hidden = !state.redis;
  updateColumns(state);
  if (state.action && first) {
    view.actionAt = state.action.t; // what happened before this page loaded: said, but nobody here was away
    say(describeAction(state.action), "done");
  } else if (state.action) onAction(state.action);
  onCrowd(state.crowd);
}

function follow() {
  const source = new EventSource("/cluster/events");
  source.addEventListener("message", (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    switch (event.event) {
      case "state": applyState(event); break;
      case "hello": onHello(event); break;
      case "holding": onHolding(event); break;
      case "open": onOpen(event); break;
      case "posted": onPosted(event); break;
      case "fanout": onFanout(event); break;
      case "action": onAction(event); break;
      case "crowd": onCrowd(event); break;
      case "states":
        for (const [name, s] of Object.entries(event.states)) {
          const column = view.columns.get(name);
          if (column) {
            // HAProxy's view; a drained instance fails its health check on purpose (503), so HAProxy says DOWN.
            column.root.querySelector(".state").textContent = column.root.dataset.drained === "true" ? `${s} · drained` : s;
            column.root.dataset.state = s;
          }
        }
        break;
      default: break;
    }
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) setTimeout(follow, 1000); // HAProxy answered 503 while rebuilt
  });
}

async function main() {
  const state = await (await fetch("/cluster/state", { cache: "no-store" })).json();
  applyState(state);
  for (const button of document.querySelectorAll("button.mode")) {
    button.addEventListener("click", async () => {
      document.getElementById("switching").hidden = false;
      const answer = await post("/cluster/mode", { mode: button.dataset.mode });
      if (answer.error) {
        document.getElementById("switching").hidden = true;
        say(answer.error, "err");
      }
    });
  }
  document.getElementById("restart-redis").addEventListener("click", () => act("restart-redis", null));
  document.getElementById("crowd-apply").addEventListener("click", async () => {
    const answer = await post("/cluster/crowd", {
      members: Number(document.getElementById("crowd-size").value),
      rate: Number(document.getElementById("crowd-rate").value),
    });
    if (answer.error) say(answer.error, "err");
  });
  follow();
  view.panes = await loadPanes(state.transports);
  setInterval(() => {
    ledger();
    view.panes.forEach((p) => {
      p.render();
      renderLedger(p);
    });
  }, 500);
  window.rtlabCluster = view; // for the curious, in the console
  await startPanes(view.panes);
  document.body.dataset.ready = "true";
}

main();
