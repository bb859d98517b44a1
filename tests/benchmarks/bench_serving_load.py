"""`mlflow models serve` of the ranker under bounded concurrent load, malformed requests mixed in.

    python tests/benchmarks/bench_serving_load.py [--clients 32] [--requests 5000]

Not run by CI. The model is bench_serving.py's build (same ``--data-dir``, reused while its
options match): a generated world, the real ETL, a trained rnn_mtl with its feature bundle,
registered as champion. The server runs on 127.0.0.1 with ``--server-workers`` processes and is
stopped by its PID. ``--clients`` threads, each on its own kept-alive connection, send
``--requests`` POST /invocations in all; every ``1 / --malformed-share``-th request is one of
the bad requests of tests/helpers_requests.py (in turn), the others the valid request of a real
impression. What must hold: no 5xx at all, every malformed request answered 400 and every valid
one 200 (the exit code is 1 otherwise). Printed and written to bench_serving_load.json: counts
by status, latency p50/p99 of valid and malformed requests, requests per second, the load.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

for _path in (Path(__file__).resolve().parent, *Path(__file__).resolve().parents[1:3]):
    sys.path.insert(0, str(_path))  # bench_serving, the tests' helpers, the project

from bench_serving import MODEL_SIZES, BenchServingConfig, build, load, make_requests  # noqa: E402
from helpers_mlflow import free_port, mlflow_env, start, stop, wait_http  # noqa: E402
from helpers_requests import BAD_REQUESTS  # noqa: E402

from etl.cli import parse  # noqa: E402

OUT_JSON = Path(__file__).with_suffix(".json")


@dataclass
class LoadConfig:
    data_dir: str = field(
        default="/tmp/isrec-bench-serving", metadata={"help": "bench_serving.py's build folder"}
    )
    users: int = field(default=300, metadata={"help": "users of the generated world"})
    days: int = field(default=4, metadata={"help": "impression days of the world"})
    max_len: int = field(default=50, metadata={"help": "history window L of the ETL"})
    model_size: str = field(
        default="default", metadata={"choices": MODEL_SIZES, "help": "rnn_mtl sizes"}
    )
    clients: int = field(default=32, metadata={"help": "concurrent client threads"})
    requests: int = field(default=5000, metadata={"help": "requests in all"})
    malformed_share: float = field(default=0.1, metadata={"help": "share of malformed requests"})
    candidates: int = field(default=30, metadata={"help": "candidates of the valid request"})
    events: int = field(default=20, metadata={"help": "history events of the valid request"})
    server_workers: int = field(default=2, metadata={"help": "`mlflow models serve -w`"})
    policy: str = "incentive:0.5"
    out: str = field(default=str(OUT_JSON), metadata={"help": "JSON report"})

    def validate(self) -> None:
        for name in ("clients", "requests", "candidates", "server_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 < self.malformed_share < 1:
            raise ValueError("--malformed-share must be in (0, 1)")


def payloads(cfg: LoadConfig, good: dict) -> list[tuple[bool, bytes]]:
    """(malformed?, body) per request: every n-th one bad, the bad cases in turn."""
    every = max(1, round(1 / cfg.malformed_share))
    out, bad_index = [], 0
    for i in range(cfg.requests):
        if i % every == every - 1:
            _, change, params, _ = BAD_REQUESTS[bad_index % len(BAD_REQUESTS)]
            bad_index += 1
            body = {"dataframe_records": [change(copy.deepcopy(good))], "params": params}
            out.append((True, json.dumps(body).encode()))
        else:
            body = {"dataframe_records": [good], "params": {"policy": cfg.policy}}
            out.append((False, json.dumps(body).encode()))
    return out


def hammer(port: int, cfg: LoadConfig, bodies: list[tuple[bool, bytes]]) -> list[tuple]:
    """(malformed?, status, ms) of every request, sent by cfg.clients threads."""
    local = threading.local()
    headers = {"Content-Type": "application/json"}

    def send(item: tuple[bool, bytes]) -> tuple[bool, int, float]:
        malformed, body = item
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        t0 = time.perf_counter()
        try:
            local.conn.request("POST", "/invocations", body=body, headers=headers)
            resp = local.conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            local.conn.close()
            del local.conn
            status = 0  # no answer: counted apart from every HTTP status
        return malformed, status, 1000 * (time.perf_counter() - t0)

    with ThreadPoolExecutor(cfg.clients) as pool:
        return list(pool.map(send, bodies))


def summarize(results: list[tuple], seconds: float) -> dict:
    def lat(rows: list[tuple]) -> dict:
        ms = np.asarray([r[2] for r in rows]) if rows else np.zeros(1)
        return {
            "n": len(rows),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
        }

    statuses: dict[str, int] = {}
    for _, status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    good = [r for r in results if not r[0]]
    bad = [r for r in results if r[0]]
    return {
        "statuses": statuses,
        "server_errors_5xx": sum(1 for r in results if r[1] >= 500),
        "no_answer": sum(1 for r in results if r[1] == 0),
        "valid_not_200": sum(1 for r in good if r[1] != 200),
        "malformed_not_400": sum(1 for r in bad if r[1] != 400),
        "valid": lat(good),
        "malformed": lat(bad),
        "requests_per_s": len(results) / seconds,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    cfg = parse(LoadConfig, argv, description=__doc__.split("\n")[0])
    load_start = load()
    build_cfg = BenchServingConfig(
        data_dir=cfg.data_dir,
        users=cfg.users,
        days=cfg.days,
        max_len=cfg.max_len,
        model_size=cfg.model_size,
    )
    info = build(build_cfg)
    (good,) = make_requests(Path(info["world"]), cfg.candidates, cfg.events)
    bodies = payloads(cfg, good)
    port, log_path = free_port(), Path(cfg.data_dir) / "serve_load.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", info["model_uri"]]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    cmd += ["-w", str(cfg.server_workers)]
    env = mlflow_env(info["tracking_uri"]) | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = start(cmd, log_path, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log_path)
        load_before = load()
        t0 = time.perf_counter()
        results = hammer(port, cfg, bodies)
        report = summarize(results, time.perf_counter() - t0)
    finally:
        stop(proc)
    report |= {
        "command": " ".join(
            ["bench_serving_load.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "args": asdict(cfg),
        "cpus": os.cpu_count(),
        "model_uri": info["model_uri"],
        "load": {"start": load_start, "before_load": load_before, "end": load()},
    }
    ok = report["server_errors_5xx"] == report["no_answer"] == 0
    ok = ok and report["valid_not_200"] == report["malformed_not_400"] == 0
    report["ok"] = ok
    print_table(report)
    Path(cfg.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {cfg.out}")
    return 0 if ok else 1


def print_table(r: dict) -> None:
    print(
        f"{r['args']['clients']} clients, {sum(r['statuses'].values())} requests, "
        f"{r['requests_per_s']:.1f} req/s, statuses {r['statuses']}, load {r['load']}"
    )
    print(f"{'requests':<10} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for kind in ("valid", "malformed"):
        row = r[kind]
        print(f"{kind:<10} {row['n']:>6} {row['p50_ms']:>9.1f} {row['p99_ms']:>9.1f}")
    print(
        f"5xx {r['server_errors_5xx']}, no answer {r['no_answer']}, valid not 200 "
        f"{r['valid_not_200']}, malformed not 400 {r['malformed_not_400']}: "
        f"{'OK' if r['ok'] else 'FAILED'}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
