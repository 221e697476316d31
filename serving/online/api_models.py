"""Request and response schemas of the online service (HTTP/JSON, paths under /v1).

The pydantic models document every endpoint in the OpenAPI schema and parse every JSON body
(`decode_rerank`, `decode_bulk`, `decode_score_ids`, `decode_album`, `decode_ratings`): pydantic-core
reads the bytes and validates them in one pass (for re-rank, Rust parses and validates 1,000 ids in
~0.04 ms, 3x faster than json.loads plus Python checks). Only a body the model refuses runs the
plain-Python rules (`parse_rerank`, `parse_ratings`, ...), whose job is the error that names the
problem. Errors are those of serving.online.errors.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personalize.features import N_ATTRIBUTES, N_CONTENT, SCORE_MAX, SCORE_MIN
from serving.online.errors import InvalidInput, MalformedRequest, ServiceError, TooLarge
from serving.online.taste_models import RerankReasons

API_PREFIX = "/v1"
MAX_CANDIDATES = 1000
MAX_BULK_QUERIES = 64
MAX_ALBUM_IDS = 10_000
MAX_RATINGS_PER_CALL = 1000
MAX_SUGGESTIONS = 100
MAX_SCORE_IDS = 1000
MAX_IMAGE_ID_CHARS = 1024
MAX_REQUEST_ID_CHARS = 128
MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_UPLOAD_FILES = 16
MAX_UPLOAD_PIXELS = 25_000_000  # a 24-megapixel photo (6000 x 4000) and a little margin
MAX_FEATURE_ABS = 1e6  # inline feature values; beyond it the RBF kernel's arithmetic overflows
THUMBNAIL_SIZES = (64, 128, 256, 512)

# a letter or digit first, then letters, digits, _ @ - and single dots (never '..'); 1-128 characters
USER_ID_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_@-])*\.?$"
MAX_USER_ID_CHARS = 128
_USER_ID_RE = re.compile(USER_ID_PATTERN)
REQUEST_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"
_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
# what an image id may not hold (control characters) and the spellings that normalization removes
_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
USER_ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ @ -, starting with a letter or digit, no '..'"


# what callers of the library knew as the API's error: every service error is one
ApiError = ServiceError


# ---------------------------------------------------------------- checks shared by every path

def check_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or len(user_id) > MAX_USER_ID_CHARS or not _USER_ID_RE.fullmatch(user_id):
        raise MalformedRequest("invalid_user_id", f"user id {user_id!r} is not allowed: use {USER_ID_RULE}")
    return user_id


def normalize_image_id(image_id: str) -> str:
    """One spelling per photo: '.' and empty path segments dropped ("./a//b/" -> "a/b").
    '..' stays (such an id never opens a file outside the photos root)."""
    kept = [part for part in image_id.split("/") if part not in ("", ".")]
    return "/".join(kept) or image_id


def normalize_image_ids(ids: list[str], field: str) -> list[str]:
    """Checks every id as a whole string (1-1024 characters, valid Unicode, no control characters)
    and normalizes aliases; a few passes over the joined ids when nothing needs changing."""
    bad = _invalid_ids(ids)
    if bad:
        raise InvalidInput("invalid_image_id", f"'{field}' holds {len(bad)} invalid image ids (each must be "
                           f"a string of 1-{MAX_IMAGE_ID_CHARS} characters, valid Unicode, no control characters)",
                           invalid=[ascii(b)[:100] for b in bad[:20]])
    return [normalize_image_id(i) for i in ids] if _has_alias(ids) else ids


def _invalid_ids(ids: list) -> list:
    try:
        joined = " ".join(ids)  # TypeError: an id is not a string
    except TypeError:
        joined = None
    if joined is not None and min(map(len, ids), default=1) > 0 and max(map(len, ids), default=0) <= MAX_IMAGE_ID_CHARS:
        if joined.isascii():  # printable ASCII only: nothing is left once those bytes are deleted
            if not joined.encode("ascii").translate(None, _PRINTABLE_ASCII):
                return []
        elif _encodable(joined) and joined.isprintable():  # isprintable also refuses some harmless
            return []                                     # characters: they take the precise pass
    return [i for i in ids if not isinstance(i, str) or not i or len(i) > MAX_IMAGE_ID_CHARS
            or _ID_CONTROL.search(i) or not _encodable(i)]


def _has_alias(ids: list[str]) -> bool:
    """Whether any id has an empty or '.' path segment (the ids joined by '/' keep every segment)."""
    segments = "/".join(ids).split("/")
    return "" in segments or "." in segments


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_image_ids(ids: Any, field: str, limit: int) -> list[str]:
    """A list of image ids, checked and normalized (the list that callers must use)."""
    if not isinstance(ids, list):
        raise InvalidInput("invalid_field", f"'{field}' must be a list of image id strings")
    if not ids:
        raise InvalidInput("invalid_field", f"'{field}' is empty")
    if len(ids) > limit:
        raise TooLarge("too_many_items", f"'{field}' holds {len(ids)} ids; at most {limit} are allowed",
                       limit=limit)
    return normalize_image_ids(ids, field)


def check_request_id(request_id: Any) -> str | None:
    if request_id is None:
        return None
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        raise InvalidInput("invalid_request_id",
                           f"request id must be 1-{MAX_REQUEST_ID_CHARS} printable ASCII characters without spaces")
    return request_id


def check_score(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput("invalid_score", f"{where}: score {value!r} is not a number")
    try:
        score = float(value)
    except OverflowError:
        score = math.inf
    if not math.isfinite(score) or not SCORE_MIN <= score <= SCORE_MAX:
        raise InvalidInput("score_out_of_range",
                           f"{where}: score {value!r} is outside [{SCORE_MIN:g}, {SCORE_MAX:g}]")
    return score


def parse_ratings(ratings: Any) -> list[tuple[str, float]]:
    """A ratings list as a client sent it ([{image_id, score}]) -> checked (image_id, score) pairs."""
    if not isinstance(ratings, list) or not ratings:
        raise InvalidInput("invalid_field", "'ratings' must be a non-empty list of {image_id, score}")
    if len(ratings) > MAX_RATINGS_PER_CALL:
        raise TooLarge("too_many_items", f"{len(ratings)} ratings in one call; at most "
                       f"{MAX_RATINGS_PER_CALL} are allowed", limit=MAX_RATINGS_PER_CALL)
    pairs = []
    for k, item in enumerate(ratings):
        if not isinstance(item, dict) or set(item) != {"image_id", "score"}:
            raise InvalidInput("invalid_rating", f"ratings[{k}] must be an object with exactly image_id and score")
        image_id = check_image_ids([item["image_id"]], f"ratings[{k}].image_id", 1)[0]
        pairs.append((image_id, check_score(item["score"], f"ratings[{k}]")))
    return pairs


def parse_json(body: bytes) -> Any:
    if not body:
        raise MalformedRequest("empty_body", "the request body is empty; send a JSON object")
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest("malformed_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedRequest("too_deep", "the request body nests too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise InvalidInput("number_too_large", f"the request body holds a number out of range: {exc}") from None
    return data


def _no_constant(name: str):
    raise InvalidInput("non_finite_number", f"{name} is not a number this API accepts (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput("non_finite_number", f"the number {text[:40]} is out of range (numbers must be finite)")
    return value


# ---------------------------------------------------------------- the re-rank hot path

UserId = Annotated[str, Field(min_length=1, max_length=MAX_USER_ID_CHARS, pattern=USER_ID_PATTERN)]
IMAGE_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
ImageId = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_ID_CHARS, pattern=IMAGE_ID_PATTERN,
                               description="a photo's id; '.' and empty path segments are normalized away")]
FeatureValue = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_FEATURE_ABS, le=MAX_FEATURE_ABS)]
Score = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=SCORE_MIN, le=SCORE_MAX)]


class InlineCandidate(BaseModel):
    """A candidate the store does not hold: its features inline (what PAM needs of a row)."""

    model_config = ConfigDict(extra="forbid")
    image_id: ImageId
    aes_score: FeatureValue
    attributes: Annotated[list[FeatureValue], Field(min_length=N_ATTRIBUTES, max_length=N_ATTRIBUTES)]
    content: Annotated[list[FeatureValue], Field(min_length=N_CONTENT, max_length=N_CONTENT)]


CandidateId = ImageId
INCLUDE_OPTIONS = ("reasons", "uncertainty")  # opt-in parts of a re-rank reply
IncludeOption = Literal["reasons", "uncertainty"]
INCLUDE_RULE = f"include must be a list of distinct options from {list(INCLUDE_OPTIONS)}"


class RerankRequest(BaseModel):
    """Exactly one of `candidates` (ids in the feature store) or `items` (inline features)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["candidates"]}, {"required": ["items"]}]})
    # absent is None; an explicit null is refused (the schema has no null)
    candidates: Annotated[list[CandidateId], Field(min_length=1, max_length=MAX_CANDIDATES)] = None
    items: Annotated[list[InlineCandidate], Field(min_length=1, max_length=MAX_CANDIDATES)] = None
    top_k: Annotated[int, Field(ge=1, le=MAX_CANDIDATES)] = None
    include: Annotated[list[IncludeOption], Field(max_length=len(INCLUDE_OPTIONS), json_schema_extra={
        "uniqueItems": True}, description=(
        "optional parts of the reply, off by default, each named once: 'reasons' (per photo, the features "
        "that moved its personal score most), 'uncertainty' (per photo, `std`: the predicted score's "
        "posterior s.d.)"))] = None


