"""Run the ``ray`` CLI with every Ray server of this machine on 127.0.0.1 (used by start.sh).

Ray's gRPC servers (GCS, raylet, object manager) listen on 0.0.0.0 unless the node's IP is
exactly ``127.0.0.1``, and on Linux Ray rewrites ``127.0.0.1``/``localhost`` (in
``--node-ip-address`` and in ``--address``) to the machine's routable IP. Setting
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps ``127.0.0.1`` (Ray then takes the loopback IP as
the node IP, as it does on macOS), but ``ray start --address`` refuses to start a worker node
under that setting ("multi-node clusters are not supported on Windows and OSX").

This launcher sets the variable for itself and every process it starts (raylet, agents,
workers all agree on 127.0.0.1), and lets only ``ray start``'s own "multi-node allowed?"
check see the default Linux value. Everything else is the unmodified ``ray`` CLI:

    python ray_loopback.py start --head --port 6380 ...
    python ray_loopback.py start --address 127.0.0.1:6380 ...
    python ray_loopback.py nodes --address 127.0.0.1:6380 --expect 2 --timeout 60

Checked with Ray 2.60.0. Drivers joining such a cluster need the same variable
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, exported by the ``env.sh`` that start.sh writes),
or Ray rewrites their ``--address 127.0.0.1:PORT`` to an address nothing listens on.
"""

from __future__ import annotations

import os
import sys
import time
import types

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray_cli() -> int:
    os.environ[LOOPBACK_ENV] = "0"
    import ray._private.ray_constants as constants
    import ray.scripts.scripts as scripts

    # The CLI module alone sees "multi-node clusters enabled" (Linux's default), so a second
    # node may join; services.get_node_ip_address still sees the loopback setting.
    view = types.ModuleType("ray_constants_for_cli")
    view.__dict__.update(vars(constants))
    view.ENABLE_RAY_CLUSTER = True
    scripts.ray_constants = view
    sys.argv[0] = "ray"
    return scripts.main()


def _nodes(argv: list[str]) -> int:
    """Wait until ``--expect`` nodes are alive; print one line per node."""
    import argparse

    parser = argparse.ArgumentParser(prog="ray_loopback.py nodes")
    parser.add_argument("--address", required=True)
    parser.add_argument("--expect", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    os.environ[LOOPBACK_ENV] = "0"
    import ray

    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False,
             include_dashboard=False)
    try:
        deadline = time.monotonic() + args.timeout
        while True:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) >= args.expect or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for node in alive:
            resources = {k: v for k, v in node["Resources"].items()
                         if not k.startswith("node:") and k != "object_store_memory"
                         and k != "memory"}
            print(f"node {node['NodeID']} {node['NodeManagerAddress']}:"
                  f"{node['NodeManagerPort']} {resources}")
        if len(alive) < args.expect:
            print(f"only {len(alive)} of {args.expect} Ray nodes alive after "
                  f"{args.timeout:.0f}s", file=sys.stderr)
            return 1
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "nodes":
        sys.exit(_nodes(sys.argv[2:]))
    sys.exit(_ray_cli())
