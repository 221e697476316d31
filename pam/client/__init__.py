"""A Python client of the personalization service's HTTP API (sync and asyncio).

    from pam.client import Client
    with Client("http://127.0.0.1:8000", api_key=None, timeout=10.0) as client:
        client.add_album("ann", photo_ids)
        client.rate("ann", [("a.jpg", 4), ("b.jpg", 2)])        # request id generated: retries are safe
        ranking = client.rerank("ann", candidates, top_k=50)    # .image_ids, .scores best first
        rankings = client.rerank_many([("ann", ids1), ("bob", ids2)])
        ranking = client.rerank("ann", candidates, timeout=Deadline(0.05))  # the whole call in 50 ms

Retries connection errors, 429 and 503 (honouring Retry-After) with jittered backoff, never another
4xx; spreads calls over several base URLs and fails over between them. Errors are exceptions
carrying the service's code and detail (ApiError.code, .detail, .status). Imports only the standard
library (and httpx, to encode an upload's multipart body).
"""

from pam.client._core import Deadline
from pam.client.aio import AsyncClient
from pam.client.errors import ApiError, ConnectionFailed, PamError, ServiceUnavailable, Timeout
from pam.client.models import Album, PhotoScore, Ranking, RatingsAck, Suggestions, UserState
from pam.client.sync import Client

__all__ = ["Album", "ApiError", "AsyncClient", "Client", "ConnectionFailed", "Deadline", "PamError", "PhotoScore", "Ranking",
           "RatingsAck", "ServiceUnavailable", "Suggestions", "Timeout", "UserState"]
