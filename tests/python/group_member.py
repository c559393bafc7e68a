"""A librdkafka consumer in a consumer group, for tests/groups.rs.

Joins GROUP on BOOTSTRAP with the range assignor, reads TOPIC, commits after every record, and
prints one JSON line per event on stdout: {"assigned": [...]}, {"revoked": [...]},
{"record": [partition, offset, value]}. It stops when stdin closes (or after --seconds), then
prints {"committed": {partition: offset}} as the broker's OffsetFetch reports it, and leaves.

With --commit P:OFFSET,... it only commits those offsets for the group (as a tool would, without
joining) and prints what the broker then reports.
"""
import argparse
import json
import select
import sys
import time

from confluent_kafka import Consumer, TopicPartition


def say(event):
    print(json.dumps(event), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bootstrap")
    p.add_argument("group")
    p.add_argument("topic")
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--commit", default="")
    a = p.parse_args()
    consumer = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group,
        "partition.assignment.strategy": "range",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    if a.commit:
        offsets = [
            TopicPartition(a.topic, int(part), int(offset))
            for part, offset in (pair.split(":") for pair in a.commit.split(","))
        ]
        consumer.commit(offsets=offsets, asynchronous=False)
        committed = consumer.committed(
            [TopicPartition(a.topic, p) for p in range(a.partitions)], timeout=10
        )
        say({"committed": {str(tp.partition): tp.offset for tp in committed}})
        consumer.close()
        return
    consumer.subscribe(
        [a.topic],
        on_assign=lambda c, parts: say({"assigned": sorted(tp.partition for tp in parts)}),
        on_revoke=lambda c, parts: say({"revoked": sorted(tp.partition for tp in parts)}),
    )
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        readable, _, _ = select.select([sys.stdin], [], [], 0)
        if readable and not sys.stdin.readline():
            break
        msg = consumer.poll(0.1)
        if msg is None or msg.error():
            continue
        say({"record": [msg.partition(), msg.offset(), msg.value().decode()]})
        consumer.commit(message=msg, asynchronous=False)
    committed = consumer.committed(
        [TopicPartition(a.topic, p) for p in range(a.partitions)], timeout=10
    )
    say({"committed": {str(tp.partition): tp.offset for tp in committed}})
    consumer.close()


if __name__ == "__main__":
    main()
