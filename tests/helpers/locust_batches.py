"""Check that a batch of deliveries enters Locust's stats as the same deliveries logged one by one would; prints
"ok" (run as a subprocess by tests/clients/test_locust_batches.py: importing Locust monkey-patches with gevent,
which the pytest process must not)."""

from gevent import monkey

monkey.patch_all()

import random  # noqa: E402

import locust.stats  # noqa: E402
import numpy as np  # noqa: E402
from locust.stats import RequestStats  # noqa: E402

from clients.locustfile import WARMUP_SUFFIX, RequestBatch, log_batch, response_time_buckets  # noqa: E402
from clients.results import Batch  # noqa: E402


def latencies(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    # From sub-millisecond to a minute, and a negative one (clocks), as a run may see.
    return [rng.choice([rng.uniform(0.05, 3), rng.uniform(3, 150), rng.uniform(150, 15_000), rng.uniform(1e4, 6e4)])
            for _ in range(n)] + [-0.4, 99.5, 100.0, 999.4, 10_000.0]


def test_a_batch_is_logged_as_its_deliveries_one_by_one():
    measured, warmup = latencies(3000, 1), latencies(200, 2)
    one_by_one, batched = RequestStats(), RequestStats()
    for ms in measured:
        one_by_one.log_request("DELIVER", "websocket", ms, 100)
    for ms in warmup:
        one_by_one.log_request("DELIVER", "websocket" + WARMUP_SUFFIX, ms, 100)
    log_batch(batched, "websocket", Batch(int(one_by_one.total.last_request_timestamp), 0.0,
                                          np.array(measured), 100 * len(measured), np.array(warmup), 100 * len(warmup)))
    for name in ("websocket", "websocket" + WARMUP_SUFFIX):
        a, b = one_by_one.get(name, "DELIVER"), batched.get(name, "DELIVER")
        assert (b.num_requests, b.total_content_length) == (a.num_requests, a.total_content_length)
        assert dict(b.response_times) == dict(a.response_times)
        assert dict(b.num_reqs_per_sec) == dict(a.num_reqs_per_sec)
        assert (b.min_response_time, b.max_response_time) == (a.min_response_time, a.max_response_time)
        assert abs(b.total_response_time - a.total_response_time) < 1e-6 * abs(a.total_response_time)
        assert b.get_response_time_percentile(0.99) == a.get_response_time_percentile(0.99)
    assert batched.total.num_requests == one_by_one.total.num_requests == len(measured) + len(warmup)


def test_sends_in_a_batch_are_logged_as_one_by_one():
    one_by_one, batched = RequestStats(), RequestStats()
    sends = RequestBatch(batched, "SEND", "websocket")
    sends.flush(1764745000.25)  # opens the batch: nothing to log yet
    assert batched.total.num_requests == 0
    for ms in latencies(500, 3):
        one_by_one.log_request("SEND", "websocket", ms, 120)
        sends.latencies_ms.append(ms)
        sends.length += 120
    sends.flush(1764745000.5)
    a, b = one_by_one.get("websocket", "SEND"), batched.get("websocket", "SEND")
    assert (b.num_requests, b.total_content_length) == (a.num_requests, a.total_content_length) == (505, 505 * 120)
    assert dict(b.response_times) == dict(a.response_times)
    assert (b.min_response_time, b.max_response_time) == (a.min_response_time, a.max_response_time)
    assert dict(b.num_reqs_per_sec) == {1764745000: 505}
    assert not sends.latencies_ms and sends.flush_at == 1764745000.75  # the next batch: BATCH_S, within the second


def test_a_bucketing_the_run_replaced_is_applied():
    default = locust.stats.bucket_response_time
    locust.stats.bucket_response_time = lambda ms: int(ms // 7) * 7
    try:
        assert response_time_buckets(np.array([1.0, 6.9, 7.0, 20.0])) == {0: 2, 7: 1, 14: 1}
    finally:
        locust.stats.bucket_response_time = default


if __name__ == "__main__":
    test_a_batch_is_logged_as_its_deliveries_one_by_one()
    test_sends_in_a_batch_are_logged_as_one_by_one()
    test_a_bucketing_the_run_replaced_is_applied()
    print("ok")
