"""Schemas of the taste endpoint and of the reasons a re-rank reply carries on request (OpenAPI)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TasteEffect(BaseModel):
    key: str = Field(description="the paper's attribute code (IC, OE, GL, CH, VC, DoF, RoT, BE, RE, SY) or "
                     "the content class's index as a string")
    name: str = Field(description="in words, e.g. 'vivid colour'; content classes by the ImageNet classes "
                      "the trunk predicts most often for them, or 'content class k'")
    effect: float = Field(description="change in the user's score per standard deviation of the feature over "
                          "the user's album (content: relative to the user's average content effect)")
    std: float | None = Field(description="its uncertainty (posterior s.d.); null without ratings")
    supported: bool = Field(description="false when the ratings cannot support the effect (too few, not "
                            "spread over the feature, or within two s.d. of zero)")


class TasteResponse(BaseModel):
    user_id: str
    n_ratings: int
    model_version: str
    attributes: list[TasteEffect] = Field(description="the 10 attributes, sorted by |effect|")
    content: list[TasteEffect] = Field(description="the 10 content classes, sorted by |effect|")


class RerankReasons(BaseModel):
    """Per photo, in the reply's image_ids order: the features that moved its personal offset most."""

    keys: list[list[str]] = Field(description="feature keys per photo, largest |contribution| first")
    contributions: list[list[float]] = Field(description="each key's share of the photo's personal offset "
                                             "(score units, relative to the user's average album photo)")
    names: dict[str, str] = Field(description="feature key -> name in words")
