"""The tokens page in trusted-header mode behind a header-setting nginx (issue 9).

nginx plays the SSO proxy: it sets the user header and the shared proxy secret on every
request it forwards, as `deploy/` proxies do; the page has no sign-in form, and the person is
whoever the proxy says, exactly as for the API.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from conftest import PROXY_SECRET, free_port, start_server
from helpers import create_token

NGINX_CANDIDATES = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]


def nginx_binary() -> str:
    for candidate in NGINX_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    pytest.fail("nginx is not installed: apt-get install nginx (.ci/run does)", pytrace=False)


@pytest.fixture(scope="module")
def proxied():
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    server = start_server(
        issuer_toml=f'auth = "trusted-header"\nproxy_secret = "{PROXY_SECRET}"\n',
        extra_toml=f'[page]\npublic_origin = "{origin}"\n',
    )
    prefix = Path(tempfile.mkdtemp(prefix="edgetoken-nginx-"))
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {prefix}/access.log;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{server.port};
      # The SSO proxy's job: whatever the client sent, these are replaced.
      proxy_set_header X-Forwarded-User alice;
      proxy_set_header X-Edgetoken-Proxy-Secret "{PROXY_SECRET}";
    }}
  }}
}}
"""
    )
    nginx = subprocess.Popen(
        [nginx_binary(), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(origin + "/healthz", timeout=1)
            break
        except OSError:
            if nginx.poll() is not None or time.monotonic() > deadline:
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                pytest.fail(f"nginx did not start:\n{log}")
            time.sleep(0.05)
    yield origin, server
    nginx.terminate()
    nginx.wait(timeout=10)
    server.stop()
    shutil.rmtree(prefix, ignore_errors=True)
    shutil.rmtree(server.dir, ignore_errors=True)


def test_the_proxy_names_the_person_and_the_whole_flow_works(browser, proxied):
    origin, server = proxied
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    page = context.new_page()
    page.goto(origin + "/")
    expect(page.get_by_role("heading", name=re.compile("Personal tokens"))).to_be_visible()
    expect(page.get_by_text("Signed in as")).to_contain_text("alice")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    page.goto(origin + "/sign-in")
    expect(page.get_by_label("Password")).to_have_count(0)

    token = create_token(page, name="through the proxy", duration="4 hours", shortcut="Read all")
    page.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == token
    status, headers = server.verify(token, "acme", "runs:read")
    assert status == 200 and headers["x-auth-subject"] == "alice"
    page.get_by_role("link", name="Done, back to my tokens").click()
    assert token not in page.content()

    row = page.locator("tr", has=page.get_by_role("cell", name="through the proxy", exact=True))
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("Token revoked.")).to_be_visible()
    assert server.verify(token, "acme", "runs:read")[0] == 401

    page.get_by_role("navigation", name="Tenants").get_by_role("link", name="globex").click()
    expect(page.get_by_role("cell", name="through the proxy")).to_have_count(0)
    context.close()


def test_without_the_proxy_nobody_is_signed_in(browser, proxied):
    _, server = proxied
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(server.url("/tenants/acme/tokens"))
    assert response.status == 401
    expect(page.get_by_role("heading", name="Not signed in")).to_be_visible()
    context.close()
