from __future__ import annotations

import pytest

from dispatcher.routing import Router
from dispatcher.tags import is_valid_tag, validate_pattern


def test_exact_routes_fan_out_in_route_order() -> None:
    router = Router([("user.signup", ["email", "analytics"]), ("user.signup", ["email"])])
    assert router.route("user.signup") == ("email", "analytics")
    assert router.route("user.login") == ()


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("orders.created", ("email",)),
        ("orders", ()),
        ("orders.created.eu", ()),
        ("clicks.web", ("analytics",)),
        ("clicks.web.home.button", ("analytics",)),
        ("clicks", ()),
        ("user.signup", ("email", "analytics")),
    ],
)
def test_wildcards(tag: str, expected: tuple[str, ...]) -> None:
    router = Router(
        [
            ("user.signup", ["email", "analytics"]),
            ("orders.*", ["email"]),
            ("clicks.>", ["analytics"]),
        ]
    )
    assert router.route(tag) == expected
    assert router.route(tag) == expected  # the memoised answer is the same


def test_star_and_gt_combined() -> None:
    router = Router([("*.eu.>", ["eu"]), ("a.*.c", ["abc"])])
    assert router.route("shop.eu.order.paid") == ("eu",)
    assert router.route("a.eu.c") == ("eu", "abc")
    assert router.route("a.us.c") == ("abc",)


@pytest.mark.parametrize("pattern", ["", "a..b", "a.>.b", "a b", "a.*x", "é"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"pattern|token"):
        validate_pattern(pattern)


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("user:1001.email", True),
        ("a-b_c.d", True),
        ("", False),
        ("a.", False),
        (".a", False),
        ("a*b", False),
        ("a" * 255, True),
        ("a" * 256, False),
        ("a\nb", False),
    ],
)
def test_tag_syntax(tag: str, ok: bool) -> None:
    assert is_valid_tag(tag) is ok
