"""Istio metric series bookkeeping (unit): one record() updates the three histograms as observe() does."""

from __future__ import annotations

from meshkit.proxy.stats import BYTES_BUCKETS, DURATION_BUCKETS, Histogram, IstioMetrics


def test_series_record_matches_histogram_observe() -> None:
    series = IstioMetrics().series(("key",), lambda: {"reporter": "source"})
    samples = [(0.2, 0, 100), (7.5, 12, 0), (1e7, 10**9, 10**10), (5.0, 1, 1)]
    expected = [Histogram(DURATION_BUCKETS), Histogram(BYTES_BUCKETS), Histogram(BYTES_BUCKETS)]
    for duration, sent, received in samples:
        series.record(duration, sent, received)
        for hist, value in zip(expected, (duration, sent, received), strict=True):
            hist.observe(value)
    assert series.requests == len(samples)
    got_all = (series.duration, series.request_bytes, series.response_bytes)
    for got, want in zip(got_all, expected, strict=True):
        assert (got.counts, got.sum, got.count) == (want.counts, want.sum, want.count)
    assert series.duration.counts[0] == 1  # <= 0.5 ms
    assert series.duration.counts[-1] == 1  # above every bound
