"""The short-lived key/CSR helper process: ``python -m meshkit.proxy.tls.csr_helper IDENTITY``.

The sidecar runs for hours and must stay small, so it never imports ``cryptography``
(~10 MiB of RSS per process). Each time it needs a new key it starts this helper, which
imports ``cryptography``, makes a fresh EC P-256 key and a CSR whose only URI SAN is
``IDENTITY`` (``x509``), prints them as one JSON line ``{"key": PEM, "csr": PEM}`` on
stdout and exits 0. A bad command line exits 2 with a usage line on stderr; anything
unexpected leaves a traceback on stderr and a non-zero status. ``csr_client`` is the
sidecar's side; the CA's answer is checked in the sidecar with ``ssl`` (``verify``).

It must not do: talk to the CA, write the key anywhere but stdout, or keep running. It is the
only module of ``meshkit.proxy`` that may import ``x509`` (import-linter).
"""

from __future__ import annotations

import json
import sys

from meshkit.proxy.tls.x509 import build_csr, generate_key, key_pem

USAGE = "usage: python -m meshkit.proxy.tls.csr_helper spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].startswith("spiffe://"):
        print(USAGE, file=sys.stderr)
        return 2
    private = generate_key()
    sys.stdout.write(json.dumps({"key": key_pem(private), "csr": build_csr(private, args[0])}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
