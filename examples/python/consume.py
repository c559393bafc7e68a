#!/usr/bin/env python3
"""Read a Kafka topic through a Streamgate pub/sub route, from Python.

    pip install -r examples/python/requirements.txt
    python3 examples/python/consume.py ws://127.0.0.1:9080/kafka --topic demo --from earliest

Prints one line per record: offset, timestamp (ms), key, value, partition, tab-separated. It
subscribes (the gateway pushes records within the credit it grants); without --follow it stops
once every partition is caught up, and it prints the resume cursor on stderr at exit. The wire types are generated from proto/pubsub.proto at
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


def record_line(partition, m):
    key = m.key.decode("utf-8", "replace")
    value = m.value.decode("utf-8", "replace")
    return f"{m.offset}\t{m.timestamp}\t{key}\t{value}\t{partition}"


async def consume(args):
    """One push subscription: the gateway pushes records as far as the credit granted allows;
    the window is topped up as records are printed, so a slow reader is never flooded."""
    async with websockets.connect(args.url, max_size=None) as ws:
        def room(printed):
            return min(args.credit, args.limit - printed) if args.limit else args.credit

        sub = pb.CmdKafkaSubscribe(topic=args.topic, credit_records=room(0))
        if args.group:
            # The group assigns partitions and holds the position; this client commits what it
            # printed, so the next run (anywhere) goes on from there.
            sub.group = args.group
            setattr(sub, "from", pb.CmdKafkaSubscribe.EARLIEST if args.start == "earliest" else pb.CmdKafkaSubscribe.LATEST)
        elif args.cursor:
            sub.cursor = args.cursor
        elif args.start.isdigit():
            partition = args.partition or 0
            sub.partitions.append(partition)
            sub.offsets.add(partition=partition, offset=int(args.start))
        else:
            setattr(sub, "from", pb.CmdKafkaSubscribe.EARLIEST if args.start == "earliest" else pb.CmdKafkaSubscribe.LATEST)
            if args.partition is not None:
                sub.partitions.append(args.partition)
        await ws.send(pb.PubSubReq(sequence=1, cmd_kafka_subscribe=sub).SerializeToString())
        sequence, printed, outstanding, waiting, cursor = 1, 0, room(0), None, None
        committing = None  # the sequence of a commit not answered yet

        async def commit(position):
            nonlocal sequence, committing
            sequence += 1
            committing = sequence
            ask = pb.CmdKafkaCommit(subscription=1, cursor=position)
            await ws.send(pb.PubSubReq(sequence=sequence, cmd_kafka_commit=ask).SerializeToString())

        async def settle():
            # Before leaving, the last commit's answer: an unanswered commit may be lost.
            while committing is not None:
                await answer(pb.PubSubResp.FromString(await ws.recv()))

        async def answer(resp):
            nonlocal committing
            if resp.sequence == committing:
                committing = None
                # REBALANCING (11): the next commit, after the new assignment, covers it.
                if resp.WhichOneof("resp") == "error_resp" and resp.error_resp.code != 11:
                    raise GatewayError(resp.error_resp.code, resp.error_resp.message)
                return True
            return False

        try:
            while True:
                resp = pb.PubSubResp.FromString(await ws.recv())
                if await answer(resp):
                    continue
                kind = resp.WhichOneof("resp")
                if kind == "error_resp":
                    raise GatewayError(resp.error_resp.code, resp.error_resp.message)
                if kind == "kafka_assignment":
                    waiting = {p.partition for p in resp.kafka_assignment.assigned}
                    continue
                if kind == "kafka_subscribe_resp":
                    waiting = {p.partition for p in resp.kafka_subscribe_resp.partitions}
                    cursor = resp.kafka_subscribe_resp.cursor
                    continue
                if kind != "kafka_records_push":
                    continue
                push = resp.kafka_records_push
                for batch in push.batches:
                    for m in batch.messages:
                        print(record_line(batch.partition, m), flush=True)
                        printed += 1
                        outstanding -= 1
                    if batch.caught_up:
                        waiting.discard(batch.partition)
                cursor = push.cursor
                if args.group:
                    await commit(push.cursor)
                if args.limit and printed >= args.limit:
                    await settle()
                    return
                if not args.follow and not waiting:
                    await settle()
                    return
                want = room(printed)
                if 2 * outstanding < want:
                    sequence += 1
                    credit = pb.CmdKafkaCredit(subscription=1, records=want - outstanding)
                    await ws.send(pb.PubSubReq(sequence=sequence, cmd_kafka_credit=credit).SerializeToString())
                    outstanding = want
        finally:
            if cursor:
                print(f"cursor: {cursor}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the route's WebSocket URL, e.g. ws://127.0.0.1:9080/kafka")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partition", type=int, default=None, help="one partition (default: all)")
    parser.add_argument("--cursor", help="resume from a cursor printed by an earlier run")
    parser.add_argument("--group", help="read as a member of this consumer group, committing what is printed")
    parser.add_argument("--credit", type=int, default=500, help="records the gateway may push ahead")
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
