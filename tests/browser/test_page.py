"""The tokens page in directory mode, end to end in headless Chromium (issue 9)."""

from __future__ import annotations

import http.server
import re
import shutil
import threading
import time

import pytest
from playwright.sync_api import expect

from conftest import ALICE_PASSWORD, SCREENSHOTS, start_server
from helpers import DURATIONS, create_token, sign_in

READ_ALL = "detections:read members:read policies:read runs:read"
READ_WRITE_ALL = "detections:write members:write policies:write runs:write"


def test_sign_in_create_each_duration_and_shortcut_and_verify_exactly(page, server):
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    assert re.search(r"/tenants/acme/tokens$", page.url)
    for duration, seconds in DURATIONS.items():
        token = create_token(page, name=f"d {duration}", duration=duration, shortcut="Read all")
        status, headers = server.verify(token, "acme", "runs:read")
        assert status == 200
        assert headers["x-auth-scope"] == READ_ALL
        lifetime = int(headers["x-auth-expires"]) - int(time.time())
        assert seconds - 120 <= lifetime <= seconds, (duration, lifetime)
        assert server.verify(token, "acme", "runs:write")[0] == 403
        page.get_by_role("link", name="Done, back to my tokens").click()

    token = create_token(page, name="everything", shortcut="Read & write all")
    status, headers = server.verify(token, "acme", "members:write")
    assert status == 200 and headers["x-auth-scope"] == READ_WRITE_ALL

    token = create_token(
        page, name="picked", categories={"runs": "Read & write", "policies": "Read"}
    )
    status, headers = server.verify(token, "acme", "runs:write")
    assert status == 200 and headers["x-auth-scope"] == "policies:read runs:write"
    assert server.verify(token, "acme", "policies:write")[0] == 403
    assert server.verify(token, "acme", "detections:read")[0] == 403


def test_copy_puts_the_token_on_the_clipboard_and_it_never_comes_back(page, server):
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    token = create_token(page, name="copy me")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_contain_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == token
    assert token not in page.url
    assert page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"

    page.get_by_role("link", name="Done, back to my tokens").click()
    expect(page.get_by_role("cell", name="copy me")).to_be_visible()
    assert token not in page.content()
    try:
        page.go_back()
    except Exception:  # noqa: BLE001 - Chromium may refuse to show a no-store POST result
        pass
    assert token not in page.content()
    try:
        page.reload()
    except Exception:  # noqa: BLE001
        pass
    assert token not in page.content()
    # A reload re-posts the one-time form: no second token is minted or shown.
    page.goto(server.url("/tenants/acme/tokens"))
    assert page.get_by_role("cell", name="copy me", exact=True).count() == 1
    assert token not in page.content()


def test_list_shows_the_token_and_revoke_ends_it_on_the_next_request(page, server):
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    token = create_token(page, name="to revoke", shortcut="Read & write all")
    assert server.verify(token, "acme", "runs:write")[0] == 200
    page.get_by_role("link", name="Done, back to my tokens").click()
    row = page.locator("tr", has=page.get_by_role("cell", name="to revoke", exact=True))
    expect(row).to_contain_text("Read & write all")
    expect(row).to_contain_text("Active")
    expect(row.locator("time").first).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    dialogs = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("Token revoked.")).to_be_visible()
    # The barrier's outcome, in words: every verifier (here the one process) confirmed it.
    expect(page.get_by_text("confirmed it: it is refused from its next request")).to_be_visible()
    assert dialogs and "Revoke this token?" in dialogs[0]
    assert server.verify(token, "acme", "runs:read")[0] == 401
    row = page.locator("tr", has=page.get_by_role("cell", name="to revoke", exact=True))
    expect(row).to_contain_text("Revoked")
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)


def test_the_list_shows_when_and_from_where_a_token_was_last_used(browser):
    # Usage is flushed every second here (default 10 s), so the list shows a use quickly.
    server = start_server(extra_toml="[usage]\nflush_secs = 1\n")
    try:
        page = browser.new_page()
        sign_in(page, server.base, "alice", ALICE_PASSWORD)
        token = create_token(page, name="used once")
        page.get_by_role("link", name="Done, back to my tokens").click()
        row = page.locator("tr", has=page.get_by_role("cell", name="used once", exact=True))
        expect(row.get_by_text("Never used")).to_be_visible()
        assert server.verify(token, "acme", "runs:read")[0] == 200
        deadline = time.time() + 5
        while time.time() < deadline and row.get_by_text("about 1 use").count() == 0:
            page.reload()
        expect(row.get_by_text("about 1 use")).to_be_visible()
        expect(row.get_by_text("from 127.0.0.1")).to_be_visible()
        expect(row.get_by_text("Never used")).to_have_count(0)
        page.close()
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def test_a_dismissed_confirmation_revokes_nothing(page, server):
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    token = create_token(page, name="keep me")
    page.get_by_role("link", name="Done, back to my tokens").click()
    row = page.locator("tr", has=page.get_by_role("cell", name="keep me", exact=True))
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("Active")
    assert server.verify(token, "acme", "runs:read")[0] == 200


