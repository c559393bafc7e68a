#!/usr/bin/env node
// Read a Kafka topic through a Streamgate pub/sub route, from Node.js.
//
//   npm ci --prefix examples/node
//   node examples/node/consume.mjs ws://127.0.0.1:9080/kafka --topic demo --from earliest
//
// Prints one line per record: offset, timestamp (ms), key, value, partition, tab-separated. It
// subscribes: the gateway pushes records within the credit granted here, topped up as records are
// printed. Without --follow it stops once every partition is caught up; at exit it prints the
// resume cursor on stderr (--cursor resumes from it). The wire types are loaded from
// proto/pubsub.proto with protobufjs, so they never drift from the gateway's.
import protobuf from "protobufjs";
import WebSocket from "ws";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";

const proto = fileURLToPath(new URL("../../proto/pubsub.proto", import.meta.url));
const root = protobuf.loadSync(proto);
const PubSubReq = root.lookupType("PubSubReq");
const PubSubResp = root.lookupType("PubSubResp");

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    topic: { type: "string" },
    partition: { type: "string" },
    cursor: { type: "string" },
    group: { type: "string" },
    credit: { type: "string", default: "500" },
    from: { type: "string", default: "earliest" },
    follow: { type: "boolean", default: false },
    limit: { type: "string", default: "0" },
  },
});
const [url] = positionals;
if (!url || !opts.topic || !/^(earliest|latest|\d+)$/.test(opts.from)) {
  console.error("usage: consume.mjs WS_URL --topic T [--partition P] [--from earliest|latest|OFFSET] [--cursor C] [--group NAME] [--credit N] [--follow] [--limit N]");
  process.exit(2);
}

async function main() {
  const ws = new WebSocket(url, { maxPayload: 0 });
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => reject(new Error(`the gateway answered ${res.statusCode}`)));
  });
  const limit = Number(opts.limit);
  const window = Number(opts.credit);
  // Never more credit than the limit leaves, so the cursor never passes an unprinted record.
  const room = (printed) => (limit ? Math.min(window, limit - printed) : window);
  const subscribe = { topic: opts.topic, creditRecords: room(0) };
  const partition = opts.partition === undefined ? undefined : Number(opts.partition);
  if (opts.group) {
    // The group assigns partitions and holds the position; what is printed is committed, so the
    // next run (anywhere) goes on from there.
    subscribe.group = opts.group;
    subscribe.from = opts.from === "latest" ? 0 : 1;
  } else if (opts.cursor) {
    subscribe.cursor = opts.cursor;
  } else if (/^\d+$/.test(opts.from)) {
    const p = partition ?? 0;
    subscribe.partitions = [p];
    subscribe.offsets = [{ partition: p, offset: Number(opts.from) }];
  } else {
    subscribe.from = opts.from === "earliest" ? 1 : 0;
    if (partition !== undefined) subscribe.partitions = [partition];
  }
  const send = (sequence, command) => ws.send(PubSubReq.encode(PubSubReq.create({ sequence, ...command })).finish());
  const text = (b) => Buffer.from(b).toString("utf8");
  let sequence = 1;
  let printed = 0;
  let outstanding = room(0);
  let waiting = null;
  let cursor = null;
  // The sequence of a commit not answered yet; leaving waits for it (a commit still queued when
  // the connection closes may be lost).
  let committing = null;
  let finished = false;
  const done = new Promise((resolve, reject) => {
    const finish = () => {
      finished = true;
      if (committing === null) resolve();
    };
    ws.on("close", (code) => reject(new Error(`connection closed (${code})`)));
    ws.on("message", (data) => {
      const resp = PubSubResp.toObject(PubSubResp.decode(data), { longs: Number, defaults: true, oneofs: true });
      if (committing !== null && resp.sequence === committing) {
        committing = null;
        // REBALANCING (11): the next commit, after the new assignment, covers it.
        if (resp.resp === "errorResp" && resp.errorResp.code !== 11) {
          return reject(new Error(`${resp.errorResp.message} (code ${resp.errorResp.code})`));
        }
        if (finished) resolve();
        return;
      }
      if (finished) return;
      if (resp.resp === "kafkaAssignment") {
        waiting = new Set(resp.kafkaAssignment.assigned.map((p) => p.partition));
        return;
      }
      if (resp.resp === "errorResp") {
        return reject(new Error(`${resp.errorResp.message} (code ${resp.errorResp.code})`));
      }
      if (resp.resp === "kafkaSubscribeResp") {
        waiting = new Set(resp.kafkaSubscribeResp.partitions.map((p) => p.partition));
        cursor = resp.kafkaSubscribeResp.cursor;
        return;
      }
      if (resp.resp !== "kafkaRecordsPush") return;
      for (const batch of resp.kafkaRecordsPush.batches) {
        for (const m of batch.messages) {
          process.stdout.write(`${m.offset}\t${m.timestamp}\t${text(m.key)}\t${text(m.value)}\t${batch.partition}\n`);
          printed += 1;
          outstanding -= 1;
        }
        if (batch.caughtUp) waiting.delete(batch.partition);
      }
      cursor = resp.kafkaRecordsPush.cursor;
      if (opts.group) {
        committing = ++sequence;
        send(committing, { cmdKafkaCommit: { subscription: 1, cursor } });
      }
      if ((limit && printed >= limit) || (!opts.follow && waiting.size === 0)) return finish();
      const want = room(printed);
      if (2 * outstanding < want) {
        send(++sequence, { cmdKafkaCredit: { subscription: 1, records: want - outstanding } });
        outstanding = want;
      }
    });
  });
  send(1, { cmdKafkaSubscribe: subscribe });
  try {
    await done;
  } finally {
    if (cursor) console.error(`cursor: ${cursor}`);
    ws.close();
  }
}

main().catch((error) => {
  console.error(`consume.mjs: ${error.message}`);
  process.exit(1);
});
