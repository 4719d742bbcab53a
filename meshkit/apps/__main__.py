"""``python -m meshkit.apps <app> --port N``: run one demo app (see ``meshkit.apps.launcher``).

The demo apps speak plain HTTP only (mutual TLS is their sidecar's job), so this process does
without OpenSSL: marking ``ssl`` and ``_hashlib`` absent before asyncio and aiohttp are
imported keeps libssl/libcrypto and their initialisation out of every app process (about 7 MiB
of RSS each, for issue 4's whole-mesh budget). asyncio and aiohttp then treat TLS as
unavailable, as on a Python built without it (an ``https://`` URL given to the
``sleep``/``legacy`` clients fails with an error), and ``hashlib`` uses its built-in hashes.
The exceptions are ``external``: the stand-ins for Istio's external hosts also serve HTTPS
(``--tls-port``), so that process keeps ``ssl``, and so does ``nginx`` (the ``nginx`` image,
whose nginx.conf may serve TLS; its own module's command line, `meshkit.apps.nginx`, without
aiohttp). ``tcp-echo`` (plain TCP, no HTTP) runs without aiohttp: its own module's command line
(`meshkit.apps.tcp_echo`), the same options and ready line.
"""

from __future__ import annotations

import sys

if sys.argv[1:2] not in (["external"], ["nginx"]):
    for _module in ("ssl", "_hashlib"):  # before anything imports asyncio
        sys.modules.setdefault(_module, None)  # type: ignore[arg-type]

if __name__ == "__main__":
    if sys.argv[1:2] == ["tcp-echo"]:
        from meshkit.apps import tcp_echo

        sys.exit(tcp_echo.main(sys.argv[2:]))
    if sys.argv[1:2] == ["nginx"]:
        from meshkit.apps import nginx

        sys.exit(nginx.main(sys.argv[2:]))
    from meshkit.apps.launcher import main

    sys.exit(main())
