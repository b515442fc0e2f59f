#!/usr/bin/env python3
"""Soak run (issue 13): a whole deployment under steady load, with revocations and faults.

Starts, in a run directory of its own:
  - redis-server with AOF (appendonly yes, appendfsync everysec: what docker-compose.yml runs,
    and the setting under which kill -9 can lose the last second of acknowledged writes, so
    the service's restore-after-reset path is exercised, not assumed away);
  - one issuer and two verifiers (`edgetoken serve --role ...`, one configuration file);
  - nginx running deploy/nginx/edge.conf (auth_request, both verifiers in its upstream) in
    front of deploy/nginx/upstream.conf (the echo upstream), only the addresses changed.

Drives, for SOAK_DURATION seconds:
  - SOAK_RATE edge requests per second (open loop: request i is due at i / rate) through
    nginx, a mix of valid, revoked, about-to-be-revoked, expired, foreign-key and tampered
    tokens;
  - SOAK_REVOKE_RATE revocations per second through the issuer API (POST /v1/revoke, and
    every SOAK_DELETE_EVERY-th one DELETE /v1/tenants/acme/tokens/{id} on a token minted
    through the API); right after each acknowledgement, one probe through nginx and one
    straight to each verifier;
  - faults on a schedule: CLIENT PAUSE, Redis kill -9 and restart (the AOF keeps the data),
    verifier restarts (SIGTERM and SIGKILL). Each is a declared outage window in the log,
    from the injection until every service is ready again, plus SOAK_GRACE seconds.

Every event goes to RUN_DIR/events.jsonl; then benches/soak/check.py judges the log on its
own (it does not trust this driver's idea of what should have happened) and this script
exits with its status.

Usage: python3 benches/soak/soak.py        (from the repository root, after
       cargo build --release --all-features --bin edgetoken --example soak_tokens)
Environment: SOAK_DURATION=600 SOAK_RATE=400 SOAK_REVOKE_RATE=50 SOAK_DELETE_EVERY=25
             SOAK_CACHE_ENTRIES=5000 (the verifiers' cache.max_entries)
             SOAK_FAULTS=default|none|<comma list of client_pause,redis_kill9,verifier_restart>
             SOAK_GRACE=2 SOAK_DIR=<run dir> SOAK_BIN=target/release
             PIN=1 (services on CPU 1, this driver on CPU 0) SOAK_KEEP=1 (keep the run dir)
"""

import base64
import http.client
import itertools
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))

DURATION = float(os.environ.get("SOAK_DURATION", "600"))
RATE = float(os.environ.get("SOAK_RATE", "400"))
REVOKE_RATE = float(os.environ.get("SOAK_REVOKE_RATE", "50"))
DELETE_EVERY = int(os.environ.get("SOAK_DELETE_EVERY", "25"))
FAULTS = os.environ.get("SOAK_FAULTS", "default")
GRACE = float(os.environ.get("SOAK_GRACE", "2"))
BIN = os.path.join(ROOT, os.environ.get("SOAK_BIN", "target/release"))
EDGE_WORKERS = int(os.environ.get("SOAK_EDGE_WORKERS", "24"))
REVOKE_WORKERS = int(os.environ.get("SOAK_REVOKE_WORKERS", "12"))
# The verifiers' verified-token cache (`cache.max_entries`). Every revocation target is a token
# the verifiers have not seen before, so at 50 new tokens a second the default 100,000 fills in
# about 33 minutes; 5,000 fills in under two, so that a 10-minute run shows memory after the
# cache is full, which is what the memory check judges (docs/soak.md, "Memory").
CACHE_ENTRIES = int(os.environ.get("SOAK_CACHE_ENTRIES", "5000"))
PIN = os.environ.get("PIN", "1" if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else "0")

# The revocation settings the checker's bound is derived from (written to the log).
HEARTBEAT_MS = 1000
MAX_STALENESS_SECS = 15
BARRIER_TIMEOUT_MS = 50
LEEWAY_SECS = 30

PASSWORD = "soak-correct-horse-battery"
FORBIDDEN_PORTS = {5432, 3306, 6379, 5672, 1883, 4222}

