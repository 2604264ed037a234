"""Standard Webhooks, checked with the specification's own Python library (`standardwebhooks`).

    verify <secret> <calls.json>   each recorded call {"headers": {...}, "body": "..."} that
                                   recsync sent must verify with the library
    sign <secret> <in.json> <out.json>
                                   signs each {"id": ..., "body": ...} with the library, now,
                                   and writes the headers a sender would send

Prints `OK <n> checks` at the end.
"""

import json
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def verify(secret, path):
    wh = Webhook(secret)
    calls = json.load(open(path))
    checks = 0
    for call in calls:
        wh.verify(call["body"], call["headers"])
        checks += 1
        # The library refuses the same call with a changed body or another secret.
        try:
            wh.verify(call["body"] + " ", call["headers"])
        except WebhookVerificationError:
            checks += 1
        else:
            raise SystemExit("a changed body verified")
        try:
            Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY").verify(call["body"], call["headers"])
        except WebhookVerificationError:
            checks += 1
        else:
            raise SystemExit("another secret verified")
    return checks


def sign(secret, path_in, path_out):
    wh = Webhook(secret)
    now = datetime.now(tz=timezone.utc)
    out = []
    for item in json.load(open(path_in)):
        signature = wh.sign(item["id"], now, item["body"])
        out.append(
            {
                "webhook-id": item["id"],
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signature,
            }
        )
    json.dump(out, open(path_out, "w"))
    return len(out)


def main():
    mode = sys.argv[1]
    if mode == "verify":
        n = verify(sys.argv[2], sys.argv[3])
    elif mode == "sign":
        n = sign(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"OK {n} checks")


if __name__ == "__main__":
    main()
