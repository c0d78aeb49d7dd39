"""Writes tests/store/capability_vectors.json from the implementation (run once, commit the
output; test_capability.py then pins the derivation to it). Usage:
    .venv/bin/python -m tests.store.make_capability_vectors
"""

from __future__ import annotations

import json
from pathlib import Path

from keywire.store.capability import WriteCap
from keywire.store.schedule import Role

OUT = Path(__file__).with_name("capability_vectors.json")
SECRETS = [bytes(32), bytes(range(32)), bytes(range(100, 164))]
CASES = [(0, b"\x00"), (1, b"hello"), (7, bytes(range(256))), ((1 << 64) - 1, b"last")]


def make() -> dict[str, object]:
    vectors = []
    for secret in SECRETS:
        for role in Role:
            cap = WriteCap.derive(secret, role)
            for index, payload in CASES:
                address, body = cap.signed_put(index, payload)
                vectors.append(
                    {
                        "secret": secret.hex(),
                        "role": role.value,
                        "root_scalar": cap.root_scalar.hex(),
                        "root_public": cap.read.root_public.hex(),
                        "index": index,
                        "blinding": cap.read.blinding(index).hex(),
                        "blinded_scalar": cap.blinded_scalar(index).hex(),
                        "address": address.hex(),
                        "payload": payload.hex(),
                        "body": body.hex(),
                    }
                )
    return {
        "about": "keywire store write capabilities, docs/store.md 'Write capabilities'",
        "vectors": vectors,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(make(), indent=1) + "\n")
    print(f"wrote {OUT}")