# The load mix, by weight.
# "direct": a valid token asked of one verifier straight, not through nginx, so a stall can be
# told apart from nginx's (those requests are kept out of the edge latency figures).
MIX = [("valid", 40), ("direct", 5), ("revoked", 25), ("upcoming", 10), ("expired", 7),
       ("foreign", 6), ("tampered", 7)]

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def die(message):
    print(f"soak: {message}", file=sys.stderr)
    sys.exit(2)


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port


# ---------------------------------------------------------------------------------------------
# The event log: one JSON object per line, written by one thread.

class Log:
    def __init__(self, path):
        self.file = open(path, "w", buffering=1 << 16)
        self.q = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def __call__(self, **event):
        self.q.put(event)

    def _run(self):
        while True:
            event = self.q.get()
            if event is None:
                break
            self.file.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.file.flush()

    def close(self):
        self.q.put(None)
        self.thread.join()
        self.file.close()


# ---------------------------------------------------------------------------------------------
# Processes.

class Proc:
    """A service process: its command, log file and current pid."""

    def __init__(self, name, argv, run_dir, env=None, pin=True):
        self.name, self.argv, self.env = name, argv, env
        self.pin = pin and PIN == "1"
        self.log_path = os.path.join(run_dir, f"{name}.log")
        self.popen = None

    def start(self):
        argv = (["taskset", "-c", "1"] if self.pin else []) + self.argv
        env = dict(os.environ, **(self.env or {}))
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env)
        log.close()
        return self.popen.pid

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def signal(self, sig):
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout=15):
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def alive(self):
        return self.popen is not None and self.popen.poll() is None


def http_status(port, path, timeout=1.0):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        status = c.getresponse().status
        c.close()
        return status
    except OSError:
        return None


def redis_cmd(port, *args, timeout=2.0):
    """One command over RESP; returns the first reply line (enough for PING and CONFIG)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            payload = f"*{len(args)}\r\n" + "".join(f"${len(str(a))}\r\n{a}\r\n" for a in args)
            s.sendall(payload.encode())
            return s.recv(4096).decode(errors="replace")
    except OSError:
        return None


def wait_until(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------
# Deployment.

class Deployment:
    def __init__(self, run_dir, log):
        self.dir, self.log = run_dir, log
        self.redis_port = free_port()
        self.issuer_port = free_port()
        self.verifier_ports = [free_port(), free_port()]
        self.edge_port = free_port()
        self.upstream_port = free_port()
        self.procs = {}

    def run(self, *argv, stdin=None):
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if r.returncode != 0:
            die(f"{' '.join(argv)} failed: {r.stderr.strip()}")
        return r.stdout

    def prepare(self):
        edgetoken = os.path.join(BIN, "edgetoken")
        keys = os.path.join(self.dir, "keys")
        self.run(edgetoken, "keygen", "--dir", keys)
        phc = self.run(edgetoken, "hash-password", stdin=PASSWORD).strip()
        users = os.path.join(self.dir, "users.toml")
        with open(users, "w") as f:
            f.write(f'[users.soak]\npassword_hash = "{phc}"\n'
                    '[users.soak.tenants.acme]\npermissions = ["runs:read"]\n')
        self.config = os.path.join(self.dir, "edgetoken.toml")
        with open(self.config, "w") as f:
            f.write(f"""[token]
