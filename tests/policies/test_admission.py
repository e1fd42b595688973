from __future__ import annotations

from policies.admission import GLOBAL, TENANT, Admission


def test_requests_past_the_bound_are_refused_and_let_in_once_one_leaves() -> None:
    a = Admission(max_requests=2)
    for tenant in ("a", "b"):
        assert a.refusal(tenant, 10) is None
        a.enter(tenant, 10)
    assert a.refusal("c", 10) == GLOBAL
    a.leave("a", 10, now=1.0)
    assert a.refusal("c", 10) is None


def test_tokens_bound_but_a_lone_large_request_gets_in() -> None:
    a = Admission(max_requests=10, max_tokens=100)
    assert a.refusal("a", 500) is None  # nothing in flight: it could never fit otherwise
    a.enter("a", 500)
    assert a.refusal("b", 1) == GLOBAL
    a.leave("a", 500, now=1.0)
    a.enter("a", 60)
    assert a.refusal("b", 40) is None and a.refusal("b", 41) == GLOBAL


def test_a_tenant_over_its_share_is_refused_while_others_get_in() -> None:
    a = Admission(max_requests=10, max_per_tenant=2)
    a.enter("greedy", 1)
    a.enter("greedy", 1)
    assert a.refusal("greedy", 1) == TENANT
    assert a.refusal("polite", 1) is None


def test_retry_after_follows_how_fast_work_finishes() -> None:
    a = Admission(max_requests=1)
    assert a.retry_after_s(GLOBAL) == 1  # nothing measured yet
    for i in range(20):  # one finish every 4 s
        a.enter("a", 1)
        a.leave("a", 1, now=4.0 * i)
    assert a.retry_after_s(GLOBAL) == 4
    for i in range(20, 60):  # then one every 0.1 s
        a.enter("a", 1)
        a.leave("a", 1, now=76.0 + 0.1 * (i - 20))
    assert a.retry_after_s(GLOBAL) == 1
