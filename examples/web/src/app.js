// The live demo page: reads a Kafka partition through Streamgate's pub/sub WebSocket route.
// The wire types come from proto/pubsub.proto (bundled at build time by build.mjs).
import protobuf from "protobufjs/light.js";
import schema from "../gen/pubsub.json";

const root = protobuf.Root.fromJSON(schema);
const PubSubReq = root.lookupType("PubSubReq");
const PubSubResp = root.lookupType("PubSubResp");

// Every error class of the protocol (proto/pubsub.proto), said for a person, with what to do.
const ERROR_CLASSES = {
  1: ["Bad request", "The gateway did not understand a command. This page or the gateway is out of date."],
  2: ["Not found", "No such topic or partition on the brokers. Check the name; topics are not created on read."],
  3: ["Not allowed", "This route's allow-list (kafka-proxy topics, or your consumer's topics) does not include this topic."],
  4: ["Kafka refused the request", "The broker answered with an error. For OFFSET_OUT_OF_RANGE, start from earliest or latest."],
  5: ["Kafka is unavailable", "The gateway cannot reach the brokers right now. The page retries on its own."],
  6: ["TLS to Kafka failed", "The gateway could not verify the brokers' certificate: an operator must fix the route's TLS settings."],
  7: ["Kafka refused the gateway's credentials", "The route's SASL settings are wrong: an operator must fix them."],
  8: ["Record too large", "A record does not fit in one WebSocket message on this route (max_frame_bytes)."],
  9: ["Too many requests", "The route's limit on concurrent commands was hit. The page retries on its own."],
  10: ["Gateway error", "Something failed inside the gateway; its log says what."],
};
const RETRYABLE = new Set([4, 5, 9, 10]);
const CLOSE_REASONS = {
  1000: "the session ended",
  1001: "the gateway is shutting down or restarting",
  1006: "the connection was lost",
  1008: "the gateway refused a message (policy)",
  1009: "a message was too large for the route",
  1011: "the gateway hit an internal error",
};
const MAX_ROWS = 500;

/** The gateway answered a command with error_resp. */
class GatewayError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** The WebSocket closed (or never opened) while a command waited. */
class ConnectionLost extends Error {
  constructor(code, reason, opened) {
    super(reason || CLOSE_REASONS[code] || `closed with code ${code}`);
    this.closeCode = code;
    this.opened = opened;
  }
}

/** One pub/sub WebSocket: commands are answered by sequence, in any order. */
class Session {
  constructor(url) {
    this.url = url;
    this.pending = new Map();
    this.sequence = 0;
    this.closed = null;
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ready = new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve(this);
      this.ws.onclose = (event) => {
        const lost = new ConnectionLost(event.code, event.reason, this.opened);
        this.closed = lost;
        reject(lost);
        for (const { reject: fail } of this.pending.values()) fail(lost);
        this.pending.clear();
        this.onclose?.(lost);
      };
    });
    this.ws.addEventListener("open", () => (this.opened = true));
    this.ws.onmessage = (event) => this.receive(event.data);
  }

  receive(data) {
    if (!(data instanceof ArrayBuffer)) return;
    let resp;
    try {
      resp = PubSubResp.toObject(PubSubResp.decode(new Uint8Array(data)), {
        longs: Number,
        oneofs: true,
        // Without defaults, offset 0 and empty keys would be missing fields.
        defaults: true,
      });
    } catch (e) {
      this.onerror?.(new GatewayError(1, `undecodable answer from the gateway: ${e.message}`));
      return;
    }
    const waiter = this.pending.get(resp.sequence ?? 0);
    if (!waiter) {
      if (resp.errorResp) this.onerror?.(new GatewayError(resp.errorResp.code, resp.errorResp.message));
      return;
    }
    this.pending.delete(resp.sequence);
    if (resp.errorResp) waiter.reject(new GatewayError(resp.errorResp.code, resp.errorResp.message));
    else waiter.resolve(resp);
  }

  call(command) {
    if (this.closed) return Promise.reject(this.closed);
    const sequence = ++this.sequence;
    const bytes = PubSubReq.encode(PubSubReq.create({ sequence, ...command })).finish();
    return new Promise((resolve, reject) => {
      this.pending.set(sequence, { resolve, reject });
      this.ws.send(bytes);
    });
  }

  async listOffset(topic, partition, timestamp) {
    const resp = await this.call({ cmdKafkaListOffset: { topic, partition, timestamp } });
    return resp.kafkaListOffsetResp.offset ?? 0;
  }

  async fetch(topic, partition, offset) {
    const resp = await this.call({ cmdKafkaFetch: { topic, partition, offset } });
    const r = resp.kafkaFetchResp;
    return { messages: r.messages ?? [], highWatermark: r.highWatermark ?? 0 };
  }

  close() {
    this.ws.close(1000);
  }
}

