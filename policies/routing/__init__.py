"""Routing policies: which backend gets the next request.

Pure decision logic, no I/O and no clock. The caller (plugins/routing.py, or the
simulation in bench/routing_sim.py) keeps each `BackendState.outstanding` current,
passes the healthy candidates to `choose`, and tells the policy where a request went
with `on_routed` so that affinity policies can learn.

- RoundRobin, Weighted (smooth weighted round robin, as nginx does), LeastOutstanding.
- PrefixAffinity: a prompt goes where its longest prefix was last sent (that backend
  likely still holds the prefix's KV cache); a prefix never seen goes to its place on a
  hash ring. Both under a load bound, so a popular prefix cannot hot-spot one backend:
  consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018).
- ConversationAffinity: the same, keyed by the conversation id.

bench/routing_sim.py measures them (hit rate, balance, queueing) against an oracle that
sees every backend's cache, at 8 to 1,000 backends.
"""

from policies.routing.affinity import ConversationAffinity, PrefixAffinity
from policies.routing.balancing import LeastOutstanding, RoundRobin, Weighted
from policies.routing.prefix_keys import prefix_boundaries, prefix_hash_chain, stable_hash
from policies.routing.state import (
    BackendState,
    Policy,
    RoutingKey,
    first_healthy_group,
    load_bound,
)

__all__ = [
    "BackendState",
    "ConversationAffinity",
    "LeastOutstanding",
    "Policy",
    "PrefixAffinity",
    "RoundRobin",
    "RoutingKey",
    "Weighted",
    "first_healthy_group",
    "load_bound",
    "prefix_boundaries",
    "prefix_hash_chain",
    "stable_hash",
]
