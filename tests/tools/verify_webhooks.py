"""Verify recorded webhook requests with the Standard Webhooks reference library
(the `standardwebhooks` package from PyPI), independently of Platen's own code.

Usage: verify_webhooks.py FILE
FILE is JSON: [{"secret": "whsec_…", "id": …, "timestamp": …, "signature": …,
"body": …}, …]. Each request must verify under its secret; the timestamp check is
the library's own (five minutes), so verify soon after the requests were made.
Prints the number verified; exits 1 naming the first that does not verify.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        requests = json.load(f)
    for i, r in enumerate(requests):
        headers = {
            "webhook-id": r["id"],
            "webhook-timestamp": str(r["timestamp"]),
            "webhook-signature": r["signature"],
        }
        try:
            Webhook(r["secret"]).verify(r["body"], headers)
        except Exception as e:  # the library raises its own WebhookVerificationError
            print(f"request {i} ({r['id']}) does not verify: {e}", file=sys.stderr)
            return 1
    print(len(requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