class RerankResponse(BaseModel):
    user_id: str
    personalized: bool
    fallback: str | None = Field(None, description="why the generic score was used, when it was")
    model_version: str
    ratings_version: int
    n_ratings: int
    image_ids: list[str] = Field(description="candidates, best first")
    scores: list[float] = Field(description="the user's predicted scores, in image_ids order")
    generic_scores: list[float]
    std: list[float] | None = Field(None, description=(
        "only with include: ['uncertainty']: per photo in image_ids order, the posterior s.d. of the "
        "predicted score (score units, of the unclipped prediction) under the served version's taste "
        "prior; it shrinks as the user rates photos like it. null when the version has no prior (PAM has "
        "no predictive distribution)"))
    reasons: RerankReasons | None = Field(None, description="only with include: ['reasons']")


class BulkRerankQuery(RerankRequest):
    user_id: UserId


class BulkRerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: Annotated[list[BulkRerankQuery], Field(min_length=1, max_length=MAX_BULK_QUERIES)]


def _query_from_model(request: RerankRequest, where: str) -> RerankQuery:
    import numpy as np

    if (request.candidates is None) == (request.items is None):
        raise InvalidInput("invalid_body", f"{where} must hold exactly one of 'candidates' (image ids) "
                           "or 'items' (inline features)")
    if request.include is not None and len(set(request.include)) != len(request.include):
        raise InvalidInput("invalid_field", f"{where}: {INCLUDE_RULE} (an option is named twice)")
    if request.candidates is not None:
        return RerankQuery(normalize_image_ids(request.candidates, "candidates"), request.top_k,
                           include=request.include)
    table = np.array([[*it.attributes, *it.content, it.aes_score] for it in request.items], dtype=np.float64)
    if not np.isfinite(table).all():
        raise InvalidInput("invalid_item", f"{where}: inline features must be finite numbers")
    ids = normalize_image_ids([it.image_id for it in request.items], "items.image_id")
    return RerankQuery(ids, request.top_k, x=table[:, :-1], aes_score=table[:, -1], include=request.include)


