"""The simulated rater panel over the album, sized for it, and the simulated users it yields.

personalize.simulate builds the panel with its FROZEN defaults (taste model, noise, calibration);
only the sizes change with the album, keeping the paper's structure (section 3): the training
photos are rated by 5 training workers each (workers rate about RATINGS_PER_TRAIN_WORKER photos),
the test photos (TEST_FRACTION of the album) by the test workers only, two planted random
labellers are excluded by worker performance (eq. 1). Each test worker rates every test photo:
those ratings are the simulated user's hidden scores, which the demo's client reveals one photo at
a time when Active-PAM (or the random baseline) asks for it. The generic network trains on the
training photos only, so the users' photos are unseen by it, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEST_FRACTION = 0.4
RATINGS_PER_TRAIN_WORKER = 40
RANDOM_LABELLERS = 2
MIN_TRAIN_WORKERS = 6


@dataclass
class SimulatedUser:
    user_id: str  # the panel's test-worker id
    image_ids: list[str]  # the user's album: the test photos
    scores: np.ndarray  # the user's hidden 1-5 ratings, in image_ids order


@dataclass
class DemoPanel:
    panel: object  # personalize.simulate.Panel
    files: dict  # what pam.commands.simulate.write_panel wrote
    users: list[SimulatedUser]
    statistics: dict

    @property
    def train_ids(self) -> list[str]:
        p = self.panel.properties
        return [str(i) for i, s in zip(p.image_ids, p.split, strict=True) if s == "train"]


def panel_config(n_photos: int, n_users: int, seed: int):
    from personalize.simulate import PanelConfig

    n_test = max(2, round(TEST_FRACTION * n_photos))
    n_train = n_photos - n_test
    if n_train < 10:
        raise ValueError(f"an album of {n_photos} photos leaves {n_train} for training the generic model; "
                         "use --album-size 30 or more")
    workers = max(MIN_TRAIN_WORKERS, round(n_train * 5 / RATINGS_PER_TRAIN_WORKER))
    return PanelConfig(n_images=n_photos, n_train_workers=workers, n_test_workers=n_users,
                       n_test_images=n_test, test_ratings_range=(n_test, n_test),
                       n_random_labellers=RANDOM_LABELLERS, seed=seed)


def simulate(properties, n_users: int, seed: int, out: Path) -> DemoPanel:
    """Simulate the panel on the photos' properties and write it as `pam simulate` does."""
    from pam.commands.simulate import write_panel
    from personalize.simulate import panel_statistics, simulate_panel

    config = panel_config(len(properties.image_ids), n_users, seed)
    panel = simulate_panel(config, base=properties.feature_matrix())
    files = write_panel(panel, out)
    r = panel.ratings
    users = []
    for worker in panel.test_workers:
        mine = r.workers == worker
        images, scores = r.images[mine], r.scores[mine]
        keep = ~np.isin(images, np.asarray(list(panel.check_truth)))
        order = np.argsort(images[keep], kind="stable")
        users.append(SimulatedUser(str(worker), images[keep][order].astype(str).tolist(),
                                   scores[keep][order].astype(np.float64)))
    return DemoPanel(panel, files, users, panel_statistics(panel))