const $ = (id) => document.getElementById(id);
const text = new TextDecoder();
const decode = (bytes) => (bytes && bytes.length ? text.decode(bytes) : "");

/** What the page shows and the one stream it reads. */
const view = {
  session: null,
  stream: 0,
  paused: false,
  running: false,
  next: null,
  hwm: null,
  count: 0,
  arrivals: [],
  retries: 0,
};

function routeUrl() {
  const page = new URL(location.href);
  const url = new URL(page.searchParams.get("route") || "/kafka", page);
  url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
  // key-auth for browsers: a key in the page's query string is passed on to the WebSocket.
  const key = page.searchParams.get("apikey");
  if (key) url.searchParams.set("apikey", key);
  return url.toString();
}

function setStatus(state, label) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = label;
}

function showError(title, detail, code, hint = "") {
  const el = $("error");
  el.replaceChildren();
  const b = document.createElement("b");
  b.textContent = title;
  const small = document.createElement("small");
  small.textContent = hint;
  el.append(b, document.createTextNode(detail), small);
  el.dataset.code = code ?? "";
  el.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").dataset.code = "";
}

function explain(error) {
  if (error instanceof GatewayError) {
    const [title, hint] = ERROR_CLASSES[error.code] || ["Error", ""];
    showError(`${title} (code ${error.code})`, error.message, error.code, hint);
  } else if (error instanceof ConnectionLost && !error.opened) {
    showError(
      "Could not open the WebSocket",
      `The gateway refused ${view.session?.url ?? "the route"} or is not running.`,
      "connect",
      `Check the route; a route with key-auth needs ?apikey=… on this page's URL, and a route ` +
        `with allowed_origins must list ${location.origin}. The page keeps trying.`,
    );
  } else if (error instanceof ConnectionLost) {
    showError("Connection closed", `Code ${error.closeCode}: ${error.message}.`, "closed", "Reconnecting and resuming at the next offset…");
  } else {
    showError("Error", String(error?.message ?? error), "page");
  }
}

function updateStats() {
  $("next").textContent = view.next ?? "–";
  $("hwm").textContent = view.hwm ?? "–";
  $("lag").textContent = view.next != null && view.hwm != null ? Math.max(0, view.hwm - view.next) : "–";
  $("count").textContent = view.count;
  const now = performance.now();
  view.arrivals = view.arrivals.filter((a) => now - a.at < 5000);
  const recent = view.arrivals.reduce((n, a) => n + a.n, 0);
  const span = view.arrivals.length ? Math.max(1000, now - view.arrivals[0].at) : 5000;
  $("rate").textContent = `${Math.round((recent * 1000) / span)}/s`;
}

function addRows(messages) {
  const body = $("messages").tBodies[0];
  const rows = document.createDocumentFragment();
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    const tr = document.createElement("tr");
    tr.className = "fresh";
    tr.dataset.offset = m.offset;
    const headers = (m.headers ?? []).map((h) => `${h.key}=${decode(h.value)}`).join(", ");
    const time = m.timestamp ? new Date(m.timestamp).toLocaleTimeString() : "";
    for (const value of [m.offset, time, decode(m.key), decode(m.value), headers]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    rows.append(tr);
  }
  body.prepend(rows);
  while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
}

async function connect() {
  const url = routeUrl();
  if (view.session && !view.session.closed && view.session.url === url) return view.session;
  view.session?.close();
  const session = new Session(url);
  view.session = session;
  setStatus("connecting", "connecting…");
  session.onclose = () => {
    if (view.session === session) setStatus("closed", "disconnected");
  };
  session.onerror = explain;
  return session.ready;
}

