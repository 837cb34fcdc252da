#!/usr/bin/env python3
"""confluent-kafka with SASL OAUTHBEARER: librdkafka's oauth_cb hands it
the JWT given with --token (minted by the caller, signed by a key of the
broker's JWKS); the producer logs in on a SASL_PLAINTEXT listener and
sends --count records to --topic. Prints one JSON line and exits 0 when
every record was delivered; exits 1 naming the client's errors (an
authentication refused, a topic not authorized) otherwise.

Not one of run-all.sh's scenarios (it needs a broker configured with a
JWKS and a token for it): cli/tests/kafka_sasl.rs runs it.
"""

import json
import time

import common

common.ensure_venv()

from confluent_kafka import Producer  # noqa: E402


def extra(parser):
    parser.add_argument("--token", required=True, help="the JWT to log in with")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, default=3)


def main():
    args = common.parse_args(__doc__, extra)
    client_errors = []
    delivery_errors = []
    delivered = []

    def oauth_cb(_config):
        # The token's own exp is what the broker checks; librdkafka only
        # uses this to know when to ask for a new one.
        return args.token, time.time() + 300

    def on_error(err):
        client_errors.append(f"{err.name()}: {err.str()}")

    def on_delivery(err, message):
        if err is not None:
            delivery_errors.append(err.name())
        else:
            delivered.append(message.offset())

    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "OAUTHBEARER",
        "oauth_cb": oauth_cb,
        "error_cb": on_error,
        "message.timeout.ms": 8000,
    })
    for seq in range(args.count):
        producer.produce(args.topic, value=f"oauth {seq}", on_delivery=on_delivery)
        producer.poll(0)
    # Until every record is answered, or the login was refused (librdkafka
    # would retry it until the records time out), or 12 s.
    deadline = time.monotonic() + 12
    while len(delivered) + len(delivery_errors) < args.count and time.monotonic() < deadline:
        if any(error.startswith("_AUTHENTICATION") for error in client_errors):
            break
        producer.poll(0.1)
    if len(delivered) != args.count:
        common.fail(f"delivered {len(delivered)} of {args.count}; delivery errors {sorted(set(delivery_errors))}; "
                    f"client errors {client_errors[:3]}")
    print(json.dumps({"delivered": len(delivered)}), flush=True)


if __name__ == "__main__":
    main()
