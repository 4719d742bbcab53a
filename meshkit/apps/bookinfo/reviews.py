"""Bookinfo's reviews service in its three versions: ``GET /reviews/{id}``.

- v1: no ratings (does not call the ratings service);
- v2: calls ratings, black stars, 10 s timeout on that call (the Java original's value);
- v3: calls ratings, red stars, 2.5 s timeout (the original's, the "bug" Istio's
  fault-injection lesson lets you find).

When ratings cannot be reached, reviews still answers 200 and each review carries
``{"rating": {"error": "Ratings service is currently unavailable"}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshkit.apps.application import new_application
from meshkit.apps.bookinfo.catalog import RATINGS_UNAVAILABLE_REVIEWS, REVIEWS, product_id_of
from meshkit.apps.identity import WORKLOAD, Workload, reply
from meshkit.apps.outbound import SERVICE_CLIENT, ProxySettings, add_service_client
from meshkit.apps.propagation import forwarded_headers

STAR_COLOURS: dict[str, str | None] = {"v1": None, "v2": "black", "v3": "red"}
"""Each version's star colour (None: ratings disabled), as in Istio's Bookinfo."""


@dataclass(frozen=True)
class ReviewsBehaviour:
    """What makes one reviews version differ: whether it shows ratings, and in which colour."""

    star_colour: str | None

    @property
    def ratings_enabled(self) -> bool:
        return self.star_colour is not None

    @property
    def ratings_timeout_s(self) -> float:
        """The original hard-codes 10 s for black stars and 2.5 s for any other colour."""
        return 10.0 if self.star_colour == "black" else 2.5

    @classmethod
    def for_version(cls, version: str, star_colour: str | None = None) -> ReviewsBehaviour:
        """v1/v2/v3 as Istio's; another version must name its colour (``none`` for no ratings)."""
        if star_colour is not None:
            return cls(None if star_colour == "none" else star_colour)
        if version not in STAR_COLOURS:
            known = ", ".join(STAR_COLOURS)
            raise ValueError(
                f"reviews --version {version!r}: no default star colour (known versions: {known}); "
                "pass --star-color black|red|none"
            )
        return cls(STAR_COLOURS[version])


BEHAVIOUR = web.AppKey("reviews_behaviour", ReviewsBehaviour)


async def _fetch_stars(request: web.Request, product_id: int) -> dict[str, int] | None:
    workload = request.app[WORKLOAD]
    behaviour = request.app[BEHAVIOUR]
    answer = await request.app[SERVICE_CLIENT].get(
        f"http://ratings:{workload.service_port}/ratings/{product_id}",
        headers=forwarded_headers(request.headers),
        timeout_s=behaviour.ratings_timeout_s,
    )
    if not answer.ok:
        return None
    try:
        ratings = answer.json().get("ratings")
    except (ValueError, AttributeError):
        return None
    return ratings if isinstance(ratings, dict) else None


def _review(
    reviewer: str, text: str, behaviour: ReviewsBehaviour, stars: dict[str, int] | None
) -> dict[str, Any]:
    review: dict[str, Any] = {"reviewer": reviewer, "text": text}
    if not behaviour.ratings_enabled:
        return review
    given = (stars or {}).get(reviewer)
    if isinstance(given, int):
        review["rating"] = {"stars": given, "color": behaviour.star_colour}
    else:
        review["rating"] = {"error": RATINGS_UNAVAILABLE_REVIEWS}
    return review


async def reviews(request: web.Request) -> web.Response:
    product_id = product_id_of(request)
    behaviour = request.app[BEHAVIOUR]
    stars = await _fetch_stars(request, product_id) if behaviour.ratings_enabled else None
    body = {
        "id": str(product_id),
        "reviews": [_review(name, text, behaviour, stars) for name, text in REVIEWS],
    }
    return reply(request, body)


def build(
    workload: Workload,
    *,
    proxies: ProxySettings,
    star_colour: str | None = None,
    seed: int | None = None,
) -> web.Application:
    app = new_application(workload, seed=seed)
    app[BEHAVIOUR] = ReviewsBehaviour.for_version(workload.version, star_colour)
    add_service_client(app, proxies)
    app.router.add_get("/reviews/{id}", reviews)
    return app
