"""Istio's Bookinfo sample, rebuilt on aiohttp: productpage, details, reviews v1/v2/v3, ratings.

Behaviour that Istio's lessons depend on is kept from the originals: productpage calls
details (3 s timeout) and then reviews (3 s timeout, one retry); reviews v2 (black stars)
calls ratings with a 10 s timeout, v3 (red stars) with 2.5 s, v1 not at all; ratings
failures turn into "Ratings service is currently unavailable" inside a 200 reviews answer.

Must not: call another service except through ``meshkit.apps.outbound`` (``HTTP_PROXY``).
"""
