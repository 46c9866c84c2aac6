#!/usr/bin/env python3
"""Fleet throughput: one topic, drained by one process and by fleets of 1, 2 and 4 workers.

Every mode reads the same backlog (published once) into fresh tables with its own job id and
reports the time from start until every record is committed, the CPU seconds and peak RSS of
its processes, and the ratio to the single process. Needs the services of infra/local (Kafka,
PostgreSQL; the warehouse and checkpoints are local directories so that the Python S3 test
server is not what is measured) and a release build:

    bash infra/local/up && eval "$(bash infra/local/env)"
    cargo build --release -p recon-pipeline
    python3 bench/fleet/run.py --trips 200000 --workers 0,1,2,4 --out /tmp/fleet-bench.json
    python3 bench/fleet/run.py --scale --trips 50000 --out /tmp/fleet-scale.json

`--workers 0` is the single-process job. Prints one JSON document and a human summary.
"""

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(job, topic, workdir, tasks, interval_ms, protocol="consumer"):
    fleet = (f"\n[fleet]\ntasks = {tasks}\ncommit_interval_ms = {interval_ms // 2}\n"
             f"group_protocol = \"{protocol}\"\n") if tasks else ""
    return f"""job_id = "{job}"
[source]
brokers = "{os.environ['RECON_KAFKA_BOOTSTRAP']}"
topic = "{topic}"
[catalog]
uri = "{os.environ['RECON_PG_CATALOG_URL']}"
warehouse = "{workdir}/warehouse"
namespace = "{job}"
[checkpoint]
store = "{workdir}/checkpoints"
interval_ms = {interval_ms}
{fleet}"""


def wait_rusage(proc, deadline):
    """Waits for `proc` (at most `deadline` seconds) and returns (status, cpu_s, maxrss_kib)."""
    end = time.time() + deadline
    while time.time() < end:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, ru.ru_utime + ru.ru_stime, ru.ru_maxrss
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"process {proc.pid} did not exit within {deadline} s")


def run_single(binary, cfg, logdir, idle_ms):
    log = open(os.path.join(logdir, "single.log"), "w")
    started = time.time()
    p = subprocess.Popen([binary, "run", "--config", cfg, "--exit-when-idle-ms", str(idle_ms)],
                         stdout=log, stderr=subprocess.STDOUT)
    status, cpu, rss = wait_rusage(p, 1800)
    took = time.time() - started - idle_ms / 1000.0
    text = open(log.name).read()
    if status != 0 or "stopped cleanly" not in text:
        raise SystemExit(f"single run failed:\n{text[-3000:]}")
    records = int(re.search(r" records (\d+) ", text).group(1))
    return {"seconds": took, "cpu_seconds": cpu, "peak_rss_mib_max": rss / 1024,
            "peak_rss_mib_sum": rss / 1024, "records": records, "processes": 1}


def committed_records(log_path):
    text = open(log_path).read()
    return sum(int(m) for m in re.findall(r"commit record durable.* records=(\d+)", text))


def run_fleet(binary, cfg, logdir, workers, total):
    procs = []
    started = time.time()
    clog = os.path.join(logdir, f"fleet{workers}-committer.log")
    procs.append(subprocess.Popen([binary, "run", "--config", cfg, "--role", "committer"],
                                  stdout=open(clog, "w"), stderr=subprocess.STDOUT))
    for w in range(workers):
        wl = open(os.path.join(logdir, f"fleet{workers}-worker{w}.log"), "w")
        procs.append(subprocess.Popen([binary, "run", "--config", cfg, "--role", "worker"],
                                      stdout=wl, stderr=subprocess.STDOUT))
    deadline = time.time() + 1800
    while committed_records(clog) < total:
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise SystemExit(f"fleet of {workers} did not commit {total} records; see {logdir}")
        time.sleep(0.1)
    took = time.time() - started
    for p in procs[1:] + procs[:1]:
        p.send_signal(signal.SIGTERM)
        if p is procs[0]:
            pass
    cpu, rss = 0.0, []
    for p in procs[1:]:
        status, c, r = wait_rusage(p, 300)
        cpu += c
        rss.append(r)
    status, c, r = wait_rusage(procs[0], 300)
    cpu += c
    rss.append(r)
    return {"seconds": took, "cpu_seconds": cpu, "peak_rss_mib_max": max(rss) / 1024,
            "peak_rss_mib_sum": sum(rss) / 1024, "records": committed_records(clog),
            "processes": workers + 1}


def count(paths, needle):
    return sum(open(p).read().count(needle) for p in paths)


def durations(paths, needle, field):
    out = []
    for p in paths:
        for line in open(p):
            if needle in line:
                m = re.search(field + r"=(\d+)", line)
                if m:
                    out.append(int(m.group(1)))
    return sorted(out)


