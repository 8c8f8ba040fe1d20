#!/usr/bin/env python3
"""The Confluent Python client's side of the envelope interop test.

Uses confluent-kafka's AvroSerializer/AvroDeserializer (PyPI), which nobody here wrote, against
the same Kafka broker and schema registry as the Rust codec.

  produce: writes --count envelopes with the committed schema, prints them as JSON lines
  consume: reads --count records from the start of --topic, prints the decoded dicts as JSON lines
"""
import argparse
import datetime
import json
import sys
import warnings

warnings.filterwarnings("ignore")

from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: E402
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer  # noqa: E402
from confluent_kafka.serialization import MessageField, SerializationContext  # noqa: E402


def to_json(value):
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    raise TypeError(f"not JSON serialisable: {value!r}")


def produce(args, registry):
    schema = open(args.schema).read()
    serializer = AvroSerializer(registry, schema, conf={"auto.register.schemas": True})
    producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True})
    for i in range(args.count):
        event = {
            "id": f"py-{i}",
            "source": "/interop/python",
            "type": "io.taskfactory.interop.python",
            "specversion": "1.0",
            "subject": None if i % 2 else f"subject-{i}",
            "time": datetime.datetime(2026, 1, 2, 3, 4, 5, i * 1000, tzinfo=datetime.timezone.utc),
            "datacontenttype": "application/json",
            "data": json.dumps({"n": i, "who": "confluent-kafka-python"}),
            "traceparent": None,
            "extensions": {"lang": "python"},
        }
        ctx = SerializationContext(args.topic, MessageField.VALUE)
        producer.produce(args.topic, key=event["id"], value=serializer(event, ctx))
        print(json.dumps(event, default=to_json), flush=True)
    if producer.flush(30) != 0:
        sys.exit("producer could not deliver every record within 30 s")


def consume(args, registry):
    deserializer = AvroDeserializer(registry)
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": f"interop-{args.topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([args.topic])
    seen, deadline = 0, datetime.datetime.now() + datetime.timedelta(seconds=60)
    while seen < args.count:
        if datetime.datetime.now() > deadline:
            sys.exit(f"read {seen} of {args.count} records within 60 s")
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            sys.exit(f"consumer error: {msg.error()}")
        value = deserializer(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE))
        print(json.dumps(value, default=to_json), flush=True)
        seen += 1
    consumer.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["produce", "consume"])
    p.add_argument("--brokers", required=True)
    p.add_argument("--registry", required=True, help="Confluent-compatible API root")
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--schema", help="Avro schema file (produce)")
    args = p.parse_args()
    registry = SchemaRegistryClient({"url": args.registry})
    (produce if args.mode == "produce" else consume)(args, registry)


if __name__ == "__main__":
    main()
