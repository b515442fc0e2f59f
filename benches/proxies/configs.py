#!/usr/bin/env python3
"""Writes the configurations benches/proxies/run.sh measures, into a work directory.

The edgetoken integrations are the shipped files under deploy/ with only the addresses
changed (as the integration tests run them); each "no auth" configuration is the same file
with the check taken out, so a pair differs by the check alone. Envoy's own JWT check
(jwt_authn + RBAC) is benches/proxies/envoy-jwt.yaml. Every replacement must match exactly
once: a deploy/ file that drifts makes this fail instead of measuring something else.

Usage: configs.py WORK_DIR PORTS_JSON JWKS_FILE   (PORTS_JSON: {"upstream": 18610, ...}, see run.sh;
JWKS_FILE: the issuer's JWKS document, inlined into the Envoy jwt_authn configuration)
"""

import json
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def deploy(path):
    with open(os.path.join(ROOT, "deploy", path), encoding="utf-8") as f:
        return f.read()


def once(text, old, new, what):
    count = text.count(old)
    if count != 1:
        sys.exit(f"configs.py: {what}: expected {old!r} once, found it {count} times")
    return text.replace(old, new)


def edited(path, what, *replacements):
    """The deploy/ file at `path` with each (old, new) replaced, each old text exactly once."""
    text = deploy(path)
    for old, new in replacements:
        text = once(text, old, new, what)
    return text


def write(work, name, text):
    with open(os.path.join(work, name), "w", encoding="utf-8") as f:
        f.write(text)


def nginx_main(work, name, servers):
    """A whole nginx.conf: one process, one worker (master_process off), as the tests run."""
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    return (
        f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n"
        f"error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n"
        f"  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n"
        f"  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{servers}\n}}\n"
    )


def nginx(work, p):
    upstream = once(
        deploy("nginx/upstream.conf"), "listen 8080;", f"listen 127.0.0.1:{p['upstream']};", "upstream"
    )
    write(work, "upstream.conf", nginx_main(work, "upstream", upstream))

    def with_verifier(port):
        """The edge asking the verifier at `port`: a port number, or a Unix socket's path."""
        address = port if isinstance(port, str) else f"127.0.0.1:{port}"
        return edited(
            "nginx/edge.conf",
            "nginx addresses",
            ("server verifier-1:8080;\n    server verifier-2:8080;", f"server {address};"),
            ("server upstream:8080;", f"server 127.0.0.1:{p['upstream']};"),
        )

    edge = with_verifier(p["verifier"])
    auth = once(edge, "listen 80;", f"listen 127.0.0.1:{p['nginx_auth']};", "nginx listen")
    write(work, "nginx-auth.conf", nginx_main(work, "nginx-auth", auth))
    plain = once(edge, "listen 80;", f"listen 127.0.0.1:{p['nginx']};", "nginx listen")
    plain = once(plain, "auth_request /_edgetoken_verify;", "auth_request off;", "nginx auth")
    write(work, "nginx.conf", nginx_main(work, "nginx", plain))
    # The same edge asking the verifier and the nginx null check over a Unix socket, for a
    # verifier on the proxy's host (server.listen = "unix:PATH").
    unix_verifier = f"unix:{work}/verifier.sock"
    unix_null = f"unix:{work}/null-check.sock"
    auth_unix = with_verifier(unix_verifier)
    auth_unix = once(auth_unix, "listen 80;", f"listen 127.0.0.1:{p['nginx_auth_unix']};", "nginx listen")
    write(work, "nginx-auth-unix.conf", nginx_main(work, "nginx-auth-unix", auth_unix))
    # The floor: the same edge asking a check that decides nothing (every request passes), in
    # place of the verifier: an nginx `return 200` with a passing answer's headers, and bare
    # axum (examples/bare_axum, `/v1/verify`); the nginx one also over a Unix socket.
    null_check = NULL_CHECK.format(port=p["null_check"])
    null_check = once(null_check, "listen 127.0.0.1", f"listen {unix_null};\n    listen 127.0.0.1", "null listen")
    write(work, "null-check.conf", nginx_main(work, "null-check", null_check))
    floors = (("nginx-null", p["null_check"]), ("nginx-bare", p["bare_check"]), ("nginx-null-unix", unix_null))
    for name, verifier in floors:
        floor = with_verifier(verifier)
        floor = once(floor, "listen 80;", f"listen 127.0.0.1:{p[name.replace('-', '_')]};", "nginx listen")
        write(work, f"{name}.conf", nginx_main(work, name, floor))


# A check that decides nothing: 200 to every request, with the five X-Auth-* headers of a
# passing answer (benchmarks only: it lets everything through).
NULL_CHECK = """server {{
    listen 127.0.0.1:{port};
    location / {{
        add_header X-Auth-Subject bench;
        add_header X-Auth-Tenant acme;
        add_header X-Auth-Scope runs:read;
        add_header X-Auth-Token-Id 01JZ8Q0W6Y3V7C9B2N4M5K6J7H;
        add_header X-Auth-Expires 2026-12-02T09:00:00Z;
        return 200;
    }}
}}"""


ENVOY_API_ROUTE = "                          route: { cluster: edgetoken_app }\n"
ENVOY_NO_AUTHZ = (
    ENVOY_API_ROUTE
    + "                          typed_per_filter_config:\n"
    + "                            envoy.filters.http.ext_authz:\n"
    + '                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute\n'
    + "                              disabled: true\n"
)


