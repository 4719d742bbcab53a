"""Bookinfo's HTML: the product page (details, reviews with stars, who served them) and an index.

Plain strings, every value escaped; no external stylesheet, font or script, so the page
renders offline (Binder, a notebook's IFrame). Stable ``id`` and ``data-*`` attributes let
a lab check parse what is shown (``#reviews[data-served-by]``, ``.stars[data-color]``).
"""

from __future__ import annotations

from html import escape
from typing import Any

from meshkit.apps.identity import Workload

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
header { background: #1f3a5f; color: #fff; padding: .6em 1.2em; display: flex;
         justify-content: space-between; align-items: center; }
header a, header button { color: #fff; }
header form { display: inline; margin: 0; }
header input { width: 7em; }
main { max-width: 60em; margin: 1em auto; padding: 0 1em; }
h1 { margin-bottom: .2em; }
.columns { display: flex; gap: 2em; flex-wrap: wrap; }
.columns > section { flex: 1 1 20em; }
h2 { color: #1f3a5f; font-size: 1.2em; }
dt { font-weight: bold; float: left; clear: left; width: 7em; }
dd { margin-left: 7.5em; }
blockquote { border-left: 4px solid #ccc; margin: 0 0 1em; padding: .2em 1em; }
.stars { font-size: 1.3em; letter-spacing: .1em; }
.error { color: #a00; }
footer { color: #666; font-size: .85em; margin-top: 2em; }
"""

DETAIL_ROWS = (
    ("Type", "type"),
    ("Pages", "pages"),
    ("Publisher", "publisher"),
    ("Language", "language"),
    ("ISBN-10", "ISBN-10"),
    ("ISBN-13", "ISBN-13"),
)


def _text(value: Any) -> str:
    return escape("" if value is None else str(value))


def _layout(title: str, header_right: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_text(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><strong>BookInfo Sample</strong><span>{header_right}</span></header>"
        f"<main>{body}</main></body></html>\n"
    )


def _sign_in(user: str | None) -> str:
    if user:
        return (
            f'Signed in as <b id="user">{_text(user)}</b> '
            '<form method="post" action="logout"><button type="submit">Sign out</button></form>'
        )
    return (
        '<form method="post" action="login">'
        '<input name="username" placeholder="User Name" aria-label="User Name"> '
        '<input name="passwd" type="password" placeholder="Password" aria-label="Password"> '
        '<button type="submit">Sign in</button></form>'
    )


def _details_section(status: int, details: dict[str, Any]) -> str:
    if status != 200:
        return (
            '<section id="details" data-status="{}"><h2>Error fetching product details!</h2>'
            '<p class="error">{}</p></section>'
        ).format(status, _text(details.get("error")))
    rows = "".join(f"<dt>{label}:</dt><dd>{_text(details.get(key))}</dd>" for label, key in DETAIL_ROWS)
    return f'<section id="details" data-status="200"><h2>Book Details</h2><dl>{rows}</dl></section>'


def _stars(rating: Any) -> str:
    if not isinstance(rating, dict):
        return ""
    stars = rating.get("stars")
    if isinstance(stars, int) and not isinstance(stars, bool):
        shown = max(0, min(5, stars))
        colour = _text(rating.get("color", "black"))
        return (
            f'<div class="stars" data-stars="{shown}" data-color="{colour}" style="color: {colour}">'
            f"{'★' * shown}{'☆' * (5 - shown)}</div>"
        )
    if rating.get("error"):
        return f'<p class="error"><i>{_text(rating["error"])}</i></p>'
    return ""


def _reviews_section(status: int, reviews: dict[str, Any]) -> str:
    if status != 200:
        return (
            '<section id="reviews" data-status="{}"><h2>Error fetching product reviews!</h2>'
            '<p class="error">{}</p></section>'
        ).format(status, _text(reviews.get("error")))
    quotes = []
    for review in reviews.get("reviews") or []:
        if not isinstance(review, dict):
            continue
        quotes.append(
            f"<blockquote><p>{_text(review.get('text'))}</p>"
            f"<small>{_text(review.get('reviewer'))}</small>{_stars(review.get('rating'))}</blockquote>"
        )
    served_by = _text(reviews.get("podname"))
    version = _text(reviews.get("version"))
    return (
        f'<section id="reviews" data-status="200" data-served-by="{served_by}" data-version="{version}">'
        f"<h2>Book Reviews</h2>{''.join(quotes)}"
        f"<dl><dt>Reviews served by:</dt><dd><u>{served_by}</u></dd></dl></section>"
    )


def render_product_page(
    *,
    product: dict[str, Any],
    details_status: int,
    details: dict[str, Any],
    reviews_status: int,
    reviews: dict[str, Any],
    user: str | None,
    workload: Workload,
) -> str:
    """The ``/productpage`` HTML. ``descriptionHtml`` is trusted catalog HTML, everything else is escaped."""
    body = (
        f"<h1>{_text(product['title'])}</h1><p>{product['descriptionHtml']}</p>"
        f'<div class="columns">{_details_section(details_status, details)}'
        f"{_reviews_section(reviews_status, reviews)}</div>"
        f'<footer>Page served by <span id="productpage-pod">{_text(workload.instance)}</span> '
        f"({_text(workload.version)})</footer>"
    )
    return _layout("Simple Bookstore App", _sign_in(user), body)


def render_index(workload: Workload) -> str:
    """``/``: where to go from here."""
    body = (
        "<h1>Hello! This is a simple bookstore application.</h1>"
        '<p><a href="productpage">Open the product page</a></p>'
        "<h2>JSON API</h2><ul>"
        '<li><a href="api/v1/products">/api/v1/products</a></li>'
        '<li><a href="api/v1/products/0">/api/v1/products/0</a></li>'
        '<li><a href="api/v1/products/0/reviews">/api/v1/products/0/reviews</a></li>'
        '<li><a href="api/v1/products/0/ratings">/api/v1/products/0/ratings</a></li></ul>'
        f"<footer>Served by {_text(workload.instance)} ({_text(workload.version)})</footer>"
    )
    return _layout("Simple Bookstore App", "", body)
