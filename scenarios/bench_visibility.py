"""Write-to-visible latency under steady load, at default settings.

Background writers keep a steady ingest going (10-record requests at a fixed
rate). A probe measures, one at a time:
- mode B: a write with ``wait_for_visibility`` — the time until the server
  answers that the write is visible (write-to-visible, ack included);
- mode A: a write, then a query with its token — the strict write→query
  latency a client sees.
The baseline in the same run is the plain ack latency (a write without wait).

    python -m scenarios.bench_visibility [--seconds 20] [--rate 2000]
    python -m scenarios.bench_visibility --rate 0 --writers 8 --compare-cadence 0,50
    python -m scenarios.bench_visibility --rate 0 --writers 8 --only-b

``--rate 0`` saturates (the writers send flat out); ``--compare-cadence``
runs more servers in the same invocation, one per busy commit interval
(ADR 0015; 0 turns the adaptive cadence off). The report gives each process's CPU per record.
``--only-b`` probes mode B alone, with each answer's delay after the
``created_at`` of the snapshot it names (the wake-up after a publication).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator

import psutil

from scenarios.harness import (
    EVENTS_TABLE,
    HttpClient,
    Server,
    summary_ms,
    target_line,
    write_report,
)
from scenarios.profile_ingest import group_pids


def _published_at(probe: HttpClient, snapshot_id: int) -> float:
    """The wall-clock time a snapshot was published (its ``created_at``)."""
    probe.conn.request("GET", f"/v1/snapshots/{snapshot_id}", headers=probe.headers)
    body = json.loads(probe.conn.getresponse().read())
    return dt.datetime.fromisoformat(body["created_at"]).timestamp()


def _probe(
    port: int, ids: Iterator[int], until: float, *, only_b: bool = False
) -> dict[str, list[float] | int]:
    """One write at a time: plain ack, wait_for_visibility (B), write then query (A);
    ``only_b``: mode B alone (3x the samples), with each answer's delay after
    the publication of the snapshot it names (same host, same clock)."""
    probe = HttpClient(port)
    ack: list[float] = []
    mode_b: list[float] = []
    after_publish: list[float] = []
    mode_a: list[float] = []
    errors = 0

    def one() -> dict[str, object]:
        i = next(ids)
        return {"idempotency_key": f"p{i}", "payload": {"id": i, "value": 2.0}}

    while time.monotonic() < until:
        if not only_b:
            t0 = time.perf_counter()
            status, body = probe.post("/v1/ingest/events", {"records": [one()]})
            ack.append(time.perf_counter() - t0)
            errors += status != 200
        t0 = time.perf_counter()
        status, body = probe.post(
            "/v1/ingest/events", {"records": [one()], "wait_for_visibility": True}
        )
        mode_b.append(time.perf_counter() - t0)
        answered = time.time()
        errors += status != 200
        if only_b:
            if status == 200:
                after_publish.append(answered - _published_at(probe, body["visible_snapshot_id"]))
            continue
        rec = one()
        t0 = time.perf_counter()
        status, body = probe.post("/v1/ingest/events", {"records": [rec]})
        status2, _ = probe.post(
            "/v1/query",
            {
                "sql": f"select count(*) from events where id = {rec['payload']['id']}",  # type: ignore[index]
                "min_visibility_token": body.get("max_visibility_token"),
            },
        )
        mode_a.append(time.perf_counter() - t0)
        errors += status != 200 or status2 != 200
    return {
        "ack": ack,
        "mode_b": mode_b,
        "after_publish": after_publish,
        "mode_a": mode_a,
        "errors": errors,
    }


# Histograms whose mean over the probe window shows where a commit's time goes.
_PHASES = re.compile(
    r"^duckmesh_(commit_phase_seconds|commit_batch_latency_seconds|write_to_visible_seconds)"
    r'_(sum|count)(?:\{phase="(\w+)"\})? (\S+)$',
    re.MULTILINE,
)


def _phase_totals(server: Server) -> dict[str, tuple[float, float]]:
    """(sum, count) per commit phase, commit and server-side write-to-visible."""
    with server.client() as c:
        text = c.get("/v1/metrics").text
    totals: dict[str, list[float]] = {}
    for name, kind, phase, value in _PHASES.findall(text):
        pair = totals.setdefault(phase or name.removesuffix("_seconds"), [0.0, 0.0])
        pair[kind == "count"] += float(value)
    return {k: (v[0], v[1]) for k, v in totals.items()}


def _phase_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    """Mean ms and count per phase between two scrapes."""
    out = {}
    for key, (total, count) in after.items():
        t0, c0 = before.get(key, (0.0, 0.0))
        if count > c0:
            out[key] = {"mean_ms": round((total - t0) / (count - c0) * 1000, 1), "n": count - c0}
    return out


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    return {role: sum(psutil.Process(pid).cpu_times()[:2]) for role, pid in pids.items()}


def measure(args: argparse.Namespace, env: dict[str, str]) -> dict[str, object]:
    """Background writers (paced at ``--rate``, or flat out with 0) plus the probe."""
    ids = itertools.count()
    with Server(split=False, **env) as server:
        with server.client() as c:
            assert c.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
        assert server.proc is not None
        pids = group_pids(server.proc.pid) or {"all": server.proc.pid}
        stop = time.monotonic() + args.seconds
        sent = [0] * args.writers

        def background(n: int) -> None:
            client = HttpClient(server.port)
            interval = args.writers * 10 / args.rate if args.rate else 0.0
            next_at = time.monotonic()
            while time.monotonic() < stop:
                recs = [
                    {"idempotency_key": f"bg{i}", "payload": {"id": i, "value": 1.0}}
                    for i in (next(ids) for _ in range(10))
                ]
                status, _ = client.post("/v1/ingest/events", {"records": recs})
                sent[n] += 10 if status == 200 else 0
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the load generator, not synchronisation

        threads = [threading.Thread(target=background, args=(n,)) for n in range(args.writers)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # let the steady state settle before sampling
        phases_before = _phase_totals(server)
        cpu_before, began, sent_before = _cpu_s(pids), time.monotonic(), sum(sent)
        probed = _probe(server.port, ids, stop - 1, only_b=args.only_b)
        cpu_after, ended, sent_after = _cpu_s(pids), time.monotonic(), sum(sent)
        phases = _phase_means(phases_before, _phase_totals(server))
        for t in threads:
            t.join()
        rss = server.rss_mib()
        with server.client() as c:
            snapshots = int(c.get("/v1/lag").json()["latest_snapshot_id"] or 0)
        achieved = sum(sent) / args.seconds
    records = max(1, sent_after - sent_before)
    return {
        "env": env,
        "background_records_per_s": round(achieved),
        "ack": summary_ms(probed["ack"]),  # type: ignore[arg-type]
        "write_to_visible_mode_b": summary_ms(probed["mode_b"]),  # type: ignore[arg-type]
        "mode_b_after_publish": summary_ms(probed["after_publish"]),  # type: ignore[arg-type]
        "strict_write_query_mode_a": summary_ms(probed["mode_a"]),  # type: ignore[arg-type]
        "errors": probed["errors"],
        "cpu_us_per_record": {
            role: round((cpu_after[role] - cpu_before[role]) / records * 1e6, 1) for role in pids
        },
        "cpu_cores": {
            role: round((cpu_after[role] - cpu_before[role]) / (ended - began), 2) for role in pids
        },
        "snapshots": snapshots,
        "records_per_snapshot": round(sum(sent) / max(1, snapshots), 1),
        "server_rss_mib": round(rss, 1),
        "commit_phases": phases,
    }


def _print(label: str, results: dict[str, object]) -> None:
    print(f"\n{label}: ~{results['background_records_per_s']:,} records/s in 10-record requests")
    for name, key in (
        ("ack (no wait)", "ack"),
        ("write-to-visible (mode B)", "write_to_visible_mode_b"),
        ("mode B answer after publish", "mode_b_after_publish"),
        ("strict write->query (mode A)", "strict_write_query_mode_a"),
    ):
        s: dict[str, float] = results[key]  # type: ignore[assignment]
        if not s["n"]:
            continue  # not probed (--only-b)
        print(
            f"  {name:<30} n={s['n']:<5} p50={s['p50_ms']:.1f} ms  p95={s['p95_ms']:.1f} ms"
            f"  p99={s['p99_ms']:.1f} ms"
        )
    print(f"  CPU us/record by process: {results['cpu_us_per_record']}")
    print(f"  CPU cores by process: {results['cpu_cores']}")
    print(f"  snapshots: {results['snapshots']}, {results['records_per_snapshot']} records each")
    print(f"  errors: {results['errors']}; server RSS {results['server_rss_mib']:.0f} MiB")
    phases: dict[str, dict[str, float]] = results["commit_phases"]  # type: ignore[assignment]
    print(
        "  mean ms (n): "
        + ", ".join(f"{k} {v['mean_ms']} ({v['n']:.0f})" for k, v in phases.items())
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=2000, help="background records/s (0: flat out)")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument(
        "--compare-cadence",
        default="",
        metavar="MS,MS",
        help="also run with these DUCKMESH_COMMIT_BUSY_INTERVAL_MS (0: back-to-back commits)",
    )
    ap.add_argument(
        "--only-b",
        action="store_true",
        help="probe mode B alone, with each answer's delay after its snapshot's publication",
    )
    args = ap.parse_args()
    configs: dict[str, dict[str, str]] = {"default": {}}
    for cap in filter(None, args.compare_cadence.split(",")):
        configs[f"busy interval {cap} ms"] = {"DUCKMESH_COMMIT_BUSY_INTERVAL_MS": cap}
    runs = {label: measure(args, env) for label, env in configs.items()}
    for label, results in runs.items():
        _print(label, results)
    results = runs["default"]
    print("targets:")
    print(
        target_line(
            "write-to-visible p95 ms",
            results["write_to_visible_mode_b"]["p95_ms"],  # type: ignore[index]
            150 if args.rate == 0 else 250,  # saturated: the product owner's target
            lower_is_better=True,
        )
    )
    if not args.only_b:
        print(
            target_line(
                "mode A p95 ms",
                results["strict_write_query_mode_a"]["p95_ms"],  # type: ignore[index]
                300,
                lower_is_better=True,
            )
        )
    write_report(
        "visibility",
        {"seconds": args.seconds, "target_rate": args.rate, **results, "runs": runs},
    )


if __name__ == "__main__":
    main()