issuer = "https://issuer.soak"
audience = "soak"
leeway_secs = {LEEWAY_SECS}
[keys]
dir = "{keys}"
[revocation]
redis_url = "redis://127.0.0.1:{self.redis_port}/"
key_prefix = "soak"
heartbeat_ms = {HEARTBEAT_MS}
max_staleness_secs = {MAX_STALENESS_SECS}
barrier_timeout_ms = {BARRIER_TIMEOUT_MS}
on_stale = "fail_closed"
[cache]
max_entries = {CACHE_ENTRIES}
[issuer]
directory = "{users}"
mints_per_hour = 1000000
[verifier]
unmatched = "deny"
[[verifier.routes]]
method = "GET"
path = "/api/{{tenant}}/runs/*"
permission = "runs:read"
""")
        redis_dir = os.path.join(self.dir, "redis")
        os.makedirs(redis_dir)
        self.procs["redis"] = Proc("redis", [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--dir", redis_dir, "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no"], self.dir)
        serve = [edgetoken, "serve", "--config", self.config, "--role"]
        self.procs["issuer"] = Proc("issuer", serve + ["issuer"], self.dir, env={
            "EDGETOKEN_SERVER__LISTEN": f"127.0.0.1:{self.issuer_port}", "RUST_LOG": "warn"})
        for i, port in enumerate(self.verifier_ports, 1):
            self.procs[f"verifier-{i}"] = Proc(f"verifier-{i}", serve + ["verifier"], self.dir,
                                               env={"EDGETOKEN_SERVER__LISTEN":
                                                    f"127.0.0.1:{port}", "RUST_LOG": "warn"})
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.procs["nginx"] = Proc("nginx", [
            nginx, "-p", self.dir, "-e", os.path.join(self.dir, "nginx-error.log"),
            "-c", self.nginx_conf()], self.dir)

    def nginx_conf(self):
        def replace_once(text, old, new):
            if old not in text:
                die(f"deploy/nginx config no longer contains {old!r}")
            return text.replace(old, new, 1)

        with open(os.path.join(ROOT, "deploy/nginx/edge.conf")) as f:
            edge = f.read()
        with open(os.path.join(ROOT, "deploy/nginx/upstream.conf")) as f:
            upstream = f.read()
        v1, v2 = self.verifier_ports
        edge = replace_once(edge, "server verifier-1:8080;\n    server verifier-2:8080;",
                            f"server 127.0.0.1:{v1};\n    server 127.0.0.1:{v2};")
        edge = replace_once(edge, "server upstream:8080;",
                            f"server 127.0.0.1:{self.upstream_port};")
        edge = replace_once(edge, "listen 80;", f"listen 127.0.0.1:{self.edge_port};")
        upstream = replace_once(upstream, "listen 8080;", f"listen 127.0.0.1:{self.upstream_port};")
        d = self.dir
        conf = (f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n"
                f"error_log {d}/nginx-error.log warn;\nworker_rlimit_nofile 4096;\n"
                f"events {{ worker_connections 2048; }}\n"
                # Server-side timing of every edge request, for the checker: the answer's wall
                # time and nginx's own request time (auth subrequest and upstream included).
                f"http {{\n  log_format soak '$msec $request_time $status $request_uri';\n"
                f"  access_log {d}/access.log soak buffer=64k flush=1s;\n"
                f"  client_body_temp_path {d}/body;\n"
                f"  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n"
                f"  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
                f"{edge}\n{upstream}\n}}\n")
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def start(self, name):
        pid = self.procs[name].start()
        self.log(ev="proc_start", t=now(), name=name, pid=pid)

    def redis_up(self):
        reply = redis_cmd(self.redis_port, "PING")
        return reply is not None and reply.startswith("+PONG")

    def ready(self, name):
        port = {"issuer": self.issuer_port, "verifier-1": self.verifier_ports[0],
                "verifier-2": self.verifier_ports[1]}[name]
        return http_status(port, "/readyz") == 200

    def all_ready(self):
        return (self.redis_up() and all(self.ready(n) for n in
                                        ("issuer", "verifier-1", "verifier-2"))
                and http_status(self.edge_port, "/") == 404)

    def start_all(self):
        self.start("redis")
        if not wait_until("redis", self.redis_up, 10):
            die("redis-server did not answer PING; see redis.log")
        for name in ("issuer", "verifier-1", "verifier-2"):
            self.start(name)
        for name in ("issuer", "verifier-1", "verifier-2"):
            if not wait_until(name, lambda: self.ready(name), 30):
                die(f"{name} never became ready; see {name}.log")
        self.start("nginx")
        if not wait_until("nginx", lambda: http_status(self.edge_port, "/") == 404, 10):
            die("nginx did not answer; see nginx-error.log")

    def stop_all(self):
        for name in ("nginx", "verifier-1", "verifier-2", "issuer", "redis"):
            p = self.procs.get(name)
            if p and p.alive():
                p.signal(signal.SIGTERM)
                p.wait()


# ---------------------------------------------------------------------------------------------
# Tokens.

def payload(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def tamper(token):
    """The same header and payload with one signature character changed (bad_signature)."""
    head, body, sig = token.split(".")
    i = len(sig) // 2
    c = "A" if sig[i] != "A" else "B"
    return f"{head}.{body}.{sig[:i]}{c}{sig[i + 1:]}"


class Tokens:
    def __init__(self, run_dir, deployment, targets, api_targets):
        path = os.path.join(run_dir, "tokens.tsv")
        r = subprocess.run([os.path.join(BIN, "examples", "soak_tokens"), deployment.config, path,
                            str(targets), "300", "100", "100"], capture_output=True, text=True)
        if r.returncode != 0:
            die(f"soak_tokens failed: {r.stderr.strip()} "
                "(cargo build --release --example soak_tokens)")
        pools = {}
        with open(path) as f:
            for line in f:
                kind, jti, token = line.rstrip("\n").split("\t")
                pools.setdefault(kind, []).append((jti, token))
        # Tampered tokens come from valid tokens that are never presented as they are.
        tampered = [(jti, tamper(tok)) for jti, tok in pools["valid"][200:]]
        self.valid = pools["valid"][:200]
        self.expired, self.foreign, self.tampered = pools["expired"], pools["foreign"], tampered
        self.targets = [(jti, tok, "rfc7009") for jti, tok in pools["target"]]
        with open(path, "a") as f:
            for jti, tok in tampered:
                f.write(f"tampered\t{jti}\t{tok}\n")
        # Every DELETE_EVERY-th revocation is a DELETE of a token minted through the API.
        if api_targets:
            minted = mint_via_api(deployment.issuer_port, api_targets)
            with open(path, "a") as f:
                for jti, tok in minted:
                    f.write(f"target\t{jti}\t{tok}\n")
            for k, (jti, tok) in enumerate(minted):
                self.targets[k * DELETE_EVERY] = (jti, tok, "delete")
        self.acked = []          # (jti, token) acknowledged, newest last
        self.next_target = 0     # index of the next target to revoke
        self.last_bound = 0.0    # latest t_ack + bound of a 202 answer
        self.lock = threading.Lock()


def basic_auth():
    return "Basic " + base64.b64encode(f"soak:{PASSWORD}".encode()).decode()


def mint_via_api(port, count):
    out, lock, it = [], threading.Lock(), iter(range(count))

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = json.dumps({"name": "soak", "duration": "1h", "permissions": ["runs:read"]})
        for _ in it:
            c.request("POST", "/v1/tenants/acme/tokens", body=body,
                      headers={"Authorization": basic_auth(), "Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            if r.status != 201:
                die(f"mint through the issuer API answered {r.status}: {data[:200]!r}")
            doc = json.loads(data)
            with lock:
                out.append((doc["id"], doc["token"]))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(out) != count:
        die("minting through the issuer API failed")
    return out


# ---------------------------------------------------------------------------------------------
# Clients.

class Client:
    """One keep-alive HTTP/1.1 connection; reconnects after any error."""

    def __init__(self, port, timeout=10.0):
        self.port, self.timeout, self.conn = port, timeout, None

    def request(self, method, path, body=None, headers=None):
        """(status, headers dict (lower-case), body bytes); status 0 on a transport error."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.will_close:
                    self.conn.close()
                    self.conn = None
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                self.conn = None
                # A keep-alive connection the server closed while idle: retry once, fresh.
                if attempt == 0 and isinstance(e, (http.client.RemoteDisconnected,
                                                   BrokenPipeError, ConnectionResetError)):
                    continue
                return 0, {}, repr(e).encode()
        return 0, {}, b""


