"""The worker-process setup hook of a local Ray (``runtime_env["worker_process_setup_hook"]``).

Ray runs the hook in every worker process it starts, the small actors of each Ray Train run
(controller, placement-group cleaner, synchronization actor) included, after importing the
hook's module. So this module imports nothing but logging: a hook in train.driver pulled torch,
scikit-learn and scipy into each of those processes, ~5 s of imports apiece on 2 cores
(tests/benchmarks/bench_train_overhead.py).
"""

from __future__ import annotations

import logging

PLACEMENT_GROUP_CLEANER_LOGGER = (
    "ray.train.v2._internal.execution.controller.placement_group_cleaner"
)


def quiet_placement_group_cleaner() -> None:
    """Ray Train's placement-group cleaner asks the state API (served by the dashboard, which a
    local Ray here runs without) whether the controller lives, once a second, and logs a
    warning each time it cannot, onto the driver's terminal."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)