def envoy_addresses(text, what, listen, verifier, upstream):
    text = once(
        text,
        "{ address: 0.0.0.0, port_value: 8000 }",
        f"{{ address: 127.0.0.1, port_value: {listen} }}",
        what,
    )
    if verifier is not None:
        for name in ("verifier-1", "verifier-2"):
            text = once(
                text,
                f"{{ address: {name}, port_value: 8080 }}",
                f"{{ address: 127.0.0.1, port_value: {verifier} }}",
                what,
            )
    return once(
        text,
        "{ address: upstream, port_value: 8080 }",
        f"{{ address: 127.0.0.1, port_value: {upstream} }}",
        what,
    )


def envoy(work, p, jwks):
    edge = deploy("envoy/edge.yaml")
    write(
        work,
        "envoy-http.yaml",
        envoy_addresses(edge, "envoy http", p["envoy_http"], p["verifier"], p["upstream"]),
    )
    write(
        work,
        "envoy-http-bare.yaml",
        envoy_addresses(edge, "envoy http floor", p["envoy_http_bare"], p["bare_check"], p["upstream"]),
    )
    plain = once(edge, ENVOY_API_ROUTE, ENVOY_NO_AUTHZ, "envoy plain")
    write(
        work,
        "envoy.yaml",
        envoy_addresses(plain, "envoy plain", p["envoy"], p["verifier"], p["upstream"]),
    )
    with open(os.path.join(ROOT, "benches", "proxies", "envoy-jwt.yaml"), encoding="utf-8") as f:
        jwt = f.read()
    jwt = once(jwt, "@JWKS@", json.dumps(jwks), "envoy jwt")
    jwt = envoy_addresses(jwt, "envoy jwt", p["envoy_jwt"], None, p["upstream"])
    write(work, "envoy-jwt.yaml", jwt)
    grpc = os.path.join(ROOT, "deploy", "envoy", "edge-grpc.yaml")
    if os.path.exists(grpc):
        # The gRPC edge: its verifier endpoints (port 9191, verifier.grpc_listen) point at the
        # bench verifier's gRPC listener.
        # Its floor: the same file asking examples/null_check_grpc.
        for name, verifier, listen in (
            ("envoy-grpc", "verifier_grpc", "envoy_grpc"),
            ("envoy-grpc-null", "null_grpc", "envoy_grpc_null"),
        ):
            text = deploy("envoy/edge-grpc.yaml")
            for host in ("verifier-1", "verifier-2"):
                text = once(
                    text,
                    f"{{ address: {host}, port_value: 9191 }}",
                    f"{{ address: 127.0.0.1, port_value: {p[verifier]} }}",
                    f"{name} verifiers",
                )
            text = envoy_addresses(text, name, p[listen], None, p["upstream"])
            write(work, f"{name}.yaml", text)


def traefik(work, p):
    def with_verifier(port):
        return edited(
            "traefik/dynamic.yml",
            "traefik addresses",
            ('address: "http://verifier-1:8080/v1/verify"', f'address: "http://127.0.0.1:{port}/v1/verify"'),
            ('url: "http://upstream:8080"', f'url: "http://127.0.0.1:{p["upstream"]}"'),
        )

    dynamic = with_verifier(p["verifier"])
    plain = once(
        dynamic,
        "middlewares: [edgetoken, edgetoken-drop-token]",
        "middlewares: [edgetoken-drop-token]",
        "traefik plain",
    )
    static = deploy("traefik/traefik.yml")
    for name, text, port in (
        ("traefik-auth", dynamic, p["traefik_auth"]),
        ("traefik", plain, p["traefik"]),
        ("traefik-bare", with_verifier(p["bare_check"]), p["traefik_bare"]),
    ):
        path = os.path.join(work, f"{name}-dynamic.yml")
        write(work, f"{name}-dynamic.yml", text)
        config = once(static, 'address: ":8000"', f'address: "127.0.0.1:{port}"', "traefik listen")
        config = once(config, "filename: /etc/traefik/dynamic.yml", f"filename: {path}", "traefik file")
        write(work, f"{name}.yml", config)


def caddy(work, p):
    def with_verifier(port):
        return edited(
            "caddy/Caddyfile",
            "caddy addresses",
            ("forward_auth verifier-1:8080 verifier-2:8080 {", f"forward_auth 127.0.0.1:{port} {{"),
            ("reverse_proxy upstream:8080 {", f"reverse_proxy 127.0.0.1:{p['upstream']} {{"),
        )

    text = with_verifier(p["verifier"])
    # The same site without the forward_auth block.
    plain, count = re.subn(r"\n\t\tforward_auth .*?\n\t\t}\n", "\n", text, flags=re.S)
    if count != 1:
        sys.exit("configs.py: caddy plain: forward_auth block not found once")
    for name, site, port, admin in (
        ("caddy-auth", text, p["caddy_auth"], p["caddy_auth_admin"]),
        ("caddy", plain, p["caddy"], p["caddy_admin"]),
        ("caddy-bare", with_verifier(p["bare_check"]), p["caddy_bare"], p["caddy_bare_admin"]),
    ):
        site = once(site, "admin localhost:2019", f"admin 127.0.0.1:{admin}", "caddy admin")
        site = once(site, "http://:8000 {", f"http://127.0.0.1:{port} {{", "caddy listen")
        write(work, f"{name}.Caddyfile", site)


def main():
    work, ports, jwks_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    with open(jwks_file, encoding="utf-8") as f:
        jwks = f.read().strip()
    nginx(work, ports)
    envoy(work, ports, jwks)
    traefik(work, ports)
    caddy(work, ports)


if __name__ == "__main__":
    main()
