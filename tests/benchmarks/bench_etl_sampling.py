"""Part of bench_etl.py: memory and CPU of a process tree per stage, and the load average.

``TreeSampler`` samples RSS and CPU of this process and all its descendants every 0.5 s and
attributes them to the stage open at the time; ``LoadSampler`` records the 1-minute load
average over the whole benchmark. See bench_etl.py's docstring for what the numbers mean.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

SAMPLE_S = 0.5
MIB = 2**20

log = logging.getLogger("bench_etl")


class TreeSampler:
    """Samples RSS and CPU of this process and all its descendants, attributed to stages."""

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.root = psutil.Process()
        self.interval = interval
        self.lock = threading.Lock()
        self.current: str | None = None
        self.cpu_seen: dict[tuple[int, float], tuple[str, float]] = {}  # -> (kind, cpu s)
        self.peak: dict[str, int] = {}
        self.peak_procs: dict[str, float] = {}  # RSS MiB of each process at the peak
        self.peak_stage: str | None = None
        self.stages: dict[str, dict] = {}
        self.on_enter = lambda name: None  # e.g. tag the Spark jobs of a stage
        self.on_exit = lambda name: None
        self.progress: Path | None = None  # completed stages are saved here as they end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        rss = {"total": 0, "jvm": 0, "workers": 0, "driver": 0, "other": 0, "workers_pss": 0}
        n_workers = 0
        seen: list[tuple[str, int]] = []  # (process, rss) for the breakdown at the peak
        procs = [self.root]
        with contextlib.suppress(psutil.Error):
            procs += self.root.children(recursive=True)
        for proc in procs:
            try:
                with proc.oneshot():
                    mem = proc.memory_info().rss
                    cpu = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    name = proc.name()
                if proc.pid == self.root.pid:
                    kind = "driver"
                elif "java" in name:
                    kind = "jvm"
                elif "python" in name:  # workers forked from pyspark.daemon share pages: PSS
                    kind = "workers"
                    rss["workers_pss"] += proc.memory_full_info().pss
                    n_workers += 1
                else:  # the spark-submit shell wrapper, or a JVM fork (Hadoop shell commands)
                    kind = "other"  # that has not exec'd yet: its RSS is the JVM's, shared
            except psutil.Error:  # exited between listing and reading
                continue
            rss[kind] += mem
            if kind != "other":
                rss["total"] += mem
            seen.append((f"{kind} {proc.pid} {name}", mem))
            with self.lock:
                self.cpu_seen[key] = (kind, cpu.user + cpu.system)
        # the tree's memory with the workers' shared pages counted once
        rss["total_pss"] = rss["total"] - rss["workers"] + rss["workers_pss"]
        load1 = os.getloadavg()[0]
        with self.lock:
            if rss["total"] > self.peak.get("total", 0):
                self.peak_procs = {k: round(v / MIB, 1) for k, v in seen}
                self.peak_stage = self.current or "(between stages)"
            for k, v in rss.items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            self.peak["n_workers"] = max(self.peak.get("n_workers", 0), n_workers)
            if self.current is not None:
                s = self.stages[self.current]
                s["peak_rss"] = max(s["peak_rss"], rss["total"])
                s["peak_pss"] = max(s["peak_pss"], rss["total_pss"])
                s["n_workers"] = max(s["n_workers"], n_workers)
                s["load1"].append(load1)

    def cpu_total(self, kind: str | None = None) -> float:
        """CPU seconds of every process (of ``kind``) of the tree seen so far (exited ones up to
        their last sample)."""
        self.sample()
        with self.lock:
            return sum(c for k, c in self.cpu_seen.values() if kind in (None, k))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; a stage opened inside another one is part of the outer one."""
        if self.current is not None:
            yield
            return
        with self.lock:
            s = self.stages.setdefault(
                name,
                {
                    "seconds": 0.0,
                    "cpu_s": 0.0,
                    "cpu_workers_s": 0.0,
                    "peak_rss": 0,
                    "peak_pss": 0,
                    "n_workers": 0,
                    "load1": [],
                    "calls": 0,
                },
            )
            self.current = name
        self.on_enter(name)
        cpu0, workers0, t0 = self.cpu_total(), self.cpu_total("workers"), time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            cpu, workers = self.cpu_total() - cpu0, self.cpu_total("workers") - workers0
            with self.lock:
                s["seconds"] += seconds
                s["cpu_s"] += cpu
                s["cpu_workers_s"] += workers
                s["calls"] += 1
                self.current = None
            self.on_exit(name)
            log.info(
                "stage %-28s %7.1f s  cpu %7.1f s (python workers %.1f s)",
                name,
                seconds,
                cpu,
                workers,
            )
            if self.progress is not None:
                partial = [self.result(n, None) for n in self.stages if n != self.current]
                self.progress.write_text(json.dumps({"stages": partial}, indent=2) + "\n")

    def result(self, name: str, rows: int | None) -> dict:
        s = self.stages[name]
        loads = s["load1"] or [os.getloadavg()[0]]
        return {
            "stage": name,
            "rows": rows,
            "seconds": round(s["seconds"], 2),
            "cpu_s": round(s["cpu_s"], 1),
            "cpu_python_workers_s": round(s["cpu_workers_s"], 1),
            "peak_rss_mib": round(s["peak_rss"] / MIB, 1),
            "peak_rss_pss_workers_mib": round(s["peak_pss"] / MIB, 1),
            "max_python_workers": s["n_workers"],
            "load1_mean": round(sum(loads) / len(loads), 2),
        }

    def overall(
        self, name: str, rows: int | None, seconds: float, cpu: float, cpu_workers: float
    ) -> dict:
        """A row for a span covering several stages (peaks over the whole run)."""
        loads = [x for s in self.stages.values() for x in s["load1"]]
        return {
            "stage": name,
            "rows": rows,
            "seconds": round(seconds, 2),
            "cpu_s": round(cpu, 1),
            "cpu_python_workers_s": round(cpu_workers, 1) or 0.0,  # no -0.0
            "peak_rss_mib": round(self.peak.get("total", 0) / MIB, 1),
            "peak_rss_pss_workers_mib": round(self.peak.get("total_pss", 0) / MIB, 1),
            "max_python_workers": self.peak.get("n_workers", 0),
            "load1_mean": round(sum(loads) / max(len(loads), 1), 2),
        }

    def peaks_mib(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        out = {f"peak_{k}_mib": round(v / MIB, 1) for k, v in self.peak.items() if k != "n_workers"}
        out["max_python_workers"] = self.peak.get("n_workers", 0)
        out["at_peak"] = {"stage": self.peak_stage, "rss_mib": self.peak_procs}
        out["python_ru_maxrss_mib"] = round(own / MIB, 1)
        return out


class LoadSampler(threading.Thread):
    """1-minute load average every few seconds over the whole benchmark."""

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.values = interval, [os.getloadavg()[0]]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.values.append(os.getloadavg()[0])

    def summary(self) -> dict:
        self._stop_event.set()
        v = self.values
        return {"min": round(min(v), 2), "mean": round(sum(v) / len(v), 2), "max": round(max(v), 2)}