function startOffset(session, topic, partition) {
  switch ($("from").value) {
    case "earliest":
      return session.listOffset(topic, partition, -2);
    case "latest":
      return session.listOffset(topic, partition, -1);
    case "offset":
      return Promise.resolve(Number($("offset").value) || 0);
    case "time": {
      const at = new Date($("time").value).getTime();
      if (Number.isNaN(at)) return Promise.reject(new Error("Pick a time to start from"));
      return session
        .listOffset(topic, partition, at)
        .then((o) => (o === -1 ? session.listOffset(topic, partition, -1) : o));
    }
  }
  return Promise.reject(new Error("unknown start"));
}

/** Starts reading from the chosen position; any earlier stream stops. */
async function start() {
  const stream = ++view.stream;
  const topic = $("topic").value.trim();
  const partition = Number($("partition").value) || 0;
  Object.assign(view, { paused: false, next: null, hwm: null, count: 0, arrivals: [], retries: 0 });
  $("messages").tBodies[0].replaceChildren();
  $("pause").textContent = "Pause";
  $("pause").disabled = false;
  clearError();
  updateStats();
  await run(stream, topic, partition);
}

/** The fetch loop of one stream: resumes at `view.next` after errors and reconnects. */
async function run(stream, topic, partition) {
  while (stream === view.stream) {
    try {
      const session = await connect();
      if (view.next == null) view.next = await startOffset(session, topic, partition);
      if (stream !== view.stream) return;
      if (view.paused) {
        setStatus("paused", "paused");
        // Paused: keep the lag honest by watching the end of the log.
        view.hwm = await session.listOffset(topic, partition, -1);
        updateStats();
        await sleep(1000);
        continue;
      }
      setStatus("live", "live");
      const batch = await session.fetch(topic, partition, view.next);
      if (stream !== view.stream) return;
      const fresh = batch.messages.filter((m) => m.offset >= view.next);
      if (fresh.length) {
        addRows(fresh);
        view.next = fresh[fresh.length - 1].offset + 1;
        view.count += fresh.length;
        view.arrivals.push({ at: performance.now(), n: fresh.length });
      }
      view.hwm = batch.highWatermark;
      view.retries = 0;
      if (!$("error").hidden && $("error").dataset.code !== "3") clearError();
      updateStats();
    } catch (error) {
      if (stream !== view.stream) return;
      explain(error);
      const retry =
        error instanceof ConnectionLost ||
        (error instanceof GatewayError && RETRYABLE.has(error.code) && !/OFFSET_OUT_OF_RANGE/.test(error.message));
      if (!retry) {
        setStatus("error", "stopped");
        $("pause").disabled = true;
        return;
      }
      view.retries += 1;
      setStatus("error", `retrying (${view.retries})…`);
      await sleep(Math.min(5000, 250 * 2 ** Math.min(view.retries, 5)));
    }
  }
}

/** Fills the partition picker by asking for partitions 0, 1, … until one does not exist. */
async function probePartitions() {
  const topic = $("topic").value.trim();
  const select = $("partition");
  if (!topic) return;
  let count = 0;
  try {
    const session = await connect();
    for (; count < 64; count++) {
      try {
        await session.listOffset(topic, count, -2);
      } catch (e) {
        if (e instanceof GatewayError && e.code === 2 && count > 0) break;
        throw e;
      }
    }
  } catch (error) {
    explain(error);
    return;
  }
  const keep = select.value;
  select.replaceChildren(
    ...Array.from({ length: count }, (_, p) => new Option(String(p), String(p), false, String(p) === keep)),
  );
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function init() {
  const params = new URLSearchParams(location.search);
  $("url").value = routeUrl();
  $("url").readOnly = true;
  if (params.get("topic")) $("topic").value = params.get("topic");
  if (params.get("from")) $("from").value = params.get("from");
  $("time").value = new Date(Date.now() - 60_000 - new Date().getTimezoneOffset() * 60_000)
    .toISOString()
    .slice(0, 19);
  const showStartInputs = () => {
    $("offset").hidden = $("from").value !== "offset";
    $("time").hidden = $("from").value !== "time";
  };
  $("from").addEventListener("change", showStartInputs);
  showStartInputs();
  $("topic").addEventListener("change", () => probePartitions());
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  $("pause").addEventListener("click", () => {
    view.paused = !view.paused;
    $("pause").textContent = view.paused ? "Resume" : "Pause";
    if (view.paused) setStatus("paused", "paused");
  });
  setInterval(updateStats, 500);
  probePartitions().then(start);
}

init();
