"""How Serve routes a user's requests to replicas: model affinity with spillover.

Serve's default router sends a request that names a multiplexed model (`serve_multiplexed_model_id`,
here a user) to a replica that holds that model, and leaves it only when that replica's queue is
full (max_ongoing_requests, kept high here so that slow request bodies never block routing). One
busy user therefore piles onto one replica, which sheds the excess with 503 while the others idle.

SpilloverRouter keeps the affinity while a holder of the model has fewer than `spill_at` requests
in flight (as this router counts them), and otherwise sends the request to a replica with fewer in
flight than the least busy holder (of two such picked at random, the less loaded), or, when there
is none, to the less loaded of any two. The model then loads on that replica
too, so a hot user's requests spread over as many replicas as it keeps busy, while a quiet user
keeps one replica and its cached model.
"""

from __future__ import annotations

import random

from ray.serve.request_router import (
    FIFOMixin,
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

ROUTER_PATH = "serving.cluster.routing:SpilloverRouter"
DEFAULT_SPILL_AT = 8  # the replica's work slots (serving.online.app.MAX_ACTIVE)


def two_choices(replicas: list) -> list:
    """Two replicas at random (all of them when there are at most two)."""
    return list(replicas) if len(replicas) <= 2 else random.sample(list(replicas), 2)


def spillover_ranks(replicas: list, model_id: str, in_flight, spill_at: int) -> list[list]:
    """Ranks of candidates for one request, best first: holders of `model_id` with room
    (fewer than `spill_at` in flight; unknown counts as room), then any two replicas."""
    anywhere = two_choices(replicas)
    if not model_id:
        return [anywhere]
    holders = [r for r in replicas if model_id in r.multiplexed_model_ids]
    room = [r for r in holders if (in_flight(r) or 0) < spill_at]
    if room:
        return [two_choices(room), anywhere]
    if not holders:
        return [anywhere]
    # spill to a replica with fewer in flight than the least busy holder (Serve's selection would
    # otherwise keep a holder whose count it knows over a replica whose count it has to probe)
    least = min(in_flight(r) or 0 for r in holders)
    calmer = [r for r in replicas if model_id not in r.multiplexed_model_ids and (in_flight(r) or 0) < least]
    return [two_choices(calmer), anywhere] if calmer else [anywhere]


class SpilloverRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    """Model affinity while the model's replicas have room; power of two choices beyond."""

    def initialize_state(self, spill_at: int = DEFAULT_SPILL_AT, **kwargs) -> None:
        self.spill_at = int(spill_at)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        model_id = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        cache = self.replica_queue_len_cache
        return spillover_ranks(candidate_replicas, model_id, lambda r: cache.get(r.replica_id),
                               getattr(self, "spill_at", DEFAULT_SPILL_AT))
