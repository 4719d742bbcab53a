"""Bookinfo's data (the one product, its details, the reviews, default ratings) and product ids."""

from __future__ import annotations

from typing import Any

from aiohttp import web

PRODUCTS: tuple[dict[str, Any], ...] = (
    {
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": (
            '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: '
            "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his "
            "shortest and one of his most farcical comedies, with a major part of the humour coming "
            "from slapstick and mistaken identity, in addition to puns and word play."
        ),
    },
)


def product(product_id: int) -> dict[str, Any] | None:
    return PRODUCTS[product_id] if 0 <= product_id < len(PRODUCTS) else None


def book_details(product_id: int) -> dict[str, Any]:
    """What the details service answers (the original answers the same book for any id)."""
    return {
        "id": product_id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


REVIEWS: tuple[tuple[str, str], ...] = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays "
        "by Shakespeare.",
    ),
)

DEFAULT_RATINGS: dict[str, int] = {"Reviewer1": 5, "Reviewer2": 4}

DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
RATINGS_UNAVAILABLE_PRODUCTPAGE = "Sorry, product ratings are currently unavailable for this book."
RATINGS_UNAVAILABLE_REVIEWS = "Ratings service is currently unavailable"


def product_id_of(request: web.Request, field: str = "id") -> int:
    """The product id in the path; a non-numeric one is a 400 naming the path and the field."""
    raw = request.match_info[field]
    if not raw.isdigit() or len(raw) > 9:
        raise web.HTTPBadRequest(
            text=f"{request.path}: path parameter '{field}' must be a numeric product id, got {raw!r}"
        )
    return int(raw)