def test_tenants_have_independent_lists_and_tokens(page, server):
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    tenants = page.get_by_role("navigation", name="Tenants")
    tenants.get_by_role("link", name="globex").click()
    expect(page.get_by_role("heading", name="Personal tokens in globex")).to_be_visible()
    assert page.url.endswith("/tenants/globex/tokens")
    # alice holds only read-all in globex: nothing more is offered.
    expect(page.get_by_label("Read & write all", exact=True)).to_have_count(0)
    expect(page.get_by_label("Read & write", exact=True)).to_have_count(0)
    token = create_token(page, name="globex only", shortcut="Read all")
    assert server.verify(token, "globex", "runs:read")[0] == 200
    assert server.verify(token, "acme", "runs:read")[0] == 403
    page.get_by_role("link", name="Done, back to my tokens").click()
    expect(page.get_by_role("cell", name="globex only")).to_be_visible()
    page.get_by_role("navigation", name="Tenants").get_by_role("link", name="acme").click()
    expect(page.get_by_role("heading", name="Personal tokens in acme")).to_be_visible()
    expect(page.get_by_role("cell", name="globex only")).to_have_count(0)


def test_xss_name_renders_as_text_and_no_script_runs(page, server):
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    name = "<img src=x onerror=alert(1)>"
    create_token(page, name=name)
    expect(page.locator("dd", has_text=name)).to_be_visible()
    page.get_by_role("link", name="Done, back to my tokens").click()
    expect(page.get_by_role("cell", name=name)).to_be_visible()
    assert page.locator("table img").count() == 0
    page.wait_for_load_state("networkidle")
    assert dialogs == []


class _Attacker(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = (
            f'<form id="f" method="post" action="{self.target}">'
            '<input name="csrf" value="guess"><input name="form" value="x">'
            '<input name="scope" value="read-all"><input name="name" value="forged"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_cross_origin_form_post_is_refused(page, server):
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    handler = type("Attacker", (_Attacker,), {"target": server.url("/tenants/acme/tokens")})
    attacker = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        with page.expect_navigation(url=re.compile(re.escape(server.base))):
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        expect(page.get_by_role("heading", name="Request refused")).to_be_visible()
        page.goto(server.url("/tenants/acme/tokens"))
        expect(page.get_by_role("cell", name="forged")).to_have_count(0)
    finally:
        attacker.shutdown()


def test_sign_out_ends_the_session(browser, page, context, server):
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    cookies = context.cookies()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(server.url("/tenants/acme/tokens"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # The old cookie, replayed, opens nothing: the session is gone on the server.
    replay = browser.new_context()
    replay.add_cookies([c for c in cookies if c["name"] == "edgetoken-session"])
    other = replay.new_page()
    other.goto(server.url("/tenants/acme/tokens"))
    expect(other.get_by_role("heading", name="Sign in")).to_be_visible()
    replay.close()


def test_a_wrong_password_gets_one_generic_message(page, server):
    page.goto(server.url("/sign-in"))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("The username or password is not right.")
    page.get_by_label("Username").fill("nobody")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("The username or password is not right.")


@pytest.fixture(scope="module")
def short_sessions():
    server = start_server(extra_toml="[page]\nsession_idle_secs = 2\nsession_absolute_secs = 60\n")
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def test_an_expired_session_sends_the_person_to_sign_in_with_a_clear_message(
    browser, short_sessions
):
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, short_sessions.base, "alice", ALICE_PASSWORD)
    page.get_by_label("Name").fill("half-filled")
    # Real time must pass for the idle timeout; nothing else is being waited for.
    time.sleep(3)
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text(
        "Your session ended before your form was sent, so nothing was created"
    )
    sign_in(page, short_sessions.base, "alice", ALICE_PASSWORD)
    expect(page.get_by_role("cell", name="half-filled")).to_have_count(0)
    context.close()


def _shots(browser, server, width, height, suffix):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(server.url("/sign-in"))
    page.screenshot(path=str(SCREENSHOTS / f"sign-in-{suffix}.png"), full_page=True)
    sign_in(page, server.base, "alice", ALICE_PASSWORD)
    # A list with some history: one token revoked, one active.
    create_token(page, name=f"nightly export ({suffix})", duration="4 hours", shortcut="Read all")
    page.get_by_role("link", name="Done, back to my tokens").click()
    row = page.locator("tr", has=page.get_by_role("cell", name=f"nightly export ({suffix})"))
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("Token revoked.")).to_be_visible()
    page.goto(server.url("/tenants/acme/tokens"))
    page.get_by_label("Name", exact=True).fill("laptop CLI")
    page.get_by_label("8 hours", exact=True).check()
    page.get_by_label("Choose per category").check()
    runs = page.locator("details", has=page.locator("summary", has_text="runs"))
    runs.locator("summary").click()
    runs.get_by_label("Read & write", exact=True).check()
    page.screenshot(path=str(SCREENSHOTS / f"create-{suffix}.png"), full_page=True)
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_role("heading", name="Token created")).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / f"confirmation-{suffix}.png"), full_page=True)
    page.get_by_role("link", name="Done, back to my tokens").click()
    page.locator("#list-h").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / f"list-{suffix}.png"), full_page=True)
    context.close()


def test_screenshots_desktop_and_360px(browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    server = start_server()
    try:
        _shots(browser, server, 1280, 800, "desktop")
        _shots(browser, server, 360, 740, "360px")
    finally:
        server.stop()