class Schedule:
    """Open-loop slots: slot i is due at start + i / rate."""

    def __init__(self, rate, start, end):
        self.rate, self.start, self.end = rate, start, end
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            i = next(self.counter)
        due = self.start + i / self.rate
        if due >= self.end:
            return None, None
        delay = due - now()
        if delay > 0:
            time.sleep(delay)
        return i, due


def edge_request(client, jti, token, n):
    t0 = now()
    status, headers, body = client.request(
        "GET", f"/api/acme/runs/{n}", headers={"Authorization": f"Bearer {token}"})
    t1 = now()
    echoed = None
    if status == 200:
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("token_id="):
                echoed = line[len("token_id="):]
    return t0, t1, status, echoed, headers.get("www-authenticate", "")


def reason_of(challenge):
    marker = 'error_description="'
    if marker in challenge:
        return challenge.split(marker, 1)[1].split('"', 1)[0]
    return ""


def verifier_request(client, token, n):
    t0 = now()
    status, headers, _ = client.request(
        "GET", "/v1/verify", headers={"Authorization": f"Bearer {token}",
                                      "X-Original-Method": "GET",
                                      "X-Original-URI": f"/api/acme/runs/{n}"})
    return t0, now(), status, headers.get("x-auth-token-id"), headers.get("www-authenticate", "")


