// The live demo page: reads a Kafka topic through Streamgate's pub/sub WebSocket route with a push
// subscription. The gateway pushes records as far as the credit this page grants (a window topped
// up as rows are shown), marks when each partition has caught up with the history, and gives a
// cursor after every push: pausing unsubscribes, resuming and reconnecting subscribe again from
// the cursor, so nothing is lost or shown twice. With "Resume where I left off" the page reads as a
// member of a Kafka consumer group instead: the group assigns the partitions (open windows share
// them) and keeps the position, which the page commits after every push it shows, so any browser
// on any gateway goes on from there. The wire types come from proto/pubsub.proto
// (bundled at build time by build.mjs).
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
  11: ["The group is rebalancing", "Its members are being reassigned; the page goes on with the next assignment."],
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
/** Records the gateway may push ahead of what the page has shown. */
const CREDIT_WINDOW = 200;

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

/** One pub/sub WebSocket: commands are answered by sequence, in any order; pushes go to their
 * subscription's handler. */
class Session {
  constructor(url) {
    this.url = url;
    this.pending = new Map();
    this.subscriptions = new Map();
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
        for (const sub of this.subscriptions.values()) sub.onend(lost);
        this.subscriptions.clear();
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
    const sub = this.subscriptions.get(resp.sequence ?? 0);
    if (!waiter && sub) {
      if (resp.kafkaRecordsPush) sub.onpush(resp.kafkaRecordsPush);
      if (resp.kafkaAssignment) sub.onassign?.(resp.kafkaAssignment);
      if (resp.errorResp) {
        // An error under a subscription's sequence ends it.
        this.subscriptions.delete(resp.sequence);
        sub.onend(new GatewayError(resp.errorResp.code, resp.errorResp.message));
      }
      return;
    }
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

  /** Subscribes; `handler.onpush(push)` gets its pushes, `handler.onend(error)` its end.
   * Resolves with the subscription's number and where it starts. */
  async subscribe(command, handler) {
    const sequence = this.sequence + 1;
    this.subscriptions.set(sequence, handler);
    try {
      const resp = await this.call({ cmdKafkaSubscribe: command });
      return { sequence, started: resp.kafkaSubscribeResp };
    } catch (error) {
      this.subscriptions.delete(sequence);
      throw error;
    }
  }

  /** More credit; not answered. */
  credit(subscription, records) {
    if (this.closed) return;
    const sequence = ++this.sequence;
    this.ws.send(PubSubReq.encode(PubSubReq.create({ sequence, cmdKafkaCredit: { subscription, records } })).finish());
  }

  /** Ends a subscription; resolves with the cursor after the last record it delivered. */
  async unsubscribe(subscription) {
    const resp = await this.call({ cmdKafkaUnsubscribe: { subscription } });
    this.subscriptions.delete(subscription);
    return resp.kafkaUnsubscribeResp.cursor;
  }

  /** Commits a group subscription's position (the cursor of a push it showed). */
  commit(subscription, cursor) {
    return this.call({ cmdKafkaCommit: { subscription, cursor } });
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
  /** The open subscription: { sequence, outstanding, ended } */
  sub: null,
  /** Resume point after the last record shown. */
  cursor: null,
  /** partition -> { next, hwm, caughtUp } */
  parts: new Map(),
  caughtUpAt: null,
  count: 0,
  arrivals: [],
  retries: 0,
  /** With "resume where I left off": { name, generation, memberId, partitions } */
  group: null,
  /** partition -> next offset, as of the last commit the broker acknowledged. */
  committed: null,
};

/** The group this page reads as with "resume where I left off": `?group=` or "demo-page". The
 * route's group_prefix (and, with group_from_claim, the user's namespace) goes in front of it. */
function groupName() {
  return new URLSearchParams(location.search).get("group") || "demo-page";
}

function routeUrl() {
  const page = new URL(location.href);
  const url = new URL(page.searchParams.get("route") || "/kafka", page);
  url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
  // Browsers cannot set headers on a WebSocket: a key (key-auth) or a token (jwt-auth, e.g. from
  // an identity provider) in the page's query string is passed on in the WebSocket's.
  for (const name of ["apikey", "jwt"]) {
    const value = page.searchParams.get(name);
    if (value) url.searchParams.set(name, value);
  }
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
      `Check the route; a route with key-auth needs ?apikey=… on this page's URL (with jwt-auth, ?jwt=… ` +
        `with a token that has not expired), and a route ` +
        `with allowed_origins must list ${location.origin}. The page keeps trying.`,
    );
  } else if (error instanceof ConnectionLost) {
    showError("Connection closed", `Code ${error.closeCode}: ${error.message}.`, "closed", "Reconnecting and resuming at the next offset…");
  } else {
    showError("Error", String(error?.message ?? error), "page");
  }
}

