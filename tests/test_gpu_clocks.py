import math

import pytest

from voltana.gpu import InvalidClockError, check_locked_range_mhz, resolve_sm_clock_mhz

pytestmark = pytest.mark.unit

SUPPORTED_MHZ = (210, 225, 240, 1395, 1410)


@pytest.mark.parametrize(
    ("requested_mhz", "expected_mhz"),
    [
        (240, 240),  # exact supported clock
        (226, 240),  # rounds up, never slower than asked
        (225.5, 240),
        (1, 210),  # below the minimum → minimum
        (1400, 1410),
        (5000, 1410),  # above the maximum → maximum
        (math.inf, 1410),
    ],
)
def test_resolve_rounds_up_to_a_supported_clock(requested_mhz: float, expected_mhz: int) -> None:
    assert resolve_sm_clock_mhz(SUPPORTED_MHZ, requested_mhz) == expected_mhz


def test_resolve_accepts_unsorted_supported_clocks() -> None:
    assert resolve_sm_clock_mhz((1410, 210, 1395), 300) == 1395


@pytest.mark.parametrize("requested_mhz", [0, -15, math.nan, -math.inf])
def test_resolve_refuses_non_positive_or_nan(requested_mhz: float) -> None:
    with pytest.raises(InvalidClockError, match="positive"):
        resolve_sm_clock_mhz(SUPPORTED_MHZ, requested_mhz)


def test_resolve_refuses_when_nothing_is_supported() -> None:
    with pytest.raises(InvalidClockError):
        resolve_sm_clock_mhz((), 1000)


def test_locked_range_check() -> None:
    check_locked_range_mhz(SUPPORTED_MHZ, 210, 1410)
    check_locked_range_mhz(SUPPORTED_MHZ, 240, 240)
    with pytest.raises(InvalidClockError, match="not supported"):
        check_locked_range_mhz(SUPPORTED_MHZ, 211, 1410)
    with pytest.raises(InvalidClockError, match="not supported"):
        check_locked_range_mhz(SUPPORTED_MHZ, 210, 1500)
    with pytest.raises(InvalidClockError, match="above max"):
        check_locked_range_mhz(SUPPORTED_MHZ, 1410, 210)
