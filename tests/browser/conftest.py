"""End-to-end tests of the tokens page (issue 9) in headless Chromium, against the real binary.

The system's Chromium (Debian's `chromium`) is driven by Playwright for Python; Playwright's own
browser download is never used. Each test module starts `target/debug/edgetoken serve` with a
config, key directory and user directory it writes to a temp dir, on a free port. A missing
browser, Playwright or binary fails with a message naming the fix: nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "debug" / "edgetoken"
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_CANDIDATES = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ALICE_PASSWORD = "alice-correct-horse-battery"
BOB_PASSWORD = "bob-staple-of-the-battery"
PROXY_SECRET = "a-proxy-secret-of-at-least-32-characters!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    pytest.fail(
        "Chromium is not installed (looked for /usr/lib/chromium/chromium and "
        "/usr/bin/chromium): apt-get install -y chromium (.ci/run does)",
        pytrace=False,
    )


def edgetoken(*args: str, stdin: str | None = None) -> str:
    if not BINARY.exists():
        pytest.fail(
            f"{BINARY} is missing: run `cargo build --bin edgetoken` first (.ci/run does)",
            pytrace=False,
        )
    done = subprocess.run(
        [str(BINARY), *args], input=stdin, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


_HASHES: dict[str, str] = {}


def password_hash(password: str) -> str:
    if password not in _HASHES:
        _HASHES[password] = edgetoken("hash-password", stdin=password + "\n")
    return _HASHES[password]


def directory_toml() -> str:
    """alice: every permission in acme, read-all in globex; bob: runs:read in acme."""
    return f"""
[users.alice]
password_hash = "{password_hash(ALICE_PASSWORD)}"
[users.alice.tenants.acme]
permissions = ["read-write-all"]
[users.alice.tenants.globex]
permissions = ["read-all"]

[users.bob]
password_hash = "{password_hash(BOB_PASSWORD)}"
[users.bob.tenants.acme]
permissions = ["runs:read"]
"""


@dataclass
class Server:
    """A running `edgetoken serve` (role all) on a free loopback port."""

    port: int
    dir: Path
    process: subprocess.Popen
    extra: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def verify(self, token: str, tenant: str, permission: str | None = None):
        """GET /v1/verify; returns (status, headers)."""
        query = f"tenant={tenant}" + (f"&permission={permission}" if permission else "")
        request = urllib.request.Request(
            self.url(f"/v1/verify?{query}"), headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    def output(self) -> str:
        return (self.dir / "stdout.txt").read_text() + (self.dir / "stderr.txt").read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(extra_toml: str = "", issuer_toml: str = "") -> Server:
    directory = Path(tempfile.mkdtemp(prefix="edgetoken-page-"))
    keys = directory / "keys"
    edgetoken("keygen", "--dir", str(keys), "--activate")
    users = directory / "users.toml"
    users.write_text(directory_toml())
    port = free_port()
    config = directory / "edgetoken.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[keys]\ndir = "{keys}"\n'
        f'[issuer]\ndirectory = "{users}"\n{issuer_toml}\n'
        f"{extra_toml}\n"
    )
    stdout = open(directory / "stdout.txt", "w")
    stderr = open(directory / "stderr.txt", "w")
    env = dict(os.environ, RUST_LOG="info")
    process = subprocess.Popen(
        [str(BINARY), "--config", str(config), "serve"],
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=directory,
    )
    server = Server(port=port, dir=directory, process=process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"edgetoken exited with {process.returncode}:\n{server.output()}")
        try:
            with urllib.request.urlopen(server.url("/readyz"), timeout=1) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    server.stop()
    pytest.fail(f"edgetoken did not become ready:\n{server.output()}")


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: pip install playwright==1.64.1 (.ci/run does); "
            "never `playwright install`: the tests use the system Chromium",
            pytrace=False,
        )
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server():
    server = start_server()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def context(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
    yield context
    context.close()


@pytest.fixture
def page(context):
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    page.close()
