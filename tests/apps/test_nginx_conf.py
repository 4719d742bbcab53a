"""The nginx.conf reader of the ``nginx`` stand-in: the tasks' files, nginx's syntax, and what it
refuses by name."""

from __future__ import annotations

import pytest

from meshkit.apps.nginx_conf import NginxConfError, check_tls, parse

# Istio's "Egress TLS Origination" (mutual TLS) nginx.conf, verbatim
MUTUAL = """events {
}

http {
  log_format main '$remote_addr - $remote_user [$time_local]  $status '
  '"$request" $body_bytes_sent "$http_referer" '
  '"$http_user_agent" "$http_x_forwarded_for"';
  access_log /var/log/nginx/access.log main;
  error_log  /var/log/nginx/error.log;

  server {
    listen 443 ssl;

    root /usr/share/nginx/html;
    index index.html;

    server_name my-nginx.mesh-external.svc.cluster.local;
    ssl_certificate /etc/nginx-server-certs/tls.crt;
    ssl_certificate_key /etc/nginx-server-certs/tls.key;
    ssl_client_certificate /etc/nginx-ca-certs/example.com.crt;
    ssl_verify_client on;
  }
}
"""


def test_the_tasks_mutual_tls_server() -> None:
    config = parse(MUTUAL)
    [server] = config.servers
    assert (server.port, server.ssl) == (443, True)
    assert server.names == ["my-nginx.mesh-external.svc.cluster.local"]
    assert (server.root, server.index) == ("/usr/share/nginx/html", ["index.html"])
    assert server.certificate == "/etc/nginx-server-certs/tls.crt"
    assert server.certificate_key == "/etc/nginx-server-certs/tls.key"
    assert server.client_certificate == "/etc/nginx-ca-certs/example.com.crt"
    assert server.verify_client == "on"
    check_tls(server, "/etc/nginx/nginx.conf")  # complete: no error
    # the logging directives are accepted and named as without effect, with their lines
    assert config.warnings == [
        '"log_format" in /etc/nginx/nginx.conf:5 has no effect on the local mesh',
        '"access_log" in /etc/nginx/nginx.conf:8 has no effect on the local mesh',
        '"error_log" in /etc/nginx/nginx.conf:9 has no effect on the local mesh']


def test_http_level_settings_apply_to_the_servers_and_a_name_picks_one() -> None:
    config = parse("events {}\nhttp {\n  ssl_certificate /c.crt;  # shared\n  ssl_certificate_key '/k.key';\n"
                   "  server { listen 127.0.0.1:8443 ssl; server_name a.example.com; }\n"
                   "  server { listen 8443 ssl default_server; server_name \"b.example.com\"; root /srv; }\n"
                   "  server { listen 80; return 301 https://example.com; }\n}\n")
    a, b, plain = config.servers
    assert (a.port, a.certificate, a.certificate_key) == (8443, "/c.crt", "/k.key")
    assert (b.default_server, b.root, b.names) == (True, "/srv", ["b.example.com"])
    assert plain.returns == (301, "https://example.com") and not plain.ssl
    assert config.server_for(8443, "A.example.com") is a
    assert config.server_for(8443, "other") is b and config.server_for(8443, None) is b
    assert config.server_for(9999, "a.example.com") is None


@pytest.mark.parametrize(("text", "message"), [
    ("events {}\nhttp {\n  server {\n    proxy_pass http://x;\n  }\n}\n",
     'unknown directive "proxy_pass" in /etc/nginx/nginx.conf:4'),
    ("events {}\nhttp {\n  listen 80;\n}\n",
     '"listen" directive is not allowed here in /etc/nginx/nginx.conf:3'),
    ("events {}\nhttp {\n  server {\n    listen 443 ssl\n  }\n}\n",
     'unexpected "}" in /etc/nginx/nginx.conf:5'),
    ("events {}\nhttp {\n  server {\n    listen 443;\n", 'unexpected end of file, expecting "}"'),
    ("http {\n}\n", 'no "events" section in configuration'),
    ("events {}\nhttp { server { listen abc; } }\n", 'invalid port in "abc" of the "listen" directive'),
    ("events {}\nhttp { server { listen 443 ssl; ssl_verify_client maybe; } }\n",
     'invalid value "maybe" in "ssl_verify_client" directive'),
    ("events {}\nhttp { server { listen 443 quic; } }\n",
     'invalid parameter "quic" in /etc/nginx/nginx.conf:2'),
    ("events {}\nhttp { server { root /a /b; } }\n", 'invalid number of arguments in "root" directive'),
    ("events {}\nhttp { server { server_name 'a; } }\n", "unexpected end of file, expecting '"),
])
def test_what_nginx_would_refuse_or_the_stand_in_cannot_do_is_named_with_its_line(text: str,
                                                                                  message: str) -> None:
    with pytest.raises(NginxConfError) as refused:
        parse(text)
    assert message in str(refused.value), refused.value


def test_nginx_start_up_checks_of_an_ssl_server() -> None:
    [no_cert] = parse("events {}\nhttp {\n  server {\n    listen 443 ssl;\n  }\n}\n").servers
    with pytest.raises(NginxConfError, match=r'no "ssl_certificate" is defined .* in /x:3'):
        check_tls(no_cert, "/x")
    [no_ca] = parse("events {}\nhttp { server { listen 443 ssl; ssl_certificate /c; ssl_certificate_key /k;"
                    " ssl_verify_client on; } }\n").servers
    with pytest.raises(NginxConfError, match="no ssl_client_certificate for ssl_verify_client"):
        check_tls(no_ca, "/x")


def test_comments_quotes_and_escapes() -> None:
    [server] = parse('events {} # the events\nhttp { server { listen 80; server_name "a\\"b" # x\n; '
                     "index 'in dex.html' i2.html; } }\n").servers
    assert server.names == ['a"b'] and server.index == ["in dex.html", "i2.html"]