def edge_worker(dep, tokens, schedule, log):
    client = Client(dep.edge_port)
    direct = [Client(p) for p in dep.verifier_ports]
    rng = random.Random()
    kinds = [k for k, w in MIX for _ in range(w)]
    while True:
        i, due = schedule.next()
        if i is None:
            return
        kind = rng.choice(kinds)
        with tokens.lock:
            if kind == "revoked":
                recent = tokens.acked[-500:]
                if not recent:
                    kind = "valid"
                else:
                    jti, token = rng.choice(recent)
            elif kind == "upcoming":
                ahead = tokens.targets[tokens.next_target:tokens.next_target + 200]
                if not ahead:
                    kind = "valid"
                else:
                    jti, token, _ = rng.choice(ahead)
        if kind == "direct":
            jti, token = rng.choice(tokens.valid)
            k = rng.randrange(len(direct))
            t0, t1, status, echoed, challenge = verifier_request(direct[k], token, i)
            log(ev="req", via=f"verifier-{k + 1}", src="load", kind="valid", tok=jti,
                t0=round(t0, 6), t1=round(t1, 6), due=round(due, 6), status=status,
                echoed=echoed, reason=reason_of(challenge))
            continue
        if kind in ("valid", "expired", "foreign", "tampered"):
            jti, token = rng.choice(getattr(tokens, kind))
        t0, t1, status, echoed, challenge = edge_request(client, jti, token, i)
        log(ev="req", via="edge", src="load", kind=kind, tok=jti, t0=round(t0, 6),
            t1=round(t1, 6), due=round(due, 6), status=status, echoed=echoed,
            reason=reason_of(challenge))


