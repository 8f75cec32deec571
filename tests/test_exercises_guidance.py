"""Chapter 3's checkers accept the right answers and catch the usual wrong ones with a hint that names them."""
from __future__ import annotations

import pytest

from course_lib.exercises_guidance import check_best_scale, check_cfg, check_cfg_by_hand


def test_check_cfg_accepts_guidance_and_names_the_usual_mistakes(capsys):
    check_cfg(lambda u, c, s: u + s * (c - u))
    assert "✓" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="Ho & Salimans' w"):
        check_cfg(lambda u, c, s: u + (s + 1) * (c - u))  # s read as w
    with pytest.raises(AssertionError, match="swapped"):
        check_cfg(lambda u, c, s: c + s * (u - c))
    with pytest.raises(AssertionError, match="not classifier-free guidance yet"):
        check_cfg(lambda u, c, s: s * c)
    with pytest.raises(AssertionError, match="return a tensor"):
        check_cfg(lambda u, c, s: float(s))


def test_check_cfg_by_hand_catches_wrong_numbers():
    check_cfg_by_hand([0.2, -0.4, 1.0], [0.5, 0.1, 1.0], [1.1, 1.1, 1.0])
    with pytest.raises(AssertionError, match="Ho & Salimans' w = 3"):
        check_cfg_by_hand([0.2, -0.4, 1.0], [0.5, 0.1, 1.0], [1.4, 1.6, 1.0])  # 1 + 3 = 4 times the pull
    with pytest.raises(AssertionError, match="swapped"):
        check_cfg_by_hand([0.2, -0.4, 1.0], [0.5, 0.1, 1.0], [-0.4, -1.4, 1.0])
    with pytest.raises(AssertionError, match="s=3: .* is not right yet"):
        check_cfg_by_hand([0.2, -0.4, 1.0], [0.5, 0.1, 1.0], [1.1, 1.1, 3.0])  # the third channel does not move
    with pytest.raises(AssertionError, match="three numbers"):
        check_cfg_by_hand([0.2, -0.4, 1.0], [0.5, 0.1, 1.0], [1.1, 1.1])


def test_check_best_scale_allows_noise_but_not_a_bad_guess():
    scales, accuracy = [0, 1, 3, 7, 12], [0.0, 0.75, 0.9, 0.85, 0.3]
    check_best_scale(3, scales, accuracy)
    check_best_scale(7, scales, accuracy)  # within 0.1 of the best: indistinguishable at this sample size
    with pytest.raises(AssertionError, match="s=12: whole prompt right in 30%"):
        check_best_scale(12, scales, accuracy)
    with pytest.raises(AssertionError, match="pick one of the sweep's scales"):
        check_best_scale(4, scales, accuracy)
