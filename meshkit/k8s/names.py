"""The well-known names meshkit uses in a cluster: labels, annotations, ports, identities.

One place for the strings that the injector, the capture rules, the manifests and the
operator must agree on. Values follow Istio's where Istio has one (ports, uid 1337).
"""

from __future__ import annotations

# namespace label that turns injection on (like istio-injection=enabled)
INJECTION_LABEL = "meshkit-injection"
INJECTION_ENABLED = "enabled"
# pod label that overrides the namespace both ways ("true" / "false"), like sidecar.istio.io/inject
INJECT_OVERRIDE_LABEL = "sidecar.meshkit.dev/inject"
# pod annotation written by the injector; its presence makes injection idempotent
STATUS_ANNOTATION = "sidecar.meshkit.dev/status"

SIDECAR_CONTAINER = "meshkit-proxy"
INIT_CONTAINER = "meshkit-init"
TOKEN_VOLUME = "meshkit-token"
TOKEN_MOUNT_PATH = "/var/run/secrets/tokens"
# the mesh's root certificate, published in every namespace (Istio's istio-ca-root-cert) and mounted
# by the sidecar to verify the control plane's TLS certificate (Istio's /var/run/secrets/istio)
ROOT_CONFIGMAP = "meshkit-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
ROOT_CERT_VOLUME = "meshkit-ca-root"
ROOT_CERT_MOUNT_PATH = "/var/run/secrets/meshkit"
TOKEN_FILE = "meshkit-token"
TOKEN_AUDIENCE = "meshkit-ca"

PROXY_UID = 1337
PROXY_GID = 1337

# sidecar ports (as in meshkit/runtime/ports.py and docs/architecture.md), named the way Istio names them
PORT_ADMIN = 15000
PORT_OUTBOUND = 15001
PORT_INBOUND = 15006
PORT_HEALTH = 15021
PORT_METRICS = 15090
SIDECAR_PORTS: tuple[tuple[str, int], ...] = (
    ("tcp-outbound", PORT_OUTBOUND),
    ("tcp-inbound", PORT_INBOUND),
    ("http-admin", PORT_ADMIN),
    ("http-envoy-prom", PORT_METRICS),
    ("status-port", PORT_HEALTH),
)
READY_PATH = "/healthz/ready"

# control plane ports and in-cluster names
PORT_CONTROL = 15010  # plaintext API: the CLI (through a port-forward) and the operator
PORT_CONTROL_TLS = 15012  # the same API over TLS (istiod's xDS+CA port): what sidecars use
PORT_WEBHOOK = 15017
SYSTEM_NAMESPACE = "meshkit-system"
CONTROL_SERVICE = "meshkit-control"
WEBHOOK_SERVICE = "meshkit-webhook"
MUTATING_WEBHOOK_CONFIG = "meshkit-sidecar-injector"
VALIDATING_WEBHOOK_CONFIG = "meshkit-validator"
# where injected sidecars reach the control plane: TLS, verified against the mounted root
DEFAULT_CONTROL_ADDRESS = f"https://{CONTROL_SERVICE}.{SYSTEM_NAMESPACE}.svc:{PORT_CONTROL_TLS}"
DEFAULT_IMAGE = "meshkit:dev"

# where the image keeps the capture script the init container runs
INIT_SCRIPT_PATH = "/usr/local/bin/meshkit-init.sh"