def revoke_worker(dep, tokens, schedule, log):
    issuer = Client(dep.issuer_port)
    edge = Client(dep.edge_port)
    verifiers = [Client(p) for p in dep.verifier_ports]
    retry = []   # (due, attempt, target) of revocations that were not acknowledged
    while True:
        i, due = schedule.next()
        if i is None:
            return
        if retry and retry[0][0] <= now():
            _, attempt, target = retry.pop(0)
        else:
            with tokens.lock:
                if tokens.next_target >= len(tokens.targets):
                    continue
                target = tokens.targets[tokens.next_target]
                tokens.next_target += 1
            attempt = 1
        jti, token, method = target
        t0 = now()
        if method == "delete":
            status, headers, body = issuer.request(
                "DELETE", f"/v1/tenants/acme/tokens/{jti}", headers={"Authorization": basic_auth()})
        else:
            status, headers, body = issuer.request(
                "POST", "/v1/revoke", body=f"token={token}",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
        t1 = now()
        barrier = headers.get("edgetoken-barrier")
        bound_ms = None
        if status == 202:
            try:
                bound_ms = json.loads(body).get("max_staleness_ms")
            except ValueError:
                pass
        log(ev="revoke", tok=jti, method=method, attempt=attempt, t0=round(t0, 6),
            t1=round(t1, 6), status=status, barrier=barrier, bound_ms=bound_ms,
            error=None if status in (200, 202, 204) else body[:200].decode(errors="replace"))
        acked = status in (200, 204, 202) and barrier is not None
        if not acked:
            if attempt < 10 and status != 200:
                retry.append((now() + 1.0, attempt + 1, target))
            continue
        with tokens.lock:
            tokens.acked.append((jti, token))
            if status == 202:
                tokens.last_bound = max(tokens.last_bound, t1 + (bound_ms or 0) / 1000)
        # Probes right after the acknowledgement: through the edge, then each verifier.
        t0, t1, st, echoed, ch = edge_request(edge, jti, token, i)
        log(ev="req", via="edge", src="probe", kind="revoked", tok=jti, t0=round(t0, 6),
            t1=round(t1, 6), due=None, status=st, echoed=echoed, reason=reason_of(ch))
        for k, v in enumerate(verifiers, 1):
            t0, t1, st, echoed, ch = verifier_request(v, token, i)
            log(ev="req", via=f"verifier-{k}", src="probe", kind="revoked", tok=jti,
                t0=round(t0, 6), t1=round(t1, 6), due=None, status=st, echoed=echoed,
                reason=reason_of(ch))


# ---------------------------------------------------------------------------------------------
# Faults.

def fault_schedule(duration):
    if FAULTS == "none":
        return []
    pause_ms = int(min(4.0, duration / 15) * 1000)
    redis_down = min(5.0, duration / 20)
    kinds = [("client_pause", pause_ms), ("redis_kill9", redis_down),
             ("verifier_restart", ("verifier-1", signal.SIGTERM)),
             ("client_pause", pause_ms), ("redis_kill9", redis_down),
             ("verifier_restart", ("verifier-2", signal.SIGKILL))]
    if FAULTS != "default":
        wanted = FAULTS.split(",")
        kinds = [next(k for k in kinds if k[0] == w) for w in wanted]
    return [(duration * (k + 1) / (len(kinds) + 1), kind, arg)
            for k, (kind, arg) in enumerate(kinds)]


def inject(dep, log, start, stop_event, duration):
    for offset, kind, arg in fault_schedule(duration):
        at = start + offset
        while now() < at:
            if stop_event.wait(min(0.5, at - now())):
                return
        t_start = now()
        detail = {}
        if kind == "client_pause":
            reply = redis_cmd(dep.redis_port, "CLIENT", "PAUSE", str(arg), "ALL")
            detail = {"pause_ms": arg, "reply": (reply or "").strip()}
            time.sleep(arg / 1000)
        elif kind == "redis_kill9":
            redis = dep.procs["redis"]
            old = redis.pid
            redis.signal(signal.SIGKILL)
            redis.wait()
            time.sleep(arg)
            dep.start("redis")
            detail = {"down_s": arg, "old_pid": old, "new_pid": redis.pid}
        elif kind == "verifier_restart":
            name, sig = arg
            v = dep.procs[name]
            old = v.pid
            v.signal(sig)
            v.wait()
            dep.start(name)
            detail = {"verifier": name, "signal": sig.name, "old_pid": old, "new_pid": v.pid}
        t_injected = now()
        recovered = wait_until("recovery", dep.all_ready, 60)
        t_recovered = now()
        log(ev="fault", kind=kind, start=round(t_start, 6), injected=round(t_injected, 6),
            recovered=round(t_recovered, 6) if recovered else None,
            end=round(t_recovered + GRACE, 6), grace_s=GRACE, **detail)
        print(f"soak: t={t_start - start:6.1f}s {kind} {detail} recovered after "
              f"{t_recovered - t_start:.1f}s" + ("" if recovered else " (NOT RECOVERED)"),
              file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Process sampling.

def sample(dep, log, stop_event, every=5.0):
    while not stop_event.wait(every):
        for name, p in list(dep.procs.items()) + [("driver", None)]:
            pid = os.getpid() if p is None else p.pid
            if p is not None and not p.alive():
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, StopIteration):
                continue
            log(ev="sample", t=round(now(), 3), name=name, pid=pid, rss_kb=rss, fds=fds)


# ---------------------------------------------------------------------------------------------

def final_sweep(dep, tokens, log):
    """After the load: every acknowledged revocation, asked of each verifier directly."""
    with tokens.lock:
        acked = list(tokens.acked)
    it = iter(enumerate(acked))
    lock = threading.Lock()

    def worker():
        clients = [Client(p) for p in dep.verifier_ports]
        while True:
            with lock:
                item = next(it, None)
            if item is None:
                return
            n, (jti, token) = item
            for k, c in enumerate(clients, 1):
                t0, t1, st, echoed, ch = verifier_request(c, token, n)
                log(ev="req", via=f"verifier-{k}", src="sweep", kind="revoked", tok=jti,
                    t0=round(t0, 6), t1=round(t1, 6), due=None, status=st, echoed=echoed,
                    reason=reason_of(ch))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(acked)


def main():
    for tool in ("redis-server", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            die(f"{tool} is not installed (apt-get install -y {tool})")
    for binary in ("edgetoken", "examples/soak_tokens"):
        if not os.access(os.path.join(BIN, binary), os.X_OK):
            die(f"{BIN}/{binary} is missing: cargo build --release --all-features "
                "--bin edgetoken --example soak_tokens")
    if PIN == "1":
        os.sched_setaffinity(0, {0})
    run_dir = os.environ.get("SOAK_DIR") or tempfile.mkdtemp(prefix="edgetoken-soak-")
    os.makedirs(run_dir, exist_ok=True)
    print(f"soak: run dir {run_dir}", file=sys.stderr)
    log = Log(os.path.join(run_dir, "events.jsonl"))
    dep = Deployment(run_dir, log)
    stop_event = threading.Event()
    status = 1
    try:
        dep.prepare()
        dep.start_all()
        n_revokes = int(DURATION * REVOKE_RATE * 1.1) + 100
        api_targets = (n_revokes // DELETE_EVERY) if DELETE_EVERY > 0 else 0
        t_mint = now()
        tokens = Tokens(run_dir, dep, n_revokes, api_targets)
        print(f"soak: {len(tokens.targets)} revocation targets "
              f"({api_targets} minted through the API) in {now() - t_mint:.1f}s", file=sys.stderr)
        log(ev="config", wall_start=time.time() - now(), duration_s=DURATION, rate=RATE,
            revoke_rate=REVOKE_RATE, delete_every=DELETE_EVERY, heartbeat_ms=HEARTBEAT_MS,
            max_staleness_ms=MAX_STALENESS_SECS * 1000, barrier_timeout_ms=BARRIER_TIMEOUT_MS,
            leeway_s=LEEWAY_SECS, on_stale="fail_closed", redis_appendfsync="everysec",
            pinned=PIN == "1", edge_workers=EDGE_WORKERS, revoke_workers=REVOKE_WORKERS,
            faults=FAULTS, grace_s=GRACE, cache_max_entries=CACHE_ENTRIES)
        # Warm-up: every valid token once through the edge (not judged differently; logged).
        warm = Client(dep.edge_port)
        for n, (jti, tok) in enumerate(tokens.valid):
            t0, t1, st, echoed, ch = edge_request(warm, jti, tok, n)
            log(ev="req", via="edge", src="warmup", kind="valid", tok=jti, t0=round(t0, 6),
                t1=round(t1, 6), due=None, status=st, echoed=echoed, reason=reason_of(ch))
        start = now() + 0.5
        end = start + DURATION
        log(ev="load", start=round(start, 6), end=round(end, 6))
        threads = [threading.Thread(target=sample, args=(dep, log, stop_event), daemon=True),
                   threading.Thread(target=inject, args=(dep, log, start, stop_event, DURATION),
                                    daemon=True)]
        edge_schedule = Schedule(RATE, start, end)
        revoke_schedule = Schedule(REVOKE_RATE, start, end)
        workers = ([threading.Thread(target=edge_worker, args=(dep, tokens, edge_schedule, log))
                    for _ in range(EDGE_WORKERS)]
                   + [threading.Thread(target=revoke_worker,
                                       args=(dep, tokens, revoke_schedule, log))
                      for _ in range(REVOKE_WORKERS)])
        for t in threads + workers:
            t.start()
        last = start
        while any(w.is_alive() for w in workers):
            time.sleep(1)
            if now() - last >= 60:
                last = now()
                print(f"soak: {now() - start:5.0f}s / {DURATION:.0f}s", file=sys.stderr)
        for w in workers:
            w.join()
        stop_event.set()
        threads[1].join()  # a fault still recovering finishes before the sweep
        if not wait_until("final recovery", dep.all_ready, 60):
            print("soak: the deployment is not ready after the run", file=sys.stderr)
        # The sweep starts past the bound of every 202 answer.
        time.sleep(max(0.0, tokens.last_bound - now()) + 0.2)
        t_sweep = now()
        swept = final_sweep(dep, tokens, log)
        log(ev="sweep", start=round(t_sweep, 6), end=round(now(), 6), tokens=swept)
        print(f"soak: final sweep of {swept} revoked tokens x 2 verifiers in "
              f"{now() - t_sweep:.1f}s", file=sys.stderr)
    finally:
        stop_event.set()
        dep.stop_all()
        log.close()
    status = subprocess.run([sys.executable, os.path.join(HERE, "check.py"),
                             os.path.join(run_dir, "events.jsonl"),
                             "--tokens", os.path.join(run_dir, "tokens.tsv")]).returncode
    if os.environ.get("SOAK_KEEP") != "1" and status == 0 and not os.environ.get("SOAK_DIR"):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"soak: run dir kept: {run_dir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
