"""`GET /v1/search?q=&n=`: the engine's top n for a text query (the curation page's search box).

A router of its own, mounted beside the API (`app.include_router(search_router(runtime))`): it
answers the engine's order only (image ids and BM25 scores, best first). The page re-ranks them
for its user through the re-rank endpoint with a deadline, as any search engine in front of the
service would (pam.search.personal is the same pattern in Python). The index is the one `pam
index` built beside the feature table, for the model version the service serves.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request

from serving.online import api_models as m
from serving.online.errors import NotFound
from serving.online.routes import api_key

MAX_RESULTS = 1000


def search_router(runtime, responses: dict | None = None) -> APIRouter:
    router = APIRouter()
    opened: dict[str, object] = {}  # model version -> PhotoIndex

    def index_for(version: str):
        if version not in opened:
            from serving.search.index import index_dir, open_for_feature_table

            root = runtime.service.config.feature_root
            try:
                opened[version] = open_for_feature_table(root, version)
            except (FileNotFoundError, ValueError):
                raise NotFound("no_search_index", f"no search index for model version {version}: build it "
                               f"with `pam index --features {root}` (it goes to {index_dir(root, version)})") from None
        return opened[version]

    @router.get(f"{m.API_PREFIX}/search", tags=["search"], responses=responses or {})
    async def search(request: Request, q: Annotated[str, Query(min_length=1, max_length=1000, description="words to search for")],
                     n: Annotated[int, Query(ge=1, le=MAX_RESULTS, description="results (the re-rank window)")] = 200):
        """The text index's top n photos for `q` (BM25 over file and folder names, ImageNet class
        names), best first. Re-rank them per user with POST /v1/users/{user_id}/rerank."""
        runtime.service.tenant_for(api_key(request))  # Unauthorized without a valid key when the service has keys
        version = runtime.service.catalog.model_version
        index = await asyncio.to_thread(index_for, version)
        hits = await asyncio.to_thread(index.search, q, n)
        return {"query": q, "model_version": version, "image_ids": [h.image_id for h in hits],
                "scores": [round(h.score, 4) for h in hits]}

    return router