def decode_rerank(body: bytes) -> RerankQuery:
    """A re-rank body -> RerankQuery; a 4xx naming the problem when it is not one."""
    try:
        request = RerankRequest.model_validate_json(body)
    except ValidationError:
        parse_rerank(parse_json(body))  # raises the error that says what is wrong
        raise InvalidInput("invalid_body", "the body does not match RerankRequest (see /v1/docs)") from None
    return _query_from_model(request, "body")


def decode_bulk(body: bytes) -> list[tuple[str, RerankQuery]]:
    """A bulk body -> [(user_id, query)] (user ids checked); a 4xx naming the problem otherwise."""
    try:
        request = BulkRerankRequest.model_validate_json(body)
    except ValidationError:
        data = parse_json(body)
        queries = data.get("queries") if isinstance(data, dict) and set(data) == {"queries"} else None
        if not isinstance(queries, list) or not queries:
            raise InvalidInput("invalid_body", "body must be an object {queries: [{user_id, candidates|items, "
                               "top_k?}]}") from None
        if len(queries) > MAX_BULK_QUERIES:
            raise TooLarge("too_many_items", f"{len(queries)} queries; at most {MAX_BULK_QUERIES} per "
                           "request", limit=MAX_BULK_QUERIES) from None
        for k, q in enumerate(queries):
            check_user_id(q.get("user_id") if isinstance(q, dict) else None)
            parse_rerank(q, where=f"queries[{k}]", extra_keys=frozenset({"user_id"}))
        raise InvalidInput("invalid_body", "the body does not match BulkRerankRequest (see /v1/docs)") from None
    return [(check_user_id(q.user_id), _query_from_model(q, f"queries[{k}]")) for k, q in enumerate(request.queries)]


