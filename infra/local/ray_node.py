"""`ray start` for a second Ray node on this machine that stays on 127.0.0.1 (used by ray.sh).

`ray start --address 127.0.0.1:PORT` rewrites a loopback address into the machine's outward IP
(ray._private.services.resolve_ip_for_localhost), and the switch that stops that rewrite
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) also makes `ray start` refuse to add a node. So this
wrapper runs Ray's own CLI with that one rewrite turned off for loopback hosts; the node's
processes get RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as the head's do, so whatever they resolve
stays on 127.0.0.1. Checked against Ray 2.55 (tests/test_infra.py starts it).

usage: python infra/local/ray_node.py --address 127.0.0.1:PORT [other `ray start` options]
"""

from __future__ import annotations

import ipaddress
import os
import sys

import ray._private.services as services
from ray.scripts.scripts import main

_resolve = services.resolve_ip_for_localhost


def _keep_loopback(host: str) -> str:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    return _resolve(host)


if __name__ == "__main__":
    services.resolve_ip_for_localhost = _keep_loopback
    # Read by the node's child processes at import; this process already imported Ray.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    sys.argv = ["ray", "start", *sys.argv[1:]]
    sys.exit(main())
