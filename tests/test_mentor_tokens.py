"""Mentor tokens: role and session bound, expiring, tamper-evident."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mentor.tokens import TokenError, issue, new_secret, verify

SECRET = new_secret()


def test_round_trip_and_roles() -> None:
    token = issue(SECRET, "theatre-1", "mentor", "dr.lee", now=1000.0)
    claims = verify(SECRET, token, "theatre-1", now=1001.0)
    assert claims.role == "mentor" and claims.may_annotate and claims.name == "dr.lee"
    observer = verify(SECRET, issue(SECRET, "theatre-1", "observer", "student"), "theatre-1")
    assert not observer.may_annotate


@pytest.mark.parametrize(
    ("token", "session", "now", "message"),
    [
        (None, "theatre-1", None, "missing token"),
        ("", "theatre-1", None, "missing token"),
        ("abc", "theatre-1", None, "malformed token"),
        (issue(SECRET, "theatre-1", "mentor", "x", ttl_s=10, now=0.0), "theatre-1", 10.0, "token expired"),
        (
            issue(SECRET, "theatre-2", "mentor", "x"),
            "theatre-1",
            None,
            "token is for another session ('theatre-2', not 'theatre-1')",
        ),
        (issue(new_secret(), "theatre-1", "mentor", "x"), "theatre-1", None, "invalid token signature"),
    ],
)
def test_refusals_say_why(token: str | None, session: str, now: float | None, message: str) -> None:
    with pytest.raises(TokenError) as info:
        verify(SECRET, token, session, now=now)
    assert str(info.value) == message


def test_edited_claims_break_the_signature() -> None:
    token = issue(SECRET, "theatre-1", "observer", "student")
    body, signature = token.split(".")
    forged = body.replace(body[5], "A" if body[5] != "A" else "B") + "." + signature
    with pytest.raises(TokenError, match="invalid token signature"):
        verify(SECRET, forged, "theatre-1")


def test_unknown_role_refused_at_issue() -> None:
    with pytest.raises(TokenError, match=r"role must be one of mentor, observer, got 'admin'"):
        issue(SECRET, "theatre-1", "admin", "x")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_garbage_never_crashes(token: str) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, token, "theatre-1")