class BulkQueryError(BaseModel):
    """A failed query of a bulk request, in its place: the error body plus the query's user id."""

    user_id: str
    detail: str
    error: str


class BulkRerankResponse(BaseModel):
    results: list[RerankResponse | BulkQueryError]


_RERANK_KEYS = frozenset({"candidates", "items", "top_k", "include"})


class RerankQuery:
    """A validated re-rank request: candidate ids, or inline rows as arrays."""

    __slots__ = ("aes_score", "ids", "include", "inline", "top_k", "x")

    def __init__(self, ids: list[str], top_k: int | None, x=None, aes_score=None, include=None):
        self.ids = ids
        self.include = frozenset(include or ())
        self.top_k = top_k
        self.inline = x is not None
        self.x = x
        self.aes_score = aes_score


def parse_rerank(data: Any, where: str = "body", extra_keys: frozenset = frozenset()) -> RerankQuery:
    """Validate a decoded re-rank body (RerankRequest's rules) without pydantic."""
    if not isinstance(data, dict):
        raise InvalidInput("invalid_body", f"{where} must be a JSON object with 'candidates' or 'items'")
    unknown = set(data) - _RERANK_KEYS - extra_keys
    if unknown:
        raise InvalidInput("unknown_field", f"{where} has unknown fields {sorted(unknown)}; "
                           f"allowed: {sorted(_RERANK_KEYS | extra_keys)}")
    top_k = data.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or not 1 <= top_k <= MAX_CANDIDATES):
        raise InvalidInput("invalid_field", f"{where}: top_k must be an integer in [1, {MAX_CANDIDATES}]")
    include = data.get("include")
    if include is not None and (not isinstance(include, list) or any(i not in INCLUDE_OPTIONS for i in include)
                                or len(set(include)) != len(include)):
        raise InvalidInput("invalid_field", f"{where}: {INCLUDE_RULE}")
    has_ids, has_items = data.get("candidates") is not None, data.get("items") is not None
    if has_ids == has_items:
        raise InvalidInput("invalid_body", f"{where} must hold exactly one of 'candidates' (image ids) "
                           "or 'items' (inline features)")
    if has_ids:
        return RerankQuery(check_image_ids(data["candidates"], "candidates", MAX_CANDIDATES), top_k, include=include)
    query = _parse_inline(data["items"], where, top_k)
    query.include = frozenset(include or ())
    return query


