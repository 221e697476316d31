"""The service's replies as typed objects (each keeps the decoded JSON in `.raw`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Ranking:
    """A re-rank reply: `image_ids` best first, `scores` (the user's predicted scores) and
    `generic_scores` in the same order. `personalized` is False when the generic score was used,
    and `fallback` says why (e.g. the user has no ratings yet). `std`: with include=["uncertainty"],
    each score's predictive s.d. in the same order (None without it, or when the service's version
    has no taste prior); `reasons`: with include=["reasons"]."""

    user_id: str
    image_ids: list[str]
    scores: list[float]
    generic_scores: list[float]
    personalized: bool
    fallback: str | None
    model_version: str
    ratings_version: int
    n_ratings: int
    std: list[float] | None = None
    reasons: dict | None = None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> Ranking:
        return cls(d["user_id"], d["image_ids"], d["scores"], d["generic_scores"], d["personalized"],
                   d.get("fallback"), d["model_version"], d["ratings_version"], d["n_ratings"], d.get("std"),
                   d.get("reasons"), d)

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass(slots=True)
class RatingsAck:
    """Ratings acknowledged (durable). `replayed`: this request id was seen before, and this is
    the first acknowledgement again (nothing was applied twice)."""

    user_id: str
    ratings_version: int
    n_ratings: int
    replayed: bool
    request_id: str
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict, request_id: str) -> RatingsAck:
        return cls(d["user_id"], d["ratings_version"], d["n_ratings"], d["replayed"], request_id, d)


@dataclass(slots=True)
class Suggestions:
    """The next photos to rate; `phase` is seed, active or done; `strategy` posterior (the
    service's version has a taste prior) or active-pam."""

    user_id: str
    image_ids: list[str]
    phase: str
    n_ratings: int
    album_size: int
    strategy: str | None = None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> Suggestions:
        return cls(d["user_id"], d["image_ids"], d["phase"], d["n_ratings"], d["album_size"], d.get("strategy"), d)


@dataclass(slots=True)
class UserState:
    """A user's state; `gain` is the cross-validated gain over the generic model (None before
    enough ratings) of the personal model `gain_model` (prior-pam or pam). `created` is True when
    this call created the user."""

    user_id: str
    n_ratings: int
    album_size: int
    personalized: bool
    model_version: str
    ratings_version: int
    album_version: int
    gain: float | None
    created: bool = False
    gain_model: str | None = None
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict, created: bool = False) -> UserState:
        gain = d.get("gain") or {}
        return cls(d["user_id"], d["n_ratings"], d["album_size"], d["personalized"], d["model_version"],
                   d["ratings_version"], d["album_version"], gain.get("value"), created, gain.get("model"), d)


@dataclass(slots=True)
class Album:
    """A user's album (ids in the order added) and ratings (oldest first)."""

    user_id: str
    image_ids: list[str]
    ratings: list[tuple[str, float]]
    album_version: int
    ratings_version: int
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> Album:
        return cls(d["user_id"], d["image_ids"], [(r["image_id"], r["score"]) for r in d["ratings"]],
                   d["album_version"], d["ratings_version"], d)


@dataclass(slots=True)
class PhotoScore:
    """One photo's generic score and features; `source` is store, scored or failed (then `error`)."""

    image_id: str
    source: str
    aes_score: float | None = None
    attributes: list[float] | None = None
    content: list[float] | None = None
    aes_feat: list[float] | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, d: dict) -> PhotoScore:
        return cls(d["image_id"], d["source"], d.get("aes_score"), d.get("attributes"), d.get("content"),
                   d.get("aes_feat"), d.get("error"))

    def as_item(self) -> dict[str, Any]:
        """This photo as an inline re-rank candidate (for photos the store does not hold)."""
        return {"image_id": self.image_id, "aes_score": self.aes_score, "attributes": self.attributes,
                "content": self.content}
