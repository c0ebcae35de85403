"""Messages safe to show: credentials inside URLs are redacted."""

from __future__ import annotations

import pytest

from rsgee.errors import redact_urls


@pytest.mark.parametrize("text, expected", [
    ("https://user:pw@host/x", "https://***@host/x"),
    ("https://user@host", "https://***@host"),
    ("at http://u:p@ss@h:8080/p?q=a@b (refused)", "at http://***@h:8080/p?q=a@b (refused)"),  # '@' in the password
    ("url='HTTPS://a:b@h1' and url=http://c:d@h2/", "url='HTTPS://***@h1' and url=http://***@h2/"),
    ("https://earthengine-highvolume.googleapis.com", "https://earthengine-highvolume.googleapis.com"),
    ("mail a@b.org or see https://h/users/a@b.org", "mail a@b.org or see https://h/users/a@b.org"),
])
def test_redact_urls_hides_user_and_password_and_nothing_else(text, expected):
    assert redact_urls(text) == expected