def pct(xs, q):
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else None


def run_scale(a):
    """Start and recovery of a fleet on a topic of many partitions, and the committer's commit
    latency with many tasks: 2 workers + committer, K tasks."""
    run = uuid.uuid4().hex[:8]
    topic = f"bench-scale-{run}.events"
    gen = subprocess.run([a.binary, "generate", "--brokers", os.environ["RECON_KAFKA_BOOTSTRAP"],
                          "--topic", topic, "--partitions", str(a.scale_partitions), "--trips",
                          str(a.trips), "--seed", "7"], capture_output=True, text=True)
    total = int(re.search(r"published (\d+) records", gen.stdout + gen.stderr).group(1))
    work = tempfile.mkdtemp(prefix="fleet-scale-")
    cfg = os.path.join(work, "recon.toml")
    with open(cfg, "w") as f:
        f.write(config(f"bs{run}", topic, work, a.scale_tasks, a.interval_ms, a.group_protocol))
    k = a.scale_tasks
    # Traffic keeps flowing while the fleet starts, drains and recovers (the committer's
    # latency is measured on commits that carry records).
    background = subprocess.Popen([a.binary, "generate", "--brokers", os.environ["RECON_KAFKA_BOOTSTRAP"],
                                   "--topic", topic, "--no-create-topic", "--trips", str(a.trips),
                                   "--rate", str(a.scale_rate), "--seed", "8"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    clog = os.path.join(work, "committer.log")
    committer = subprocess.Popen([a.binary, "run", "--config", cfg, "--role", "committer"],
                                 stdout=open(clog, "w"), stderr=subprocess.STDOUT)

    def start_workers(tag):
        logs, procs = [], []
        for w in range(2):
            path = os.path.join(work, f"{tag}-worker{w}.log")
            logs.append(path)
            procs.append(subprocess.Popen([a.binary, "run", "--config", cfg, "--role", "worker"],
                                          stdout=open(path, "w"), stderr=subprocess.STDOUT))
        return logs, procs

    def until(cond, what, limit=900):
        end = time.time() + limit
        while not cond():
            if time.time() > end:
                raise SystemExit(f"{what} not within {limit} s; see {work}")
            time.sleep(0.1)

    started = time.time()
    logs, procs = start_workers("start")
    until(lambda: count(logs, "task's first checkpoint on this worker") >= k, "every task's first checkpoint")
    start_s = time.time() - started
    out, _ = background.communicate(timeout=1800)
    total += int(re.search(r"published (\d+) records", out).group(1))
    until(lambda: committed_records(clog) >= total, "every record committed")
    drain_s = time.time() - started
    for p in procs:
        p.kill()
        p.wait()
    restarted = time.time()
    logs2, procs2 = start_workers("recover")
    until(lambda: count(logs2, "task's first checkpoint on this worker") >= k, "every task's first checkpoint after the kill")
    recover_s = time.time() - restarted
    recovered_ms = durations(logs2, "recovered", "recovery_ms")
    for p in procs2:
        p.send_signal(signal.SIGTERM)
    for p in procs2:
        p.wait(timeout=300)
    committer.send_signal(signal.SIGTERM)
    committer.wait(timeout=300)
    commit_ms = durations([clog], "commit sequence in every table", "duration_ms")
    doc = {"partitions": a.scale_partitions, "tasks": k, "records": total, "workers": 2,
           "background_rate": a.scale_rate,
           "interval_ms": a.interval_ms,
           "start_to_every_task_checkpointed_s": start_s,
           "start_to_every_record_committed_s": drain_s,
           "kill_both_workers_to_every_task_checkpointed_s": recover_s,
           "task_recovery_ms_p50": pct(recovered_ms, 0.5), "task_recovery_ms_p99": pct(recovered_ms, 0.99),
           "committer_commit_ms_p50": pct(commit_ms, 0.5), "committer_commit_ms_p99": pct(commit_ms, 0.99),
           "committer_commits": len(commit_ms), "logs": work}
    out = json.dumps(doc, indent=2)
    print(out)
    if a.out:
        open(a.out, "w").write(out)
    print(f"\n{a.scale_partitions} partitions, K = {k}, 2 workers: every task checkpointed {start_s:.1f} s after start; "
          f"after SIGKILL of both workers and a restart {recover_s:.1f} s (includes the group's 10 s session timeout); "
          f"task recovery p50 {doc['task_recovery_ms_p50']} ms p99 {doc['task_recovery_ms_p99']} ms; "
          f"committer commit p50 {doc['committer_commit_ms_p50']} ms p99 {doc['committer_commit_ms_p99']} ms "
          f"over {len(commit_ms)} commits", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/recon-pipeline"))
    ap.add_argument("--trips", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--workers", default="0,1,2,4")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--interval-ms", type=int, default=2000)
    ap.add_argument("--out")
    ap.add_argument("--group-protocol", default="consumer", choices=["consumer", "classic"])
    ap.add_argument("--scale", action="store_true",
                    help="instead: start, recovery and commit latency with --scale-tasks tasks on --scale-partitions partitions")
    ap.add_argument("--scale-partitions", type=int, default=1000)
    ap.add_argument("--scale-tasks", type=int, default=64)
    ap.add_argument("--scale-rate", type=int, default=10000, help="records/s published while the fleet runs")
    a = ap.parse_args()
    for k in ("RECON_KAFKA_BOOTSTRAP", "RECON_PG_CATALOG_URL"):
        if k not in os.environ:
            raise SystemExit(f'{k} is not set: eval "$(bash infra/local/env)" first')
    if a.scale:
        return run_scale(a)
    run = uuid.uuid4().hex[:8]
    topic = f"bench-fleet-{run}.events"
    gen = subprocess.run([a.binary, "generate", "--brokers", os.environ["RECON_KAFKA_BOOTSTRAP"],
                          "--topic", topic, "--partitions", str(a.partitions), "--trips", str(a.trips),
                          "--seed", "7"], capture_output=True, text=True)
    m = re.search(r"published (\d+) records", gen.stdout + gen.stderr)
    if gen.returncode != 0 or not m:
        raise SystemExit(f"generate failed:\n{gen.stdout}\n{gen.stderr}")
    total = int(m.group(1))
    print(f"published {total} records to {topic}", file=sys.stderr)
    results = []
    for rnd in range(a.rounds):
        for w in [int(x) for x in a.workers.split(",")]:
            work = tempfile.mkdtemp(prefix=f"fleet-bench-{w}-")
            job = f"bf{run}r{rnd}w{w}"
            cfg = os.path.join(work, "recon.toml")
            with open(cfg, "w") as f:
                f.write(config(job, topic, work, a.tasks if w else 0, a.interval_ms, a.group_protocol))
            r = run_single(a.binary, cfg, work, 3000) if w == 0 else run_fleet(a.binary, cfg, work, w, total)
            r.update({"mode": "single" if w == 0 else f"fleet-{w}", "workers": w, "round": rnd,
                      "events_per_s": total / r["seconds"], "logs": work})
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    by_mode = {}
    for r in results:
        by_mode.setdefault(r["mode"], []).append(r)
    summary = {}
    for mode, rs in by_mode.items():
        eps = sorted(x["events_per_s"] for x in rs)
        summary[mode] = {"events_per_s_median": eps[len(eps) // 2],
                         "cpu_seconds_median": sorted(x["cpu_seconds"] for x in rs)[len(rs) // 2],
                         "peak_rss_mib_max": max(x["peak_rss_mib_max"] for x in rs)}
    base = summary.get("single", {}).get("events_per_s_median")
    for mode, s in summary.items():
        s["ratio_to_single"] = s["events_per_s_median"] / base if base else None
    handover = durations([os.path.join(r["logs"], f) for r in results if r["workers"]
                          for f in os.listdir(r["logs"]) if f.endswith(".log") and "worker" in f],
                         "task's first checkpoint on this worker", "handover_ms")
    doc = {"records": total, "partitions": a.partitions, "tasks": a.tasks, "rounds": a.rounds,
           "group_protocol": a.group_protocol,
           "handover_ms": {"n": len(handover), "p50": pct(handover, 0.5), "p99": pct(handover, 0.99)},
           "interval_ms": a.interval_ms, "results": results, "summary": summary}
    out = json.dumps(doc, indent=2)
    print(out)
    if a.out:
        open(a.out, "w").write(out)
    print(f"\n{total} records, {a.partitions} partitions, K = {a.tasks}, medians of {a.rounds} round(s):", file=sys.stderr)
    print(f"  task handover (assignment -> first checkpoint, interval {a.interval_ms} ms): n {len(handover)} "
          f"p50 {pct(handover, 0.5)} ms p99 {pct(handover, 0.99)} ms", file=sys.stderr)
    for mode, s in summary.items():
        ratio = f"{s['ratio_to_single']:.2f}x single" if s["ratio_to_single"] else ""
        print(f"  {mode:8} {s['events_per_s_median']:>10,.0f} records/s  cpu {s['cpu_seconds_median']:7.1f} s"
              f"  peak rss {s['peak_rss_mib_max']:6.0f} MiB  {ratio}", file=sys.stderr)


if __name__ == "__main__":
    main()
