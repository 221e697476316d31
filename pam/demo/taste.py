"""The demo report's taste section: per simulated user, the taste the service recovered (GET
/v1/users/{id}/taste after the Active-PAM session) beside the user's TRUE simulated taste (the
panel's weights, personalize.taste_recovery.true_score_effects), both as the change in score per
standard deviation of each feature over the user's photos (content centred)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from personalize.explain import FEATURE_KEYS


def collect(url: str, demo_panel, strategy: str = "active") -> dict:
    """{"users": [{user, n_ratings, keys, names, recovered, std, supported, true, rho}]}."""
    from pam.demo.sessions import Client
    from personalize.metrics import spearman_rho
    from personalize.taste_recovery import true_score_effects

    panel = demo_panel.panel
    props = panel.properties
    index = {str(i): k for k, i in enumerate(props.image_ids)}
    client = Client(url)
    users = []
    try:
        for user in demo_panel.users:
            reply = client.taste(f"{user.user_id}-{strategy}")
            rows = [index[i] for i in user.image_ids]
            X = np.hstack([props.attributes[rows], props.content[rows], props.aes_score[rows, None]])
            true = true_score_effects(panel, panel.workers[user.user_id], X)
            got = {r["key"]: r for r in reply["attributes"] + reply["content"]}
            recovered = np.array([got[k]["effect"] for k in FEATURE_KEYS])
            users.append({"user": user.user_id, "n_ratings": reply["n_ratings"], "keys": list(FEATURE_KEYS),
                          "names": [got[k]["name"] for k in FEATURE_KEYS], "recovered": recovered.tolist(),
                          "std": [got[k]["std"] for k in FEATURE_KEYS],
                          "supported": [got[k]["supported"] for k in FEATURE_KEYS], "true": true.tolist(),
                          "rho": spearman_rho(recovered, true)})
    finally:
        client.close()
    return {"strategy": strategy, "users": users}


def plot(taste: dict, path: Path) -> Path:
    from matplotlib.colors import to_rgba

    from pam.demo.report import _plt

    plt = _plt()
    users = taste["users"]
    fig, axes = plt.subplots(1, len(users), figsize=(3.1 * len(users) + 1.2, 5.2), sharey=True, squeeze=False)
    y = np.arange(len(FEATURE_KEYS))
    for ax, u in zip(axes[0], users, strict=True):
        true, rec = np.asarray(u["true"]), np.asarray(u["recovered"])
        ax.barh(y + 0.2, true, 0.4, color="#bbbbbb", label="TRUE (simulated)")
        colours = [to_rgba("#1e8449" if v >= 0 else "#c0392b", 1.0 if s else 0.4)
                   for v, s in zip(rec, u["supported"], strict=True)]
        ax.barh(y - 0.2, rec, 0.4, color=colours, label="recovered")
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(f"{u['user']}: {u['n_ratings']} ratings\nrank corr. {u['rho']:+.2f}", fontsize=8.5)
        ax.tick_params(axis="x", labelsize=7)
    labels = [(f"{k} {n}" if i < 10 else n)[:30] for i, (k, n) in enumerate(zip(FEATURE_KEYS, users[0]["names"],
                                                                                   strict=True))]
    axes[0][0].set_yticks(y, labels, fontsize=7)
    axes[0][0].invert_yaxis()
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.supxlabel("change in score per s.d. of the feature (pale: not supported by the ratings yet)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _top(keys, values, names, k: int = 3) -> str:
    order = np.argsort(-np.abs(np.asarray(values)), kind="stable")[:k]
    return ", ".join(f"{html.escape(names[i])} {values[i]:+.2f}" for i in order)


def html_section(taste: dict, image: str) -> list[str]:
    from pam.demo.report import _table

    rows = [[html.escape(u["user"]), str(u["n_ratings"]), f"{u['rho']:+.2f}",
             _top(u["keys"], u["recovered"], u["names"]), _top(u["keys"], u["true"], u["names"])]
            for u in taste["users"]]
    mean = float(np.nanmean([u["rho"] for u in taste["users"]])) if taste["users"] else float("nan")
    return ["<h2>What each user's model learnt: recovered vs TRUE taste</h2>",
            "<p>After the Active-PAM session, the service's <code>GET /v1/users/{id}/taste</code> for each "
            "simulated user beside the taste the simulator gave that user (its weights on the attributes and "
            "content, in the same units: change in score per standard deviation of the feature over the user's "
            "photos, content relative to the user's average). The recovered effects are shrunk (PAM is "
            "regularised for few ratings); what matters is which features and which signs. Mean rank "
            f"correlation over the 20 features: {mean:+.2f}.</p>",
            f"<img src='{html.escape(image)}' alt='recovered vs true taste per user'>",
            _table(["user", "ratings", "rank corr.", "recovered: top 3", "TRUE: top 3"], rows)]