function updateStats() {
  const parts = [...view.parts.entries()].sort((a, b) => a[0] - b[0]);
  const sum = (f) => (parts.length ? parts.reduce((n, [, p]) => n + f(p), 0) : "–");
  $("next").textContent = sum((p) => p.next);
  $("hwm").textContent = sum((p) => p.hwm);
  $("lag").textContent = sum((p) => Math.max(0, p.hwm - p.next));
  $("lags").textContent = parts
    .map(([partition, p]) => `p${partition}: ${Math.max(0, p.hwm - p.next)} behind${p.caughtUp ? " ✓" : ""}`)
    .join(" · ");
  $("count").textContent = view.count;
  const now = performance.now();
  view.arrivals = view.arrivals.filter((a) => now - a.at < 5000);
  const recent = view.arrivals.reduce((n, a) => n + a.n, 0);
  const span = view.arrivals.length ? Math.max(1000, now - view.arrivals[0].at) : 5000;
  $("rate").textContent = `${Math.round((recent * 1000) / span)}/s`;
}

function addRows(partition, messages) {
  const body = $("messages").tBodies[0];
  const rows = document.createDocumentFragment();
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    const tr = document.createElement("tr");
    tr.className = "fresh";
    tr.dataset.partition = partition;
    tr.dataset.offset = m.offset;
    const headers = (m.headers ?? []).map((h) => `${h.key}=${decode(h.value)}`).join(", ");
    const time = m.timestamp ? new Date(m.timestamp).toLocaleTimeString() : "";
    for (const value of [partition, m.offset, time, decode(m.key), decode(m.value), headers]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    rows.append(tr);
  }
  body.prepend(rows);
  while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
}

/** A row across the table that marks a moment in the stream. */
function markRow(className, text) {
  const tr = document.createElement("tr");
  tr.className = className;
  const td = document.createElement("td");
  td.colSpan = 6;
  td.textContent = text;
  tr.append(td);
  $("messages").tBodies[0].prepend(tr);
}

