"""Steps a person takes on the tokens page, shared by the test modules."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

DURATIONS = {"1 hour": 3600, "4 hours": 4 * 3600, "8 hours": 8 * 3600, "Max (12 hours)": 12 * 3600}


def sign_in(page: Page, base: str, user: str, password: str) -> None:
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=re.compile("Personal tokens"))).to_be_visible()


def create_token(
    page: Page,
    name: str | None = None,
    duration: str = "1 hour",
    shortcut: str | None = "Read all",
    categories: dict[str, str] | None = None,
) -> str:
    """Fills and sends the create form on the list page (leaving a confirmation screen for it
    first); returns the token shown once."""
    done = page.get_by_role("link", name="Done, back to my tokens")
    if done.count():
        done.click()
    if name is not None:
        page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label(duration, exact=True).check()
    if categories:
        page.get_by_label("Choose per category").check()
        for category, access in categories.items():
            details = page.locator("details", has=page.locator("summary", has_text=category))
            details.locator("summary").click()
            details.get_by_label(access, exact=True).check()
    elif shortcut:
        page.get_by_label(shortcut, exact=True).check()
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_role("heading", name="Token created")).to_be_visible()
    expect(page.get_by_text("It will not be shown again")).to_be_visible()
    token = page.get_by_label("Your new token").input_value()
    assert token.count(".") == 2, token
    return token
