#!/usr/bin/env node
// Read a Kafka partition through a Streamgate pub/sub route, from Node.js.
//
//   npm ci --prefix examples/node
//   node examples/node/consume.mjs ws://127.0.0.1:9080/kafka --topic demo --from earliest
//
// Prints one line per record: offset, timestamp (ms), key, value, tab-separated. Without
// --follow it stops at the end of the partition. The wire types are loaded from
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
    partition: { type: "string", default: "0" },
    from: { type: "string", default: "earliest" },
    follow: { type: "boolean", default: false },
    limit: { type: "string", default: "0" },
  },
});
const [url] = positionals;
if (!url || !opts.topic || !/^(earliest|latest|\d+)$/.test(opts.from)) {
  console.error("usage: consume.mjs WS_URL --topic T [--partition P] [--from earliest|latest|OFFSET] [--follow] [--limit N]");
  process.exit(2);
}

/** One WebSocket; each command resolves with the answer carrying its sequence. */
class Session {
  constructor(ws) {
    this.ws = ws;
    this.sequence = 0;
    this.pending = new Map();
    ws.on("message", (data) => {
      const resp = PubSubResp.toObject(PubSubResp.decode(data), { longs: Number, defaults: true, oneofs: true });
      const waiter = this.pending.get(resp.sequence);
      if (!waiter) return;
      this.pending.delete(resp.sequence);
      if (resp.resp === "errorResp") {
        waiter.reject(new Error(`${resp.errorResp.message} (code ${resp.errorResp.code})`));
      } else {
        waiter.resolve(resp);
      }
    });
    ws.on("close", (code) => {
      for (const { reject } of this.pending.values()) reject(new Error(`connection closed (${code})`));
      this.pending.clear();
    });
  }

  call(command) {
    const sequence = ++this.sequence;
    return new Promise((resolve, reject) => {
      this.pending.set(sequence, { resolve, reject });
      this.ws.send(PubSubReq.encode(PubSubReq.create({ sequence, ...command })).finish());
    });
  }

  async listOffset(topic, partition, timestamp) {
    return (await this.call({ cmdKafkaListOffset: { topic, partition, timestamp } })).kafkaListOffsetResp.offset;
  }

  async fetch(topic, partition, offset) {
    return (await this.call({ cmdKafkaFetch: { topic, partition, offset } })).kafkaFetchResp;
  }
}

async function main() {
  const ws = new WebSocket(url, { maxPayload: 0 });
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => reject(new Error(`the gateway answered ${res.statusCode}`)));
  });
  const session = new Session(ws);
  const topic = opts.topic;
  const partition = Number(opts.partition);
  const limit = Number(opts.limit);
  let offset = /^\d+$/.test(opts.from)
    ? Number(opts.from)
    : await session.listOffset(topic, partition, opts.from === "earliest" ? -2 : -1);
  const text = (b) => Buffer.from(b).toString("utf8");
  let printed = 0;
  for (;;) {
    const batch = await session.fetch(topic, partition, offset);
    for (const m of batch.messages) {
      if (m.offset < offset) continue;
      process.stdout.write(`${m.offset}\t${m.timestamp}\t${text(m.key)}\t${text(m.value)}\n`);
      offset = m.offset + 1;
      if (limit && ++printed >= limit) return ws.close();
    }
    if (!opts.follow && batch.messages.length === 0 && offset >= batch.highWatermark) return ws.close();
  }
}

main().catch((error) => {
  console.error(`consume.mjs: ${error.message}`);
  process.exit(1);
});
