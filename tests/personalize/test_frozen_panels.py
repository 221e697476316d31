"""Both simulated panels are frozen: the data they generate for seed 0 never change (a hash of
every rating and generic score), and their shared calibration bisection gives the numbers it gave
when each panel had its own copy of it."""

import hashlib

import numpy as np
import pytest

from personalize.robust_panel import calibrate_robust, simulate_robust_panel
from personalize.simulate import PanelConfig, calibrate, simulate_panel

SMALL = PanelConfig().scaled(0.05)


def _digest(panel) -> str:
    r = panel.ratings
    h = hashlib.sha256()
    h.update("\n".join(r.workers.astype(str).tolist()).encode())
    h.update("\n".join(r.images.astype(str).tolist()).encode())
    h.update(np.ascontiguousarray(r.scores, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(panel.properties.aes_score, dtype=np.float64).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(("simulate", "config", "digest"), [
    (simulate_panel, SMALL, "b67303f85362f1937e57c590a83046a396c54766551a838fa3c3a8845381724b"),
    (simulate_robust_panel, SMALL, "2393080ee5dd06a575ac6b838d8f12acf5e7a8d08344ebd84ba47239fc1e8f11"),
    (simulate_panel, PanelConfig(), "5f0631aec25d35ae4a70465d38aa493394fb51562feac3c8f42c3023002959dc"),
    (simulate_robust_panel, PanelConfig(), "39dcfcbf916e46cced8198d01066f0647ecd014e91d0e652c92e96af0664de68"),
], ids=["default-small", "robust-small", "default", "robust"])
def test_generated_ratings_are_frozen(simulate, config, digest):
    assert _digest(simulate(config)) == digest


def test_calibration_bisection_is_unchanged():
    assert calibrate(SMALL, iterations=6) == (0.87109375, 0.453125)
    assert calibrate_robust(SMALL, iterations=6) == (0.87109375, 0.421875)
