"""Allow/deny rules and per-key rate limits (pure)."""

from proxydhcp.access import AccessRules, TokenBuckets


def test_deny_wins_and_oui_matches_vendor_block():
    r = AccessRules(allow_macs=["52:54:00"], deny_macs=["52:54:00:66:*"])
    assert r.refuse("52:54:00:12:34:56", None) is None
    assert "deny" in r.refuse("52:54:00:66:00:01", None)
    assert "allow list" in r.refuse("00:25:90:00:00:01", None)


def test_subnets():
    r = AccessRules(allow_subnets=["10.77.0.0/24"], deny_subnets=["10.77.0.128/25"])
    assert r.refuse("aa:bb:cc:dd:ee:ff", "10.77.0.5") is None
    assert "denied" in r.refuse("aa:bb:cc:dd:ee:ff", "10.77.0.200")
    assert "outside" in r.refuse("aa:bb:cc:dd:ee:ff", "10.88.0.1")
    assert AccessRules().empty and not r.empty


def test_token_bucket_limits_one_key_not_the_others():
    tb = TokenBuckets(rate=2, burst=4)
    got = [tb.allow("loop", 0.0) for _ in range(10)]
    assert got == [True] * 4 + [False] * 6
    assert tb.allow("other", 0.0)           # a looping client does not starve others
    assert tb.allow("loop", 0.5)            # refills at `rate` per second
    assert not tb.allow("loop", 0.5)


def test_token_bucket_table_is_bounded():
    tb = TokenBuckets(rate=1, burst=1, size=100)
    for i in range(1000):
        tb.allow(i, 0.0)
    assert len(tb._buckets) == 100
