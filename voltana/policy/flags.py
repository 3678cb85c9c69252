"""The flags that name a policy or a router (help lists what the registry knows)."""

from __future__ import annotations

from voltana.flags import Flag
from voltana.policy.registry import live_policy_names, router_names

POLICY = Flag(lambda: f"operating policy: {', '.join(live_policy_names())}", name="--policy")
ROUTER = Flag(
    lambda: f"override the policy's router: {', '.join(router_names())}",
    name="--router",
    default_help="the policy's own",
)
