import pytest

from voltana.services.agent import LeaseConflictError, LeaseNotHeldError, LeaseTable

pytestmark = pytest.mark.unit


def test_grant_renew_and_expire() -> None:
    table = LeaseTable()
    lease = table.grant(0, "controller", ttl_s=2.0, now_s=10.0)
    assert lease.expires_at_s == 12.0
    assert table.next_expiry_s() == 12.0
    assert table.expired(11.9) == []
    assert table.renew(0, "controller", ttl_s=2.0, now_s=11.0).expires_at_s == 13.0
    assert table.expired(13.0) == [0]  # a lease is over at its expiry instant
    assert table.release(0) is not None
    assert table.next_expiry_s() is None


def test_another_holder_waits_for_expiry() -> None:
    table = LeaseTable()
    table.grant(0, "a", ttl_s=1.0, now_s=0.0)
    with pytest.raises(LeaseConflictError, match="'a'"):
        table.grant(0, "b", ttl_s=1.0, now_s=0.5)
    assert table.grant(0, "a", ttl_s=1.0, now_s=0.5).holder == "a"
    assert table.grant(0, "b", ttl_s=1.0, now_s=1.5).holder == "b"


def test_renew_needs_a_live_lease_of_the_caller() -> None:
    table = LeaseTable()
    with pytest.raises(LeaseNotHeldError, match="SetClocks"):
        table.renew(0, "a", ttl_s=1.0, now_s=0.0)
    table.grant(0, "a", ttl_s=1.0, now_s=0.0)
    with pytest.raises(LeaseNotHeldError, match="'b'"):
        table.renew(0, "b", ttl_s=1.0, now_s=0.5)
    with pytest.raises(LeaseNotHeldError):
        table.renew(0, "a", ttl_s=1.0, now_s=1.0)  # expired, waiting for the watchdog


def test_held_by_lists_live_leases_only() -> None:
    table = LeaseTable()
    table.grant(0, "a", ttl_s=1.0, now_s=0.0)
    table.grant(1, "a", ttl_s=5.0, now_s=0.0)
    table.grant(2, "b", ttl_s=5.0, now_s=0.0)
    assert table.held_by("a", now_s=0.5) == [0, 1]
    assert table.held_by("a", now_s=2.0) == [1]
