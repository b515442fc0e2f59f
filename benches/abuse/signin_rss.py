#!/usr/bin/env python3
"""RSS of `edgetoken serve` under sign-in floods (THREATS #54, issue 16 items 1 and 5).

Starts the given edgetoken binary on a configured directory, then reports VmRSS:
at start, after 1,200 sign-ins with a 250 KB user id each, and after 400 wrong passwords
for distinct well-formed user ids (each a full argon2id check).

    python3 benches/abuse/signin_rss.py target/release/edgetoken
"""
import base64, os, re, socket, subprocess, sys, tempfile, threading, time, http.client

binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/edgetoken")
work = tempfile.mkdtemp()
subprocess.run([binary, "keygen"], cwd=work, check=True, capture_output=True)
password_hash = subprocess.run([binary, "hash-password"], cwd=work, input=b"pw-of-alice-123",
                               check=True, capture_output=True).stdout.decode().strip()
with open(os.path.join(work, "users.toml"), "w") as f:
    f.write(f'[users.alice]\npassword_hash = "{password_hash}"\n'
            '[users.alice.tenants.acme]\npermissions = ["read-all"]\n')
with open(os.path.join(work, "edgetoken.toml"), "w") as f:
    f.write('[server]\nlisten = "127.0.0.1:0"\n[issuer]\ndirectory = "users.toml"\n')
out = open(os.path.join(work, "out.log"), "w+")
server = subprocess.Popen([binary, "serve"], cwd=work, stdout=out, stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        out.seek(0)
        m = re.search(r"on http://([\d.]+):(\d+)", out.read())
        if m:
            break
        time.sleep(0.05)
    host, port = m.group(1), int(m.group(2))

    def rss():
        with open(f"/proc/{server.pid}/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)) // 1024

    def sign_in(user, password):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", "/v1/tenants/acme/tokens", headers={"Authorization": f"Basic {auth}"})
        status = conn.getresponse().status
        conn.close()
        return status

    def flood(make, count, workers=4):
        def run(w):
            for i in range(count // workers):
                sign_in(*make(w, i))
        threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
        [t.start() for t in threads]
        [t.join() for t in threads]

    print(f"cores: {os.cpu_count()}")
    print(f"RSS at start: {rss()} MiB")
    started = time.time()
    flood(lambda w, i: (f"{w}-{i}-" + os.urandom(125_000).hex(), "x"), 1200)
    print(f"RSS after 1,200 sign-ins with 250 KB user ids: {rss()} MiB ({time.time() - started:.1f} s)")
    started = time.time()
    flood(lambda w, i: (f"guess-{w}-{i}", "wrong"), 400)
    print(f"RSS after 400 wrong sign-ins (argon2id each): {rss()} MiB ({time.time() - started:.1f} s)")
finally:
    server.terminate()
    server.wait()