def _parse_inline(items: Any, where: str, top_k: int | None) -> RerankQuery:
    import numpy as np

    if not isinstance(items, list) or not items:
        raise InvalidInput("invalid_field", f"{where}: 'items' must be a non-empty list of objects")
    if len(items) > MAX_CANDIDATES:
        raise TooLarge("too_many_items", f"'items' holds {len(items)} candidates; at most "
                       f"{MAX_CANDIDATES} are allowed", limit=MAX_CANDIDATES)
    ids, rows = [], []
    for k, item in enumerate(items):
        at = f"{where}: items[{k}]"
        if not isinstance(item, dict) or set(item) != {"image_id", "aes_score", "attributes", "content"}:
            raise InvalidInput("invalid_item", f"{at} must be an object with exactly image_id, aes_score, "
                               f"attributes ({N_ATTRIBUTES} numbers) and content ({N_CONTENT} numbers)")
        image_id = item["image_id"]
        if not isinstance(image_id, str):
            raise InvalidInput("invalid_image_id", f"{at}: image_id must be a non-empty string")
        attributes, content = item["attributes"], item["content"]
        if not isinstance(attributes, list) or len(attributes) != N_ATTRIBUTES:
            raise InvalidInput("invalid_item", f"{at}: attributes must be a list of {N_ATTRIBUTES} numbers")
        if not isinstance(content, list) or len(content) != N_CONTENT:
            raise InvalidInput("invalid_item", f"{at}: content must be a list of {N_CONTENT} numbers")
        values = [*attributes, *content, item["aes_score"]]
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            raise InvalidInput("invalid_item", f"{at}: aes_score, attributes and content must be numbers")
        ids.append(image_id)
        rows.append(values)
    ids = normalize_image_ids(ids, f"{where}: items.image_id")
    try:
        table = np.asarray(rows, dtype=np.float64)
    except OverflowError:
        table = np.full((1, 1), np.inf)
    if not np.isfinite(table).all() or np.abs(table).max() > MAX_FEATURE_ABS:
        raise InvalidInput("invalid_item", f"{where}: inline features must be finite numbers in "
                           f"[-{MAX_FEATURE_ABS:g}, {MAX_FEATURE_ABS:g}]")
    return RerankQuery(ids, top_k, x=table[:, :-1], aes_score=table[:, -1])


# ---------------------------------------------------------------- the other endpoints (pydantic)

class ErrorResponse(BaseModel):
    detail: str = Field(description="what is wrong, in words")
    error: str = Field(description="a machine-readable code, e.g. unknown_images")


class ImageIdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_ids: Annotated[list[ImageId], Field(min_length=1, max_length=MAX_ALBUM_IDS)]


class ScoreIdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_ids: Annotated[list[ImageId], Field(min_length=1, max_length=MAX_SCORE_IDS)]
    include_features: Annotated[bool, Field(strict=True)] = False


class PhotoScore(BaseModel):
    image_id: str
    aes_score: float | None = None
    attributes: list[float] | None = None
    content: list[float] | None = None
    aes_feat: list[float] | None = None
    source: Literal["store", "scored", "failed"]
    error: str | None = None


class ScoreResponse(BaseModel):
    model_version: str
    results: list[PhotoScore]


class AlbumResponse(BaseModel):
    user_id: str
    added: int
    album_size: int
    scored_online: int = Field(0, description="album photos scored now from reachable files")


class Rating(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: ImageId
    score: Score


class AlbumListing(BaseModel):
    user_id: str
    image_ids: list[str] = Field(description="the album, in the order photos were added")
    album_version: int
    ratings_version: int
    ratings: list[Rating] = Field(description="the user's ratings, oldest first (a re-rating counts as new)")


class RatingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ratings: Annotated[list[Rating], Field(min_length=1, max_length=MAX_RATINGS_PER_CALL)]
    request_id: Annotated[str | None, Field(pattern=REQUEST_ID_PATTERN, min_length=1,
                                            max_length=MAX_REQUEST_ID_CHARS)] = Field(
        None, description="makes a retry idempotent (or header Idempotency-Key)")


class RatingsResponse(BaseModel):
    user_id: str
    ratings_version: int
    n_ratings: int
    replayed: bool = Field(description="True when this request id was seen: the first reply is replayed")


class NextResponse(BaseModel):
    user_id: str
    image_ids: list[str]
    phase: Literal["seed", "active", "done"]
    strategy: Literal["posterior", "active-pam"] = Field(description=(
        "how the photos were chosen: 'posterior' (the served version has a taste prior: the photos whose "
        "ratings most reduce the expected variance of the album's ranking, each pick of a page conditioned "
        "on the ones before) or 'active-pam' (the paper's eq. 6 after a seeded random start)"))
    n_ratings: int
    album_size: int
    ratings_version: int
    model_version: str


class GainEstimate(BaseModel):
    value: float | None = Field(description="null below min_ratings")
    model: Literal["prior-pam", "pam"] = Field(description=(
        "the personal model measured (the one that re-ranks): 'prior-pam' when the served version has a "
        "taste prior, 'pam' otherwise"))
    min_ratings: int
    method: str


class UserState(BaseModel):
    user_id: str
    tenant: str
    n_ratings: int
    album_size: int
    album_unavailable: int = Field(description="album photos without a row in this model version")
    ratings_version: int
    album_version: int
    model_version: str
    personalized: bool
    gain: GainEstimate


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, str]


