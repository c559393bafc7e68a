#!/usr/bin/env python3
"""Read a Kafka partition through a Streamgate pub/sub route, from Python.

    pip install -r examples/python/requirements.txt
    python3 examples/python/consume.py ws://127.0.0.1:9080/kafka --topic demo --from earliest

Prints one line per record: offset, timestamp (ms), key, value, tab-separated. Without --follow
it stops at the end of the partition. The wire types are generated from proto/pubsub.proto at
start (with the protoc bundled in grpcio-tools), so they never drift from the gateway's.
"""

import argparse
import asyncio
import importlib
import pathlib
import sys
import tempfile

import websockets
from grpc_tools import protoc

PROTO = pathlib.Path(__file__).resolve().parent.parent.parent / "proto" / "pubsub.proto"


def load_wire_types():
    """Generates pubsub_pb2 from the proto into a temporary folder and imports it."""
    out = tempfile.mkdtemp(prefix="streamgate-pb-")
    status = protoc.main(
        ["protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)]
    )
    if status != 0:
        sys.exit(f"consume.py: protoc could not compile {PROTO}")
    sys.path.insert(0, out)
    return importlib.import_module("pubsub_pb2")


pb = load_wire_types()


class GatewayError(Exception):
    """The gateway answered a command with error_resp (code: see proto/pubsub.proto)."""

    def __init__(self, code, message):
        super().__init__(f"{message} (code {code})")
        self.code = code


class Session:
    """One WebSocket; each command waits for the answer carrying its sequence."""

    def __init__(self, ws):
        self.ws = ws
        self.sequence = 0

    async def call(self, **command):
        self.sequence += 1
        await self.ws.send(pb.PubSubReq(sequence=self.sequence, **command).SerializeToString())
        while True:
            resp = pb.PubSubResp.FromString(await self.ws.recv())
            if resp.sequence != self.sequence:
                continue
            if resp.WhichOneof("resp") == "error_resp":
                raise GatewayError(resp.error_resp.code, resp.error_resp.message)
            return resp

    async def list_offset(self, topic, partition, timestamp):
        cmd = pb.CmdKafkaListOffset(topic=topic, partition=partition, timestamp=timestamp)
        return (await self.call(cmd_kafka_list_offset=cmd)).kafka_list_offset_resp.offset

    async def fetch(self, topic, partition, offset):
        cmd = pb.CmdKafkaFetch(topic=topic, partition=partition, offset=offset)
        return (await self.call(cmd_kafka_fetch=cmd)).kafka_fetch_resp


async def consume(args):
    async with websockets.connect(args.url, max_size=None) as ws:
        session = Session(ws)
        if args.start in ("earliest", "latest"):
            stamp = -2 if args.start == "earliest" else -1
            offset = await session.list_offset(args.topic, args.partition, stamp)
        else:
            offset = int(args.start)
        printed = 0
        while True:
            batch = await session.fetch(args.topic, args.partition, offset)
            for m in batch.messages:
                if m.offset < offset:
                    continue
                key = m.key.decode("utf-8", "replace")
                value = m.value.decode("utf-8", "replace")
                print(f"{m.offset}\t{m.timestamp}\t{key}\t{value}", flush=True)
                offset = m.offset + 1
                printed += 1
                if args.limit and printed >= args.limit:
                    return
            if not args.follow and not batch.messages and offset >= batch.high_watermark:
                return


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the route's WebSocket URL, e.g. ws://127.0.0.1:9080/kafka")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--from", dest="start", default="earliest", help="earliest, latest or an offset")
    parser.add_argument("--follow", action="store_true", help="keep waiting at the end of the log")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many records")
    args = parser.parse_args()
    if args.start not in ("earliest", "latest") and not args.start.isdigit():
        parser.error(f"--from {args.start}: expected earliest, latest or an offset")
    try:
        asyncio.run(consume(args))
    except GatewayError as e:
        sys.exit(f"consume.py: {e}")
    except (OSError, websockets.exceptions.WebSocketException) as e:
        sys.exit(f"consume.py: {args.url}: {e}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
