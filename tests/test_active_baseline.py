"""The active-random faithfulness baseline on a hand-built H whose active components are known: it never picks an
inactive or a selected component and picks the requested count when enough are active."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from l2i_tf import explain


def _hand_built_H():
    """4 clips, K = 6, T = 5: known active sets at a 5 % share of each clip's activation energy."""
    H = np.zeros((4, 5, 6), "float32")
    H[0, :, [0, 2, 4]] = 1.0  # clip 0: components 0, 2, 4 active (a third of the energy each)
    H[0, 0, 5] = 0.01  # component 5: 1e-4 / 15 of the energy: inactive
    H[1, :, :] = 1.0  # clip 1: every component active
    H[2, :, 3] = 2.0  # clip 2: only component 3
    H[2, :, 1] = 0.1  # 0.05 / 20.05 = 0.25 % of the energy: inactive
    return H  # clip 3: silent, nothing active


def test_active_components_of_a_hand_built_H():
    active = explain.active_components(_hand_built_H(), share=0.05).numpy()
    expected = np.zeros((4, 6), bool)
    expected[0, [0, 2, 4]] = True
    expected[1] = True
    expected[2, 3] = True
    np.testing.assert_array_equal(active, expected)
    assert explain.active_components(_hand_built_H(), share=0.0).numpy()[2, 1]  # share 0: any energy counts
    for bad in (-0.1, 1.0, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="share must be a number in"):
            explain.active_components(_hand_built_H(), share=bad)


def test_active_random_never_picks_inactive_or_selected_components_and_matches_the_count():
    H = _hand_built_H()
    active = explain.active_components(H, share=0.05).numpy()
    selected = np.zeros((4, 6), bool)
    selected[0, 0] = True  # wants 1, 2 active others (2, 4): picks exactly 1 of them
    selected[1, [0, 1]] = True  # wants 2, 4 active others: picks exactly 2
    selected[2, [0, 5]] = True  # wants 2, only component 3 is active: picks it alone
    selected[3, 0] = True  # silent clip: nothing to draw
    counts = np.zeros(6, int)
    for seed in range(200):
        draw = explain.active_random_selection(selected, H, tf.constant([seed, 1]), share=0.05).numpy()
        assert not np.any(draw & ~active), "picked an inactive component"
        assert not np.any(draw & selected), "picked a selected component"
        np.testing.assert_array_equal(draw.sum(axis=1), [1, 2, 1, 0])
        np.testing.assert_array_equal(draw[2], np.eye(6, dtype=bool)[3])
        counts += draw[1]
    assert counts[0] == counts[1] == 0 and counts[2:].min() > 60  # uniform over the 4 eligible: 100 each expected
    again = explain.active_random_selection(selected, H, tf.constant([7, 1]), share=0.05).numpy()
    np.testing.assert_array_equal(again, explain.active_random_selection(selected, H, tf.constant([7, 1]), 0.05))