# ---------------------------------------------------------------- decoding the other bodies
# Each body is parsed and validated once, by its model (pydantic-core, straight from bytes). Only
# a body the model refuses goes through the plain-Python rules (`_explain_*`), whose job is the
# error that names the problem; a refusal they do not explain is a generic invalid_body.

def _decode(body: bytes, model: type[BaseModel], explain, finish):
    try:
        parsed = model.model_validate_json(body)
    except ValidationError:
        parsed = None
    error = None
    if parsed is not None:
        try:
            return finish(parsed)
        except ServiceError as exc:
            error = exc
    explain(parse_json(body))  # raises the error that says what is wrong
    if error is not None:
        raise error
    raise InvalidInput("invalid_body", f"the body does not match {model.__name__} (see {API_PREFIX}/docs)")


def _explain_score_ids(data: Any) -> None:
    if not isinstance(data, dict) or set(data) - {"image_ids", "include_features"}:
        raise InvalidInput("invalid_body", "body must be an object {image_ids: [...], include_features?: bool}")
    if not isinstance(data.get("include_features", False), bool):
        raise InvalidInput("invalid_field", "include_features must be true or false")
    check_image_ids(data.get("image_ids"), "image_ids", MAX_SCORE_IDS)


def decode_score_ids(body: bytes) -> tuple[list[str], bool]:
    """A score body -> (normalized image ids, include_features)."""
    return _decode(body, ScoreIdsRequest, _explain_score_ids,
                   lambda r: (normalize_image_ids(r.image_ids, "image_ids"), r.include_features))


def _explain_album(data: Any) -> None:
    if not isinstance(data, dict) or set(data) != {"image_ids"}:
        raise InvalidInput("invalid_body", "body must be an object {image_ids: [...]}")
    check_image_ids(data["image_ids"], "image_ids", MAX_ALBUM_IDS)


def decode_album(body: bytes) -> list[str]:
    """An album body -> the normalized image ids."""
    return _decode(body, ImageIdsRequest, _explain_album, lambda r: normalize_image_ids(r.image_ids, "image_ids"))


def _explain_ratings(data: Any) -> None:
    if not isinstance(data, dict) or "ratings" not in data or set(data) - {"ratings", "request_id"}:
        raise InvalidInput("invalid_body", "body must be an object {ratings: [{image_id, score}], request_id?}")
    check_request_id(data.get("request_id"))
    parse_ratings(data["ratings"])


def _ratings_from_model(request: RatingsRequest) -> tuple[list[tuple[str, float]], bool, str | None]:
    ids = normalize_image_ids([r.image_id for r in request.ratings], "ratings.image_id")
    pairs = [(image_id, r.score) for image_id, r in zip(ids, request.ratings, strict=True)]
    return pairs, "request_id" in request.model_fields_set, request.request_id


def decode_ratings(body: bytes) -> tuple[list[tuple[str, float]], bool, str | None]:
    """A ratings body -> ((image_id, score) pairs, whether the body names a request id, that id)."""
    return _decode(body, RatingsRequest, _explain_ratings, _ratings_from_model)