/** Every partition has delivered the history there was at subscribe time: say so, once. */
function markCaughtUp() {
  view.caughtUpAt = new Date();
  markRow("caught-up", `caught up at ${view.caughtUpAt.toLocaleTimeString()}: history above, live records from here`);
  $("caughtup").textContent = `Caught up at ${view.caughtUpAt.toLocaleTimeString()} after ${view.count} records; live from here.`;
  $("caughtup").hidden = false;
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

/** The subscribe command for the chosen start, or the cursor when resuming. */
function subscribeCommand(topic, partition) {
  const command = { topic, creditRecords: CREDIT_WINDOW };
  if ($("resume").checked) {
    // The group assigns the partitions and starts each at its commit; `from` counts only where
    // the group has none. Commits are the page's own (MANUAL), after each push it showed.
    const from = $("from").value === "latest" ? 0 : 1;
    return { ...command, group: groupName(), commit: 0, from };
  }
  if (partition !== null) command.partitions = [partition];
  if (view.cursor) return { ...command, cursor: view.cursor };
  switch ($("from").value) {
    case "earliest":
      return { ...command, from: 1 };
    case "latest":
      return { ...command, from: 0 };
    case "offset": {
      const offset = Number($("offset").value) || 0;
      const partitions = partition !== null ? [partition] : [...$("partition").options].map((o) => Number(o.value)).filter((p) => !Number.isNaN(p));
      return { ...command, offsets: partitions.map((p) => ({ partition: p, offset })) };
    }
    case "time": {
      const at = new Date($("time").value).getTime();
      if (Number.isNaN(at)) throw new Error("Pick a time to start from");
      return { ...command, from: 2, timestampMs: at };
    }
  }
  throw new Error("unknown start");
}

/** Starts reading from the chosen position; any earlier stream stops. */
async function start() {
  const stream = ++view.stream;
  const topic = $("topic").value.trim();
  const choice = $("partition").value;
  const partition = choice === "all" || $("resume").checked ? null : Number(choice);
  const old = view.sub;
  if (old && view.session && !view.session.closed) view.session.unsubscribe(old.sequence).catch(() => {});
  old?.end.resolve();
  Object.assign(view, { paused: false, sub: null, cursor: null, parts: new Map(), caughtUpAt: null, count: 0, arrivals: [], retries: 0, group: null, committed: null });
  $("caughtup").hidden = true;
  showMember();
  $("messages").tBodies[0].replaceChildren();
  $("pause").textContent = "Pause";
  $("pause").disabled = false;
  clearError();
  updateStats();
  await run(stream, topic, partition);
}

/** One subscription of `stream`: shows its pushes, keeps its credit topped up; resolves when it
 * is unsubscribed (pause), rejects with what ended it otherwise. */
async function subscribe(session, stream, topic, partition) {
  let end;
  const ended = new Promise((resolve, reject) => (end = { resolve, reject }));
  const sub = { sequence: 0, outstanding: CREDIT_WINDOW, ended, end };
  const handler = {
    onpush(push) {
      if (stream !== view.stream || view.sub !== sub) return;
      let shown = 0;
      for (const batch of push.batches ?? []) {
        const part = view.parts.get(batch.partition) ?? { next: 0, hwm: 0, caughtUp: false };
        const messages = batch.messages ?? [];
        if (messages.length) {
          addRows(batch.partition, messages);
          part.next = messages[messages.length - 1].offset + 1;
          shown += messages.length;
        }
        part.hwm = Math.max(part.hwm, batch.highWatermark ?? 0);
        if (batch.caughtUp) part.caughtUp = true;
        view.parts.set(batch.partition, part);
      }
      view.cursor = push.cursor;
      if (view.group && shown) {
        const offsets = Object.fromEntries([...view.parts].map(([p, part]) => [p, part.next]));
        commitShown(session, sub, { cursor: push.cursor, offsets });
      }
      if (shown) {
        view.count += shown;
        view.arrivals.push({ at: performance.now(), n: shown });
        sub.outstanding -= shown;
      }
      if (!view.caughtUpAt && view.parts.size && [...view.parts.values()].every((p) => p.caughtUp)) markCaughtUp();
      if (2 * sub.outstanding < CREDIT_WINDOW) {
        session.credit(sub.sequence, CREDIT_WINDOW - sub.outstanding);
        sub.outstanding = CREDIT_WINDOW;
      }
      updateStats();
    },
    onassign(assignment) {
      if (stream !== view.stream || view.sub !== sub || !view.group) return;
      for (const p of assignment.revoked ?? []) {
        view.parts.delete(p);
        markRow("handed-over", `partition ${p} went to another member of the group: rows above come from the partitions this window still reads`);
      }
      for (const p of assignment.assigned ?? []) {
        const part = view.parts.get(p.partition);
        if (part) part.hwm = Math.max(part.hwm, p.highWatermark);
        else view.parts.set(p.partition, { next: p.offset, hwm: p.highWatermark, caughtUp: false });
      }
      view.group.generation = assignment.generation;
      view.group.partitions = (assignment.assigned ?? []).map((p) => p.partition).sort((a, b) => a - b);
      showMember();
      updateStats();
    },
    onend: (error) => end.reject(error),
  };
  // Pushes may follow the answer at once: the subscription is the page's before it is sent.
  sub.sequence = session.sequence + 1;
  view.sub = sub;
  const command = subscribeCommand(topic, partition);
  const { started } = await session.subscribe(command, handler);
  if (command.group) {
    // The group decides what this member reads: what the page showed before is not its business.
    view.parts = new Map();
    view.group = {
      name: command.group,
      generation: started.generation,
      memberId: started.memberId,
      partitions: (started.partitions ?? []).map((p) => p.partition).sort((a, b) => a - b),
    };
    showMember();
  } else if (!view.cursor) view.cursor = started.cursor;
  for (const p of started.partitions ?? []) {
    const part = view.parts.get(p.partition);
    if (part) part.hwm = Math.max(part.hwm, p.highWatermark);
    else view.parts.set(p.partition, { next: p.offset, hwm: p.highWatermark, caughtUp: false });
  }
  updateStats();
  return ended;
}

/** Commits the cursor of a push the page showed (`position`: the cursor and the next offsets it
 * stands for): one commit in flight, the newest cursor next. A
 * commit during a rebalance is refused (REBALANCING) and not retried: the next push after the new
 * assignment commits again. */
function commitShown(session, sub, position) {
  sub.toCommit = position;
  if (sub.committing) return;
  sub.committing = true;
  const next = () => {
    const position = sub.toCommit;
    sub.toCommit = null;
    if (!position || session.closed || view.sub !== sub) {
      sub.committing = false;
      return;
    }
    session
      .commit(sub.sequence, position.cursor)
      .then(() => {
        view.committed = { ...view.committed, ...position.offsets };
      })
      .catch(() => {})
      .finally(next);
  };
  next();
}

/** Says which group this page reads as and which partitions it was given. */
function showMember() {
  const el = $("member");
  const g = view.group;
  el.hidden = !g;
  if (!g) return;
  const parts = g.partitions.length ? `partitions ${g.partitions.join(", ")}` : "no partitions (other members hold them all)";
  el.textContent = `Group "${g.name}", generation ${g.generation}: this window reads ${parts}.`;
  el.dataset.partitions = g.partitions.join(",");
}

/** Runs one stream: subscribes, waits while paused, resubscribes from the cursor after errors
 * and reconnects. */
async function run(stream, topic, partition) {
  while (stream === view.stream) {
    try {
      const session = await connect();
      if (stream !== view.stream) return;
      if (view.paused) {
        setStatus("paused", "paused");
        // Paused: keep the lag honest by watching the end of each partition's log.
        for (const [p, part] of view.parts) part.hwm = await session.listOffset(topic, p, -1);
        updateStats();
        await sleep(1000);
        continue;
      }
      setStatus("live", "live");
      const ended = await subscribe(session, stream, topic, partition);
      view.retries = 0;
      if (!$("error").hidden && $("error").dataset.code !== "3") clearError();
      await ended;
    } catch (error) {
      view.sub = null;
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

/** Pause: unsubscribe (the cursor says where it stopped). Resume: the stream subscribes again
 * from that cursor. */
async function togglePause() {
  view.paused = !view.paused;
  $("pause").textContent = view.paused ? "Resume" : "Pause";
  if (!view.paused) return;
  setStatus("paused", "paused");
  const sub = view.sub;
  if (!sub || !view.session || view.session.closed) return;
  try {
    view.cursor = await view.session.unsubscribe(sub.sequence);
    view.sub = null;
    sub.end.resolve();
  } catch (error) {
    sub.end.reject(error);
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
    new Option("all", "all", false, keep === "all"),
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
  $("pause").addEventListener("click", () => togglePause());
  // "Resume where I left off" is remembered by this browser, and `?resume=1` turns it on.
  $("resume").checked = params.get("resume") === "1" || localStorage.getItem("streamgate-demo-resume") === "1";
  const showResume = () => {
    $("partition").disabled = $("resume").checked;
  };
  showResume();
  $("resume").addEventListener("change", () => {
    localStorage.setItem("streamgate-demo-resume", $("resume").checked ? "1" : "0");
    showResume();
    start();
  });
  setInterval(updateStats, 500);
  probePartitions().then(start);
}

init();
// For tests and the curious: what the page shows and where its group stands.
window.streamgateDemo = view;
