#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh into the report.

usage: report.py OUT_DIR REPO

Reads OUT_DIR/raw/*.jsonl (one JSON object per target and round) and writes OUT_DIR/results.json,
OUT_DIR/results.md, the chart REPO/bench/chart.png (with gnuplot), and the section of
REPO/BENCHMARKS.md between its "bench:gateway" markers, and the policy scenario's section between its
"bench:policy" markers (written whenever that scenario ran, alone or not). Every figure comes from the raw files;
a measurement that is missing or failed is reported as such.
"""

import json
import os
import statistics
import subprocess
import sys

OUT, REPO = sys.argv[1], sys.argv[2]
RAW = os.path.join(OUT, "raw")
BEGIN = "<!-- bench:gateway:begin (written by make bench: edits here are overwritten) -->"
END = "<!-- bench:gateway:end -->"
POLICY_BEGIN = "<!-- bench:policy:begin (written by make bench: edits here are overwritten) -->"
POLICY_END = "<!-- bench:policy:end -->"
TRACING_BEGIN = "<!-- bench:tracing:begin (written by make bench: edits here are overwritten) -->"
TRACING_END = "<!-- bench:tracing:end -->"
PEERS = ["nginx", "haproxy"]
NAMES = {"direct": "direct (one backend)", "nginx": "nginx", "nginx-b": "nginx B (A/A)",
         "haproxy": "HAProxy", "microgate": "microgate", "microgate-policy": "microgate with the AccessPolicy",
         "haproxy-policy": "HAProxy with `jwt_verify` and a stick table",
         "microgate-trace1": "microgate, tracing 1 %", "microgate-trace100": "microgate, tracing 100 %"}


def load(name):
    path = os.path.join(RAW, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_one(name, default=None):
    path = os.path.join(RAW, name)
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    """(median, min, max) or None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return (statistics.median(values), min(values), max(values))


def k(v):
    return "—" if v is None else f"{v / 1000:.1f} k"


def krange(s):
    return "—" if s is None else f"{k(s[0])} [{s[1] / 1000:.1f}–{s[2] / 1000:.1f} k]"


def ratio(s):
    return "—" if s is None else f"**{s[0]:.2f}×** [{s[1]:.2f}–{s[2]:.2f}]"


def us(seconds):
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.2f} ms" if abs(seconds) >= 1e-3 else f"{seconds * 1e6:.0f} µs"


def signed_us(seconds):
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:+.2f} ms" if abs(seconds) >= 1e-3 else f"{seconds * 1e6:+.0f} µs"


def rounds_range(load):
    """The spread of a scale side's rounds of req/s, as " [min–max k]"; empty for one round."""
    rounds = load.get("rps_rounds", [])
    return f" [{min(rounds) / 1000:.1f}–{max(rounds) / 1000:.1f} k]" if len(rounds) > 1 else ""


def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"


def paired(rows, a, b, combine, **match):
    """combine(a's row, b's row) for each round that has both targets, among rows matching
    `match`, in round order; None results are left out."""
    by_round = {}
    for r in rows:
        if all(r.get(f) == v for f, v in match.items()):
            by_round.setdefault(r["round"], {})[r["target"]] = r
    out = []
    for rnd in sorted(by_round):
        x, y = by_round[rnd].get(a), by_round[rnd].get(b)
        if x and y:
            value = combine(x, y)
            if value is not None:
                out.append(value)
    return out


def per_round(rows, key, num, den, **match):
    """Per-round ratios num/den of `key`, for rows matching `match`, in round order."""
    return paired(rows, num, den, lambda a, b: key(a) / key(b) if key(a) is not None and key(b) else None, **match)


def rps(r):
    return r["rps"] or None


def req_per_cpu(r):
    return r["requests"] / r["cpu_seconds"] if r.get("cpu_seconds") else None


def per_request(r, field):
    """A round's `field` (seconds or a count) divided by its requests."""
    return r[field] / r["requests"] if r.get(field) is not None and r.get("requests") else None


def zero_user_ceiling(rows, peer):
    """Per-round bound on microgate/peer throughput if microgate's user time were zero.

    In a saturated round every request costs the machine busy_seconds / requests of CPU (proxy,
    backends, load generator, kernel). Swapping the peer for a proxy that costs only microgate's
    measured kernel time per request leaves the rest unchanged, so throughput could grow by at most
    machine / (machine - peer's CPU + microgate's system CPU)."""
    def ceiling(m, p):
        machine, peer_cpu = per_request(p, "machine_busy_seconds"), per_request(p, "cpu_seconds")
        system = per_request(m, "system_seconds")
        if machine and peer_cpu and system is not None and machine - peer_cpu + system > 0:
            return machine / (machine - peer_cpu + system)
        return None

    return paired(rows, "microgate", peer, ceiling)


machine = load_one("machine.json", {})
preflight = load_one("preflight.json", {})
throughput = load("throughput.jsonl")
latency = load("latency.jsonl")
h2 = load("h2.jsonl")
retry = load("retry.jsonl")
callgrind = load("callgrind.jsonl")
spreads = load("spread.jsonl")
idle = load("idle.jsonl")
tls_new = load("tls_new.jsonl")
tls_keepalive = load("tls_keepalive.jsonl")
tls_h2 = load("tls_h2.jsonl")
tls_idle = load("tls_idle.jsonl")
scale = load("scale.jsonl")
policy = load("policy.jsonl")
tracing = load("tracing.jsonl")
tracing_spans = load("tracing_spans.jsonl")
settings = machine.get("settings", {})
ALL_SCENARIOS = {"throughput", "latency", "h2c", "retries", "callgrind", "tls", "scale", "policy", "tracing"}
# A run of some scenarios only (BENCH_SCENARIOS) writes its own results, not the published ones.
partial = set(settings.get("scenarios", ALL_SCENARIOS)) != ALL_SCENARIOS
versions = machine.get("versions", {})
results = {"machine": machine, "preflight": preflight, "throughput": {}, "latency": {}, "h2": {},
           "retry": {}, "callgrind": {}, "spread": spreads, "idle": idle, "targets": [],
           "tls": {"new": {}, "keepalive": {}, "h2": {}, "idle": {}}, "scale": {}, "policy": {}, "tracing": {}}
md = []

# ---- throughput
workers_seen = sorted({r["workers"] for r in throughput})
for w in workers_seen:
    rows = [r for r in throughput if r["workers"] == w]
    targets = [t for t in ["direct", "nginx", "nginx-b", "haproxy", "microgate"] if any(r["target"] == t for r in rows)]
    per_target = {}
    for t in targets:
        tr = [r for r in rows if r["target"] == t]
        per_target[t] = {
            "rps": spread([r["rps"] for r in tr]),
            "req_per_cpu_second": spread([req_per_cpu(r) for r in tr]) if t != "direct" else None,
            "user_us": med([per_request(r, "user_seconds") for r in tr]),
            "system_us": med([per_request(r, "system_seconds") for r in tr]),
            "machine_us": med([per_request(r, "machine_busy_seconds") for r in tr]),
            "segments_per_request": med([per_request(r, "tcp_segments") for r in tr]),
            "rss_kib": max(r["rss_kib"] for r in tr),
            "hwm_kib": max(r["hwm_kib"] for r in tr),
            "non_2xx": sum(r["non_2xx"] for r in tr),
            "socket_errors": sum(r["socket_errors"] for r in tr),
            "rounds": len(tr),
        }
    ratios = {}
    pairs = [("microgate", "nginx"), ("microgate", "haproxy"), ("microgate", "direct"),
             ("nginx", "direct"), ("haproxy", "direct"), ("haproxy", "nginx"), ("nginx-b", "nginx")]
    for a, b in pairs:
        if a in targets and b in targets:
            ratios[f"{a}/{b}"] = {"rps": spread(per_round(rows, rps, a, b, workers=w))}
            if b != "direct":
                ratios[f"{a}/{b}"]["req_per_cpu_second"] = spread(per_round(rows, req_per_cpu, a, b, workers=w))
    ceiling = {peer: spread(zero_user_ceiling(rows, peer)) for peer in PEERS if peer in targets and "microgate" in targets}
    results["throughput"][w] = {"targets": per_target, "ratios": ratios, "zero_user_ceiling": ceiling,
                                "loadavg": [(r["round"], r["target"], r["loadavg"]) for r in rows]}

# ---- latency: per-round differences from direct; rounds with a disturbed direct p99 dropped
dropped = []
lat_targets = [t for t in ["direct", "nginx", "nginx-b", "haproxy", "microgate"] if any(r["target"] == t for r in latency)]
if latency:
    direct = {r["round"]: r for r in latency if r["target"] == "direct"}
    direct_p99_median = med([r["p99"] for r in direct.values()])
    kept = {rnd for rnd, r in direct.items() if direct_p99_median is None or r["p99"] <= 2 * direct_p99_median}
    dropped = sorted(set(direct) - kept)
    for t in lat_targets:
        tr = [r for r in latency if r["target"] == t and r["round"] in kept]
        entry = {q: med([r[q] for r in tr]) for q in ("p50", "p99", "p99.9")}
        entry["success_rate"] = min((r["success_rate"] for r in tr), default=None)
        entry["non_200"] = sum(r["non_200"] for r in tr)
        entry["errors"] = sum(r["errors"] for r in tr)
        entry["rps"] = med([r["rps"] for r in tr])
        if t != "direct":
            for q in ("p50", "p99", "p99.9"):
                entry[f"added_{q}"] = med([r[q] - direct[r["round"]][q] for r in tr])
            entry["cpu_us_per_request"] = med([r["cpu_seconds"] / (r["rps"] * settings.get("seconds", 1)) * 1e6
                                               for r in tr if r["rps"]])
        results["latency"][t] = entry
    # Paired per-round differences in p99: the A/A pair (two identical nginx) is the noise floor
    # any other difference has to clear before it says something.
    p99_pairs = {}
    for a, b in [("microgate", "nginx"), ("microgate", "haproxy"), ("nginx-b", "nginx")]:
        diffs = paired([r for r in latency if r["round"] in kept], a, b, lambda x, y: x["p99"] - y["p99"])
        if diffs:
            p99_pairs[f"{a} − {b}"] = spread(diffs)
    results["latency_paired_p99"] = p99_pairs
    results["latency_dropped_rounds"] = dropped
    results["latency_direct_p99_median"] = direct_p99_median

# ---- h2
for t in ["nginx", "haproxy", "microgate"]:
    tr = [r for r in h2 if r["target"] == t]
    if tr:
        results["h2"][t] = {"rps": spread([r["rps"] for r in tr]),
                            # h2load's own counts: failed and errored requests, and answers other than 2xx.
                            "failed": sum(r["failed"] + r["errored"] + max(0, r["succeeded"] - r["status_2xx"]) for r in tr),
                            "requests": sum(r["requests"] for r in tr),
                            "rss_kib": max(r["rss_kib"] for r in tr), "hwm_kib": max(r["hwm_kib"] for r in tr),
                            "req_per_cpu_second": spread([r["requests"] / r["cpu_seconds"] for r in tr if r["cpu_seconds"]])}
h2_ratios = {}
for peer in PEERS:
    if peer in results["h2"] and "microgate" in results["h2"]:
        h2_ratios[f"microgate/{peer}"] = spread(per_round(h2, rps, "microgate", peer))
results["h2_ratios"] = h2_ratios

# ---- TLS
TLS_TARGETS = ["nginx", "haproxy", "microgate"]


def handshakes(r):
    return r["completed"] or None


def handshakes_per_cpu(r):
    return r["completed"] / r["cpu_seconds"] if r.get("cpu_seconds") else None


for certificate in ["ecdsa", "rsa"]:
    rows = [r for r in tls_new if r["certificate"] == certificate]
    if not rows:
        continue
    per_target = {}
    for t in TLS_TARGETS:
        tr = [r for r in rows if r["target"] == t]
        if not tr:
            continue
        completed = sum(r["completed"] for r in tr)
        per_target[t] = {
            "rate": spread([r["rate"] for r in tr]),
            "per_cpu_second": spread([handshakes_per_cpu(r) for r in tr]),
            "user_us": med([r["user_seconds"] / r["completed"] for r in tr if r["completed"]]),
            "system_us": med([r["system_seconds"] / r["completed"] for r in tr if r["completed"]]),
            "machine_us": med([r["machine_busy_seconds"] / r["completed"] for r in tr if r["completed"]]),
            "completed": completed,
            "full": sum(r["full_handshakes"] + r["full_handshakes_after_retry"] for r in tr),
            "resumed": sum(r["resumed"] for r in tr),
            "accepted": sum(r["accepted_connections"] for r in tr),
            "unclean_close": sum(r["closed_without_close_notify"] for r in tr),
            "failed": sum(sum(r["failed"].values()) for r in tr),
            "failures": sorted({r["first_failure"] for r in tr if r.get("first_failure")}),
            "hwm_kib": max(r["hwm_kib"] for r in tr),
            "negotiated": next(({"cipher": r["cipher"], "group": r["group"], "alpn": r["alpn"]} for r in tr if r.get("cipher")), None),
            "rounds": len(tr),
        }
    ratios = {}
    for peer in PEERS:
        if peer in per_target and "microgate" in per_target:
            ratios[f"microgate/{peer}"] = {
                "rate": spread(per_round(rows, handshakes, "microgate", peer, certificate=certificate)),
                "per_cpu_second": spread(per_round(rows, handshakes_per_cpu, "microgate", peer, certificate=certificate)),
            }
    results["tls"]["new"][certificate] = {"targets": per_target, "ratios": ratios}

if tls_keepalive:
    per_target = {}
    for t in TLS_TARGETS:
        tr = [r for r in tls_keepalive if r["target"] == t]
        if tr:
            per_target[t] = {
                "rps": spread([r["rps"] for r in tr]),
                "req_per_cpu_second": spread([req_per_cpu(r) for r in tr]),
                "user_us": med([per_request(r, "user_seconds") for r in tr]),
                "system_us": med([per_request(r, "system_seconds") for r in tr]),
                "hwm_kib": max(r["hwm_kib"] for r in tr),
                "non_2xx": sum(r["non_2xx"] for r in tr),
                "socket_errors": sum(r["socket_errors"] for r in tr),
            }
    ratios = {f"microgate/{peer}": {"rps": spread(per_round(tls_keepalive, rps, "microgate", peer)),
                                    "req_per_cpu_second": spread(per_round(tls_keepalive, req_per_cpu, "microgate", peer))}
              for peer in PEERS if peer in per_target and "microgate" in per_target}
    results["tls"]["keepalive"] = {"targets": per_target, "ratios": ratios}

if tls_h2:
    per_target = {}
    for t in TLS_TARGETS:
        tr = [r for r in tls_h2 if r["target"] == t]
        if tr:
            per_target[t] = {
                "rps": spread([r["rps"] for r in tr]),
                "req_per_cpu_second": spread([r["requests"] / r["cpu_seconds"] for r in tr if r["cpu_seconds"]]),
                "failed": sum(r["failed"] + r["errored"] + max(0, r["succeeded"] - r["status_2xx"]) for r in tr),
                "requests": sum(r["requests"] for r in tr),
                "hwm_kib": max(r["hwm_kib"] for r in tr),
                "protocols": sorted({r.get("protocol") or "?" for r in tr}),
            }
    ratios = {f"microgate/{peer}": spread(per_round(tls_h2, rps, "microgate", peer))
              for peer in PEERS if peer in per_target and "microgate" in per_target}
    results["tls"]["h2"] = {"targets": per_target, "ratios": ratios}

for r in tls_idle:
    results["tls"]["idle"][r["target"]] = r

for r in scale:
    results["scale"].setdefault(r["kind"], {})[r["target"]] = r

# ---- policy: the same microgate route with and without an AccessPolicy, and the peers without one
POLICY_TARGETS = ["nginx", "haproxy", "haproxy-policy", "microgate", "microgate-policy"]
if policy:
    per_target = {}
    for t in POLICY_TARGETS:
        tr = [r for r in policy if r["target"] == t]
        if tr:
            per_target[t] = {
                "rps": spread([r["rps"] for r in tr]),
                "req_per_cpu_second": spread([req_per_cpu(r) for r in tr]),
                "user_us": med([per_request(r, "user_seconds") for r in tr]),
                "system_us": med([per_request(r, "system_seconds") for r in tr]),
                "hwm_kib": max(r["hwm_kib"] for r in tr),
                "p99": [r["p99"] for r in tr],
                "requests": sum(r["requests"] for r in tr),
                "non_2xx": sum(r["non_2xx"] for r in tr),
                "socket_errors": sum(r["socket_errors"] for r in tr),
                "rounds": len(tr),
            }
    ratios = {}
    for a, b in [("microgate-policy", "microgate"), ("haproxy-policy", "haproxy"), ("microgate-policy", "haproxy-policy"),
                 ("microgate-policy", "nginx"), ("microgate-policy", "haproxy"), ("microgate", "nginx"), ("microgate", "haproxy")]:
        if a in per_target and b in per_target:
            ratios[f"{a}/{b}"] = {"rps": spread(per_round(policy, rps, a, b)),
                                  "req_per_cpu_second": spread(per_round(policy, req_per_cpu, a, b)),
                                  "rounds": len(per_round(policy, rps, a, b))}
    results["policy"] = {"targets": per_target, "ratios": ratios,
                         "loadavg": sorted({(r["round"], r["loadavg"]) for r in policy})}

# ---- tracing: the same gateway without tracing, and sampling 1 % and 100 % of requests
TRACING_TARGETS = ["microgate", "microgate-trace1", "microgate-trace100"]
if tracing:
    per_target = {}
    for t in TRACING_TARGETS:
        tr = [r for r in tracing if r["target"] == t]
        if tr:
            per_target[t] = {
                "rps": spread([r["rps"] for r in tr]),
                "req_per_cpu_second": spread([req_per_cpu(r) for r in tr]),
                "user_us": med([per_request(r, "user_seconds") for r in tr]),
                "system_us": med([per_request(r, "system_seconds") for r in tr]),
                "hwm_kib": max(r["hwm_kib"] for r in tr),
                "p99": [r["p99"] for r in tr],
                "requests": sum(r["requests"] for r in tr),
                "non_2xx": sum(r["non_2xx"] for r in tr),
                "socket_errors": sum(r["socket_errors"] for r in tr),
                "rounds": len(tr),
            }
    ratios = {}
    for a in ["microgate-trace1", "microgate-trace100"]:
        if a in per_target and "microgate" in per_target:
            ratios[f"{a}/microgate"] = {"rps": spread(per_round(tracing, rps, a, "microgate")),
                                        "req_per_cpu_second": spread(per_round(tracing, req_per_cpu, a, "microgate")),
                                        "rounds": len(per_round(tracing, rps, a, "microgate"))}
    results["tracing"] = {"targets": per_target, "ratios": ratios, "spans": tracing_spans,
                          "loadavg": sorted({(r["round"], r["loadavg"]) for r in tracing})}

# ---- retries
for t in ["direct", "nginx", "haproxy", "microgate"]:
    tr = [r for r in retry if r["target"] == t]
    if not tr:
        continue
    requests = sum(r["requests"] for r in tr)
    upstream = [sum(r["upstream"][i] for r in tr) for i in range(3)]
    results["retry"][t] = {
        "rps": spread([r["rps"] for r in tr]),
        "requests": requests,
        "non_2xx": sum(r["non_2xx"] for r in tr),
        "socket_errors": sum(r["socket_errors"] for r in tr),
        "success_rate": 1 - sum(r["non_2xx"] + r["socket_errors"] for r in tr) / requests if requests else None,
        "upstream": upstream,
        "upstream_per_client": sum(upstream) / requests if requests else None,
        "failing_share": upstream[2] / sum(upstream) if sum(upstream) else None,
        "gateway_retries": sum(r["gateway_retries"] for r in tr),
        "budget_exhausted": sum(r["budget_exhausted"] for r in tr),
        "ejections": sum(r.get("ejections", 0) for r in tr),
    }

# ---- callgrind
for r in callgrind:
    per = r["per_request"]
    results["callgrind"][r["proxy"]] = {"per_request": med(per) if per else None, "intervals": per,
                                        "requests": r["requests"], "success_rate": r["success_rate"]}

# ---- where microgate's instructions go (the second callgrind interval), per request
def profile(path, requests, top=20):
    """The `top` heaviest functions of a callgrind_annotate listing, in instructions per request.

    Frames that were on the stack when the interval was dumped (thread start, the runtime's worker
    loop) are listed with the whole interval's cost; they say nothing and are left out."""
    if not os.path.exists(path):
        return []
    rows, total = [], None
    for line in open(path):
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].replace(",", "").isdigit():
            continue
        ir = int(parts[0].replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = ir
            continue
        where = parts[2].split(")", 1)[-1].strip() if parts[1].startswith("(") and not parts[1].endswith(")") else parts[2].strip()
        if total and ir >= 0.995 * total:
            continue
        name = where.rsplit(" [", 1)[0]
        name = name.split(":", 1)[1] if ":" in name and not name.startswith(":") else name
        rows.append((name, ir / requests, ir / total if total else None))
        if len(rows) == top:
            break
    return rows


if "microgate" in results["callgrind"]:
    n = results["callgrind"]["microgate"]["requests"]
    for mode in ("exclusive", "inclusive"):
        results["callgrind"]["microgate"][f"top_{mode}"] = profile(
            os.path.join(OUT, "callgrind", f"microgate-{mode}.txt"), n)

# ---- the bar (DESIGN §7)
def verdict(ok):
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


bar = []
for w, t in results["throughput"].items():
    for peer in PEERS:
        s = t["ratios"].get(f"microgate/{peer}", {}).get("rps")
        bar.append((f"throughput ≥ 1.1× {peer}, {w} worker{'s' if w != 1 else ''}", ratio(s), verdict(None if s is None else s[0] >= 1.1)))
cg = results["callgrind"]
if "microgate" in cg and "nginx" in cg and cg["microgate"]["per_request"] and cg["nginx"]["per_request"]:
    m, n = cg["microgate"]["per_request"], cg["nginx"]["per_request"]
    bar.append(("instructions per request ≤ nginx's", f"{m / 1000:.1f} k vs {n / 1000:.1f} k ({m / n:.2f}×)", verdict(m <= n)))
else:
    bar.append(("instructions per request ≤ nginx's", "not measured", "n/a"))
lat = results["latency"]
if "microgate" in lat and "nginx" in lat:
    m, n = lat["microgate"]["added_p99"], lat["nginx"]["added_p99"]
    p99_pairs = results.get("latency_paired_p99", {})
    pm, aa = p99_pairs.get("microgate − nginx"), p99_pairs.get("nginx-b − nginx")
    detail = ""
    if pm and aa:
        detail = (f"; per round microgate − nginx {signed_us(pm[0])} [{signed_us(pm[1])} – {signed_us(pm[2])}], "
                  f"A/A nginx B − nginx [{signed_us(aa[1])} – {signed_us(aa[2])}]")
    bar.append((f"added p99 at {settings.get('rate', '?')} req/s ≤ nginx's", f"{signed_us(m)} vs {signed_us(n)}{detail}",
                verdict(None if m is None or n is None else m <= n)))
rt = results["retry"].get("microgate")
if rt:
    within = rt["budget_exhausted"] == 0 or rt["gateway_retries"] <= 0.2 * rt["requests"] + 10 * settings.get("seconds", 0) * settings.get("extra_rounds", 0)
    bar.append(("failing backend: ≥ 99.9 % client success, retries within budget",
                f"{rt['success_rate'] * 100:.3f} %, {rt['gateway_retries']} retries for {rt['requests']} requests "
                f"({rt['gateway_retries'] / rt['requests'] * 100:.1f} %), budget refused {rt['budget_exhausted']}",
                verdict(rt["success_rate"] >= 0.999 and within)))
if idle:
    rss = idle[0]["microgate_idle_kib"][0]
    bar.append(("gateway idle RSS ≤ 16 MiB", mib(rss), verdict(rss <= 16 * 1024)))
for peer in PEERS:
    s = h2_ratios.get(f"microgate/{peer}")
    if s and peer == "haproxy":
        bar.append((f"h2c req/s ≥ 1.0× {peer}", ratio(s), verdict(s[0] >= 1.0)))
for certificate, name in [("ecdsa", "ECDSA P-256"), ("rsa", "RSA 2048")]:
    for peer in PEERS:
        s = results["tls"]["new"].get(certificate, {}).get("ratios", {}).get(f"microgate/{peer}", {}).get("rate")
        if s:
            bar.append((f"new TLS connections/s ({name}) ≥ 1.2× {peer}", ratio(s), verdict(s[0] >= 1.2)))
for peer in PEERS:
    s = results["tls"]["keepalive"].get("ratios", {}).get(f"microgate/{peer}", {}).get("rps") if tls_keepalive else None
    if s:
        bar.append((f"keep-alive req/s over TLS ≥ 1.0× {peer}", ratio(s), verdict(s[0] >= 1.0)))
for peer in PEERS:
    s = results["tls"]["h2"].get("ratios", {}).get(f"microgate/{peer}") if tls_h2 else None
    if s:
        bar.append((f"h2 over TLS req/s ≥ 1.0× {peer}", ratio(s), verdict(s[0] >= 1.0)))
tls_mem = {t: e.get("bytes_per_connection") for t, e in results["tls"]["idle"].items()}
if tls_mem.get("microgate") is not None and all(tls_mem.get(p) is not None for p in PEERS):
    m = tls_mem["microgate"]
    bar.append(("memory per idle TLS connection < nginx's and HAProxy's",
                f"{m / 1024:.1f} KiB vs " + ", ".join(f"{tls_mem[p] / 1024:.1f} KiB ({NAMES[p]})" for p in PEERS),
                verdict(all(m < tls_mem[p] for p in PEERS))))
for kind, label in [("plain", "plain HTTP/1.1"), ("tls", "TLS"), ("h2", "h2c")]:
    sc = results["scale"].get(kind, {})
    mem = {t: (e.get("bytes_per_connection") if e.get("still_open") else None) for t, e in sc.items()}
    if mem.get("microgate") is not None and all(mem.get(p) is not None for p in PEERS):
        m = mem["microgate"]
        n_ = sc["microgate"]["still_open"]
        bar.append((f"memory per idle {label} connection ({n_} held) < nginx's and HAProxy's",
                    f"{m / 1024:.2f} KiB vs " + ", ".join(f"{mem[p] / 1024:.2f} KiB ({NAMES[p]})" for p in PEERS),
                    verdict(all(m < mem[p] for p in PEERS))))
    e = sc.get("microgate")
    if e and kind != "h2" and e.get("load_without") and e.get("load_beside"):
        w, b = e["load_without"]["rps"], e["load_beside"]["rps"]
        bar.append((f"throughput beside {e['still_open']} idle {label} connections within 10 % of without",
                    f"{b / 1000:.1f} k{rounds_range(e['load_beside'])} vs {w / 1000:.1f} k{rounds_range(e['load_without'])} req/s, "
                    f"medians of {len(e['load_beside'].get('rps_rounds', [b]))} round(s) ({b / w:.2f}×)" if w else "—",
                    verdict(bool(w) and b >= 0.9 * w)))
pol = results["policy"].get("ratios", {}).get("microgate-policy/microgate", {}).get("rps")
if pol:
    bar.append(("AccessPolicy (JWT ES256 + rate limit) costs ≤ 10 % of throughput", ratio(pol), verdict(pol[0] >= 0.9)))
results["targets"] = bar

with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=str)

# ---- chart data and chart
chart = os.path.join(REPO, "bench", "chart.png")
tp_dat = os.path.join(OUT, "chart-throughput.dat")
lat_dat = os.path.join(OUT, "chart-latency.dat")
with open(tp_dat, "w") as f:
    f.write("target " + " ".join(f'"{w} worker{"s" if w != 1 else ""}"' for w in workers_seen) + "\n")
    for t in ["direct", "nginx", "haproxy", "microgate"]:
        vals = []
        for w in workers_seen:
            s = results["throughput"][w]["targets"].get(t, {}).get("rps")
            vals.append(f"{s[0] / 1000:.2f}" if s else "NaN")
        f.write(f"{t} " + " ".join(vals) + "\n")
with open(lat_dat, "w") as f:
    f.write("target p50 p99 p99.9\n")
    for t in [t for t in lat_targets if t != "nginx-b"]:
        e = lat[t]
        f.write(f"{t} " + " ".join(f"{e[q] * 1000:.3f}" if e.get(q) is not None else "NaN" for q in ("p50", "p99", "p99.9")) + "\n")
chart_ok = False
if (throughput or latency) and not partial:
    try:
        subprocess.run(["gnuplot", "-e", f"tp='{tp_dat}'; lat='{lat_dat}'; out='{chart}'; rate='{settings.get('rate', '?')}'; "
                        f"ncol={1 + len(workers_seen)}",
                        os.path.join(REPO, "bench", "chart.gp")], check=True)
        chart_ok = True
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"report: the chart failed: {error}", file=sys.stderr)

# ---- markdown
v = machine.get("versions", {})
md.append("## Gateway against nginx and HAProxy (`make bench`)\n")
md.append(f"Run {machine.get('date', '?')} on {machine.get('nproc', '?')} CPUs ({machine.get('cpu', '?')}), "
          f"{machine.get('memory', '?')}, {machine.get('os', '?')}, kernel {machine.get('kernel', '?')}. "
          f"Load average before the run: {machine.get('loadavg_before', '?')}; "
          f"CPU busy with other work before the first measurement: {preflight.get('busy_percent_before', '?')} %.\n")
busy = preflight.get("busy_percent_before")
if isinstance(busy, (int, float)) and busy > 10:
    md.append(f"**The machine was not quiet: {busy} % of its CPU was busy before the run started** (other work, "
              "not the bench). Every figure below shares the CPUs with that work; treat the ratios as noisy and "
              "rerun on a quiet machine before drawing conclusions. The instruction counts are not affected.\n")
md.append("| microgate | nginx | HAProxy | wrk | oha | h2load | valgrind | rustc | tokio | hyper | hyper-util |")
md.append("|---|---|---|---|---|---|---|---|---|---|---|")
md.append("| " + " | ".join(v.get(x, "?") for x in ["microgate", "nginx", "haproxy", "wrk", "oha", "h2load", "valgrind", "rustc", "tokio", "hyper", "hyper-util"]) + " |\n")
md.append(
    "**Setup.** Everything on loopback, on the same machine. Three identical backends, each one nginx worker "
    "answering `200 ok` (`bench/peers/backend.conf`), on 127.0.0.2–4, one port; a fourth on 127.0.0.5 answers 503 "
    "to 20 % of requests. In front of them, configured equivalently (round robin over the three, pooled keep-alive "
    "upstream connections, no access log, the same number of workers): nginx (`bench/peers/nginx.conf`, "
    "`worker_processes`), HAProxy (`bench/peers/haproxy.cfg`, `nbthread`) and `microgate gateway` "
    "(`bench/microgate.yaml`, `--workers`, plus one thread for its Kubernetes watches), which reads the Gateway, the Microservices and their Pods from "
    "the local control plane. The bench creates the Pods and reports them Ready with the backends' addresses as pod "
    "IPs (no controller, no kubelet). Proxy CPU is utime + stime of all the proxy's processes (`/proc/PID/stat`); "
    "memory is VmRSS at the end of a round and VmHWM, summed over its processes. The load generators run on the same "
    f"2 CPUs as everything else; {settings.get('connections', '?')} connections throughout.\n")
md.append("**Commands.** `make bench` (knobs: `BENCH_ROUNDS`, `BENCH_SECONDS`, `BENCH_WORKERS`, `BENCH_RATE`, "
          "`BENCH_CALLGRIND_N`, `BENCH_QUICK=1`); this run: "
          f"{settings.get('rounds', '?')} rounds × {settings.get('seconds', '?')} s, workers {settings.get('workers', '?')}, "
          f"order reversed every other round. Per round:\n")
c, s_ = settings.get("connections", "?"), settings.get("seconds", "?")
md.append("```")
md.append(f"wrk -t2 -c{c} -d{s_}s --latency URL                                      # throughput")
md.append(f"oha --no-tui -z {s_}s -c {c} -q {settings.get('rate', '?')} --latency-correction --output-format json URL   # latency")
md.append(f"h2load -t2 -c{c} -m10 -D {s_} --warm-up-time=1 URL                        # h2c, prior knowledge")
md.append(f"valgrind --tool=callgrind --dump-instr=no PROXY   # + oha -n {settings.get('callgrind_requests', '?')} -c 16, twice, callgrind_control --dump after each")
md.append("```\n")

md.append("### Against the bar (DESIGN §7)\n")
md.append("| target | measured | |")
md.append("|---|---|---|")
for name, measured, ok in bar:
    md.append(f"| {name} | {measured} | {ok} |")
md.append("\nEndpoint propagation and operator memory are in the discovery section below. "
          "Ratios are medians of per-round ratios [min–max] in this run; see the A/A row for the noise floor.\n")

for w, t in results["throughput"].items():
    md.append(f"### Throughput, small responses, keep-alive, {w} worker{'s' if w != 1 else ''}\n")
    md.append("| target | req/s median [min–max] | req per proxy CPU-second | proxy CPU per request: user + system | machine CPU per request | TCP segments per request | RSS (end of round, max) | peak RSS | non-2xx / socket errors |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for name, e in t["targets"].items():
        split = "—" if name == "direct" or e.get("user_us") is None else f"{e['user_us'] * 1e6:.1f} + {e['system_us'] * 1e6:.1f} µs"
        machine_cpu = "—" if e.get("machine_us") is None else f"{e['machine_us'] * 1e6:.1f} µs"
        segments = "—" if e.get("segments_per_request") is None else f"{e['segments_per_request']:.2f}"
        md.append(f"| {NAMES[name]} | {krange(e['rps'])} | {krange(e['req_per_cpu_second']) if e['req_per_cpu_second'] else '—'} | "
                  f"{split} | {machine_cpu} | {segments} | "
                  f"{mib(e['rss_kib'])} | {mib(e['hwm_kib'])} | {e['non_2xx']} / {e['socket_errors']} |")
    md.append("")
    ceiling = {p: c for p, c in t.get("zero_user_ceiling", {}).items() if c}
    if ceiling:
        md.append("Proxy CPU is split into user and system (kernel) time from `/proc/PID/stat`; machine CPU is every "
                  "CPU's busy time in `/proc/stat` over the round, divided by its requests (proxy, backends, load "
                  "generator and kernel together); TCP segments are the machine's `OutSegs` (`/proc/net/snmp`) per "
                  "request. Most of each proxy's CPU is kernel time, and much the same work for all three: a proxied "
                  "request is two reads, two writes and four segments on loopback (the segment column), and sending a "
                  "segment runs the receiver's TCP input and wake-up on the sender's CPU. A proxy's own code shows "
                  "in its user time. "
                  "**Ceiling at zero user time**: if microgate spent no user time at all and everything else cost "
                  "what it did in the peer's round, its throughput could be at most " +
                  " and ".join(f"{ratio(c)} {p}'s" for p, c in ceiling.items()) +
                  " (per round: machine CPU per request ÷ (that − the peer's CPU per request + microgate's system "
                  "CPU per request)).\n")
    md.append("| per-round ratio | req/s | req per CPU-second |")
    md.append("|---|---|---|")
    for name, e in t["ratios"].items():
        md.append(f"| {name} | {ratio(e['rps'])} | {ratio(e.get('req_per_cpu_second')) if 'req_per_cpu_second' in e else '—'} |")
    md.append("")
    loads = sorted({(r, l) for r, _, l in t["loadavg"]})
    md.append("Load average per round (1/5/15 min, after its last target): " +
              "; ".join(f"{rnd}: {l}" for rnd, l in sorted(dict(loads).items())) + "\n")

if lat:
    md.append(f"### Latency at a fixed {settings.get('rate', '?')} req/s (open loop, coordinated-omission corrected)\n")
    note = "Added latency = the proxy's percentile minus direct's in the same round; medians over rounds."
    if dropped:
        note += (f" Rounds dropped because direct p99 exceeded 2× its median ({us(results['latency_direct_p99_median'])}): "
                 f"{', '.join(map(str, dropped))}.")
    else:
        note += " No round was dropped (rule: direct p99 > 2× its median)."
    p99_pairs = results.get("latency_paired_p99", {})
    if p99_pairs:
        note += (" Paired p99 differences, per round, median [min–max]: " +
                 "; ".join(f"{name.replace('nginx-b', 'nginx B')}: {signed_us(s[0])} [{signed_us(s[1])} – {signed_us(s[2])}]"
                           for name, s in p99_pairs.items()) +
                 ". The nginx B − nginx pair is two identical proxies: its spread is the noise floor.")
    md.append(note + "\n")
    md.append("| target | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | proxy CPU per request | success |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for t in lat_targets:
        e = lat[t]
        md.append(f"| {NAMES[t]} | {us(e['p50'])} | {us(e['p99'])} | {us(e['p99.9'])} | "
                  f"{signed_us(e.get('added_p50')) if t != 'direct' else '—'} | {signed_us(e.get('added_p99')) if t != 'direct' else '—'} | "
                  f"{signed_us(e.get('added_p99.9')) if t != 'direct' else '—'} | "
                  f"{(str(round(e['cpu_us_per_request'])) + ' µs') if e.get('cpu_us_per_request') else '—'} | "
                  f"{e['success_rate'] * 100:.2f} % ({e['non_200']} non-200, {e['errors']} errors) |")
    md.append("")
else:
    md.append("### Latency\n\nNot measured in this run.\n")

md.append("### Instructions per proxied request (callgrind, 1 worker)\n")
if cg:
    md.append("User-space instructions only (the kernel's share is not counted). Each figure is one interval's "
              "instruction count divided by its requests; the two intervals show the repeatability.\n")
    md.append("| proxy | instructions / request | intervals | client success |")
    md.append("|---|---|---|---|")
    for p in ["nginx", "haproxy", "microgate"] + (["microgate-policy"] if "microgate-policy" in cg else []):
        if p in cg and cg[p]["per_request"]:
            e = cg[p]
            ok = min(e["success_rate"]) * 100 if e["success_rate"] else 0
            md.append(f"| {NAMES[p]} | **{e['per_request'] / 1000:.1f} k** | "
                      f"{', '.join(f'{x / 1000:.2f} k' for x in e['intervals'])} | {ok:.2f} % |")
        else:
            md.append(f"| {NAMES[p]} | failed | | |")
    md.append("")
else:
    md.append("Not measured in this run (BENCH_CALLGRIND_N=0 or callgrind failed).\n")

top = results["callgrind"].get("microgate", {})
if top.get("top_exclusive"):
    md.append("Where microgate's instructions go (second interval; `callgrind_annotate`, the heaviest functions by "
              "their own instructions, then including their callees; per proxied request):\n")
    md.append("| function (exclusive) | instr. / request | share |")
    md.append("|---|---|---|")
    for name, per, share in top["top_exclusive"]:
        md.append(f"| `{name[:110]}` | {per:,.0f} | {share * 100:.1f} % |")
    md.append("")
    md.append("| function (inclusive) | instr. / request | share |")
    md.append("|---|---|---|")
    for name, per, share in top.get("top_inclusive", []):
        md.append(f"| `{name[:110]}` | {per:,.0f} | {share * 100:.1f} % |")
    md.append("")

if results["h2"]:
    md.append("### HTTP/2 downstream (h2c prior knowledge), HTTP/1.1 upstream, 1 worker\n")
    md.append("| proxy | req/s median [min–max] | req per CPU-second | failed or not 2xx | peak RSS |")
    md.append("|---|---|---|---|---|")
    for p, e in results["h2"].items():
        md.append(f"| {NAMES[p]} | {krange(e['rps'])} | {krange(e['req_per_cpu_second'])} | {e['failed']} of {e['requests']} | {mib(e['hwm_kib'])} |")
    md.append("\n" + "; ".join(f"{name}: {ratio(s)}" for name, s in h2_ratios.items()) + "\n")

if tls_new or tls_keepalive or tls_h2 or tls_idle:
    md.append("### TLS, 1 worker\n")
    md.append(
        "All three proxies terminate TLS 1.3 only (nginx `ssl_protocols TLSv1.3`, HAProxy `ssl-min-ver TLSv1.3`, "
        "microgate `minVersion: \"1.3\"`), ALPN h2 and http/1.1, with the same two certificates made by `openssl req` "
        "at the start of the run (ECDSA P-256, RSA 2048; microgate reads them from `kubernetes.io/tls` Secrets, nginx and "
        "HAProxy from files), and forward plain HTTP/1.1 to the same pooled backends. nginx and HAProxy use OpenSSL "
        f"{versions.get('openssl', '?')}, microgate rustls {versions.get('rustls', '?')} with the `ring` provider. Every server keeps its "
        "default session tickets; the clients below never resume.\n")
    md.append(
        "**New connections** come from `bench/tls-client connect` (rustls, `ring`, 2 threads, "
        f"{settings.get('connections', '?')} connections in progress): each connection makes a full handshake, sends one "
        "`GET /` with `Connection: close`, reads the 200 to the end and closes. wrk and h2load are not used here because "
        "they resume the previous connection's session (checked against nginx's `$ssl_session_reused` when this scenario "
        "was written: with `Connection: close`, every connection of wrk and of h2load after each slot's first was "
        "resumed). The client asks for no session and counts the kind "
        "of every handshake (rustls `handshake_kind`); the machine's accepted TCP connections over the round "
        "(`PassiveOpens`) are shown next to the client's count, as the check that each request had a connection of its "
        "own. The client does not verify the certificate or the handshake signature, to keep its share of the CPUs small. "
        "**Keep-alive** is `wrk -t2 -c" + str(settings.get("connections", "?")) + "` over https (ECDSA), as the plain rows; "
        "**h2** is `h2load -t2 -c" + str(settings.get("connections", "?")) + " -m10` over https (ECDSA, ALPN h2). **Idle memory**: "
        "`bench/tls-client hold` opens the connections (256 at a time) on the ECDSA listener, makes one keep-alive request "
        "on each and leaves them idle; the proxy's RSS just before and once all are open, divided by the connections it "
        "still held when the client checked.\n")
    for certificate, name in [("ecdsa", "ECDSA P-256"), ("rsa", "RSA 2048")]:
        e_ = results["tls"]["new"].get(certificate)
        if not e_:
            continue
        md.append(f"**New TLS connections per second, {name}** (one request each):\n")
        md.append("| proxy | connections/s median [min–max] | handshakes per proxy CPU-second | proxy CPU per handshake: user + system | machine CPU per handshake | full handshakes / completed (resumed) | accepted TCP / completed | closed without close_notify | failed | peak RSS |")
        md.append("|---|---|---|---|---|---|---|---|---|---|")
        for t, e in e_["targets"].items():
            md.append(f"| {NAMES[t]} | {krange(e['rate'])} | {krange(e['per_cpu_second'])} | "
                      f"{e['user_us'] * 1e6:.0f} + {e['system_us'] * 1e6:.0f} µs | {e['machine_us'] * 1e6:.0f} µs | "
                      f"{e['full']} / {e['completed']} ({e['resumed']}) | {e['accepted']} / {e['completed']} | {e['unclean_close']} | "
                      f"{e['failed']}{(' (' + '; '.join(e['failures'])[:200] + ')') if e['failures'] else ''} | {mib(e['hwm_kib'])} |")
        md.append("\n" + "; ".join(f"{k_}: connections/s {ratio(r_['rate'])}, per CPU-second {ratio(r_['per_cpu_second'])}"
                                    for k_, r_ in e_["ratios"].items()) + "\n")
    neg = next((e["negotiated"] for c in results["tls"]["new"].values() for e in c["targets"].values() if e.get("negotiated")), None)
    if neg:
        md.append(f"Negotiated (as the client saw it): {neg['cipher']}, key exchange {neg['group']}, ALPN {neg['alpn']}.\n")
    ka = results["tls"]["keepalive"]
    if ka:
        md.append("**Keep-alive requests per second over TLS** (ECDSA):\n")
        md.append("| proxy | req/s median [min–max] | req per proxy CPU-second | proxy CPU per request: user + system | peak RSS | non-2xx / socket errors |")
        md.append("|---|---|---|---|---|---|")
        for t, e in ka["targets"].items():
            md.append(f"| {NAMES[t]} | {krange(e['rps'])} | {krange(e['req_per_cpu_second'])} | "
                      f"{e['user_us'] * 1e6:.1f} + {e['system_us'] * 1e6:.1f} µs | {mib(e['hwm_kib'])} | {e['non_2xx']} / {e['socket_errors']} |")
        md.append("\n" + "; ".join(f"{k_}: req/s {ratio(r_['rps'])}, per CPU-second {ratio(r_['req_per_cpu_second'])}"
                                    for k_, r_ in ka["ratios"].items()) + "\n")
    th = results["tls"]["h2"]
    if th:
        md.append("**HTTP/2 over TLS** (ECDSA, ALPN h2; the h2c rows are above):\n")
        md.append("| proxy | req/s median [min–max] | req per CPU-second | failed or not 2xx | protocol | peak RSS |")
        md.append("|---|---|---|---|---|---|")
        for t, e in th["targets"].items():
            md.append(f"| {NAMES[t]} | {krange(e['rps'])} | {krange(e['req_per_cpu_second'])} | {e['failed']} of {e['requests']} | "
                      f"{', '.join(e['protocols'])} | {mib(e['hwm_kib'])} |")
        md.append("\n" + "; ".join(f"{k_}: {ratio(r_)}" for k_, r_ in th["ratios"].items()) + "\n")
    ti = results["tls"]["idle"]
    if ti:
        md.append("**Memory per idle TLS connection** (one measurement per proxy):\n")
        md.append("| proxy | held / opened / wanted | time to open | RSS before | RSS with the connections open | per connection | failed to open |")
        md.append("|---|---|---|---|---|---|---|")
        for t in TLS_TARGETS:
            e = ti.get(t)
            if not e:
                continue
            per = "—" if e["bytes_per_connection"] is None else f"**{e['bytes_per_connection'] / 1024:.1f} KiB**"
            failed_ = sum(e["failed"].values()) if e["failed"] else 0
            md.append(f"| {NAMES[t]} | {e['still_open']} / {e['opened']} / {e['wanted']} | {e['open_seconds']:.1f} s | "
                      f"{mib(e['rss_before_kib'])} | {mib(e['rss_after_kib'])} | {per} | "
                      f"{failed_}{(' (' + e['first_failure'][:120] + ')') if e.get('first_failure') else ''} |")
        md.append("")

if results["scale"]:
    md.append("### Idle connections at scale, 1 worker\n")
    md.append(
        "`bench/tls-client hold` opens the idle connections (256 at a time) from "
        f"{next(iter(next(iter(results['scale'].values())).values()))['sources']} loopback source addresses "
        "(127.1.0.1 and up), makes one keep-alive request on each (plain HTTP/1.1 on the plain listener, HTTP/1.1 over "
        "TLS 1.3 on the ECDSA listener, HTTP/2 with prior knowledge on the h2c listener) and leaves them idle; it keeps "
        "only the TCP connection, so the proxy's side is what is measured. Memory per connection is the proxy's RSS "
        "3 s after all are open (idle connections are measured idle: microgate moves an HTTP/1.1 connection, plain or "
        "TLS, out of its task once it has waited 100 ms for its next request) minus its RSS just before, divided by "
        "the connections it still held when the client checked. "
        "The steady load is `wrk -t2 -c" + str(settings.get("connections", "?")) + f" -d{settings.get('seconds', '?')}s` on "
        "the same kind of listener (plain for h2c), in " + str(settings.get("scale_rounds", 1)) + " round(s) without the idle "
        "connections and as many beside them: the round of median req/s stands for each side (its p99), the range "
        "in brackets. Every "
        "proxy keeps idle keep-alive connections for 300 s (nginx `keepalive_timeout`, HAProxy `timeout "
        "http-keep-alive` and `timeout client`, microgate `--client-header-timeout`) and may hold them all (nginx "
        "`worker_connections`, HAProxy `maxconn`, microgate `maxConnections`); the three are restarted before each kind "
        "of connection, so that none reuses memory the previous kind freed.\n")
    wanted, held = settings.get("scale_idle_wanted"), settings.get("scale_idle")
    if wanted and held and held < wanted:
        md.append(f"**{wanted} idle connections were asked for; {held} were held**: the open-files hard limit of this "
                  f"machine is {settings.get('open_files_hard')} per process (raising it needs CAP_SYS_RESOURCE, which "
                  "the bench's container lacks), and each proxy holds every connection in one process.\n")
    md.append("| connections | proxy | held / opened / wanted | time to open | RSS before | RSS with them open | per connection | load without: req/s, p99 | beside them: req/s, p99 | failed to open |")
    md.append("|---|---|---|---|---|---|---|---|---|---|")
    for kind, label in [("plain", "plain HTTP/1.1"), ("tls", "TLS 1.3"), ("h2", "h2c")]:
        for t in TLS_TARGETS:
            e = results["scale"].get(kind, {}).get(t)
            if not e:
                continue
            per = "—" if not e.get("still_open") else f"**{e['bytes_per_connection'] / 1024:.2f} KiB**"
            lw, lb = e.get("load_without") or {}, e.get("load_beside") or {}
            load_ = lambda l: f"{l['rps'] / 1000:.1f} k{rounds_range(l)}, {l.get('p99', '?')}" if l else "—"
            failed_ = sum(e["failed"].values()) if e["failed"] else 0
            md.append(f"| {label} | {NAMES[t]} | {e['still_open']} / {e['opened']} / {e['wanted']} | {e['open_seconds']:.1f} s | "
                      f"{mib(e['rss_before_kib'])} | {mib(e['rss_after_kib'])} | {per} | {load_(lw)} | {load_(lb)} | "
                      f"{failed_}{(' (' + e['first_failure'][:120] + ')') if e.get('first_failure') else ''} |")
    md.append("")

if results["retry"]:
    md.append("### One failing backend (20 % 503), retries on, 1 worker\n")
    md.append("The failing set is two healthy backends and the failing one. nginx: `proxy_next_upstream error timeout "
              "http_503; proxy_next_upstream_tries 4` (its default `max_fails=1 fail_timeout=10s` also takes the server "
              "out for 10 s after a failure); HAProxy: `retries 3; retry-on 503 conn-failure empty-response "
              "response-timeout; option redispatch 1`; microgate: `retry: {attempts: 3, retryOn: [5xx], backoff 1 ms, "
              "budget 20 %}` with outlier detection at its defaults (5 consecutive failures eject). "
              "Upstream requests are counted by the backends themselves.\n")
    md.append("| target | req/s median [min–max] | client success | upstream / client requests | upstream requests: healthy 1 / healthy 2 / failing | gateway retries (budget refused) |")
    md.append("|---|---|---|---|---|---|")
    for t, e in results["retry"].items():
        name = "direct (the failing backend)" if t == "direct" else NAMES[t]
        up = "—" if t == "direct" else f"{e['upstream_per_client']:.3f}"
        total = sum(e["upstream"])
        share = "—" if t == "direct" or not total else " / ".join(f"{u / total * 100:.1f} %" for u in e["upstream"])
        gw = f"{e['gateway_retries']} ({e['budget_exhausted']}), ejections {e['ejections']}" if t == "microgate" else "—"
        md.append(f"| {name} | {krange(e['rps'])} | {e['success_rate'] * 100:.3f} % ({e['non_2xx'] + e['socket_errors']} of {e['requests']} failed) | {up} | {share} | {gw} |")
    md.append("\nWithout ejection the ideal upstream/client ratio is 1 + 1/3 × 20 % ≈ 1.07.\n")

if spreads:
    md.append("### Round-robin spread (30 requests through each proxy, by `x-backend`)\n")
    for s in spreads:
        w = s.get("workers")
        md.append(f"- {NAMES.get(s['target'], s['target'])}" + (f", {w} worker{'s' if w != 1 else ''}" if w else "") + ": " + ", ".join(f"{b} {n}" for b, n in sorted(s["backends"].items())))
    md.append("")
if idle:
    md.append("microgate RSS idle (after start, before traffic): " +
              ", ".join(f"{mib(i['microgate_idle_kib'][0])} with {i['workers']} worker{'s' if i['workers'] != 1 else ''} "
                        f"({i.get('runtime_workers', '?')} worker thread(s) seen)" for i in idle) + ".\n")
if chart_ok:
    md.append("![throughput and latency per proxy](bench/chart.png)\n")
else:
    md.append("The chart could not be drawn in this run.\n")

pmd = []
if results["policy"]:
    po = results["policy"]
    pmd.append("## AccessPolicy cost (`make bench`, scenario `policy`)\n")
    pmd.append(f"Run {machine.get('date', '?')} on {machine.get('nproc', '?')} CPUs ({machine.get('cpu', '?')}), shared with "
               f"other work: load average before the run {machine.get('loadavg_before', '?')}, CPU busy with other work "
               f"before the first measurement {preflight.get('busy_percent_before', '?')} %. microgate {versions.get('microgate', '?')}, "
               f"nginx {versions.get('nginx', '?')}, HAProxy {versions.get('haproxy', '?')}, wrk {versions.get('wrk', '?')}.\n")
    if isinstance(busy, (int, float)) and busy > 10:
        pmd.append(f"**The machine was not quiet: {busy} % of its CPU was busy with other work before the run "
                   "started.** The rounds share the CPUs with that work: read the per-round ratios with their spread, "
                   "and rerun on a quiet machine before drawing conclusions. The instruction counts are not affected.\n")
    pmd.append(
        "**Setup.** As the throughput rows of the gateway section (same backends, 1 worker, "
        f"`wrk -t2 -c{settings.get('connections', '?')} -d{settings.get('seconds', '?')}s`, "
        f"{settings.get('rounds', '?')} rounds, order reversed every other round), and every request carries the same "
        "`Authorization: Bearer` token: ES256, signed at the start of the run with a P-256 key made by `openssl`, valid "
        "for a day. *microgate with the AccessPolicy* is a second listener of the same gateway whose route (the same "
        "backends) names the AccessPolicy `bench-jwt` of `bench/microgate.yaml`: one JWT provider (issuer, audience, "
        "`algorithms: [ES256]`, its key set read from the Secret `bench-jwks`) and a local rate limit keyed by the "
        "`sub` claim at 1 000 000 000 requests per second, which no round comes near. *microgate* is the route "
        "without the policy. The token is verified once and its claims are then reused from the cache until it "
        "expires, so these rows are the steady state of a client that keeps its token; a new token per request "
        "would pay a P-256 signature check each time. **nginx** checks no token: its free build has no JWT "
        "verification (`auth_jwt` is in the commercial NGINX Plus), so it serves the same requests, header included, "
        "without one. **HAProxy** appears twice: without a check, and as *HAProxy with `jwt_verify` and a stick "
        "table* (`frontend policy` in `bench/peers/haproxy.cfg`): its free build's JWT converters check the ES256 "
        "signature against the run's public key as a PEM file (no key sets, no cache: every request pays a signature "
        "check), the issuer, audience and expiry by ACLs, and a per-`sub` request rate in a stick table that is "
        "never reached. Before the rounds the bench checks that both policy listeners answer 401 without the token "
        "and 200 with it. The rows without a check compare microgate doing more work with peers doing less.\n")
    pmd.append("| target | req/s median [min–max] | req per proxy CPU-second | proxy CPU per request: user + system | peak RSS | p99 per round | requests | non-2xx / socket errors |")
    pmd.append("|---|---|---|---|---|---|---|---|")
    for t, e in po["targets"].items():
        pmd.append(f"| {NAMES[t]} | {krange(e['rps'])} | {krange(e['req_per_cpu_second'])} | "
                   f"{e['user_us'] * 1e6:.1f} + {e['system_us'] * 1e6:.1f} µs | {mib(e['hwm_kib'])} | {', '.join(e['p99'])} | "
                   f"{e['requests']} | {e['non_2xx']} / {e['socket_errors']} |")
    pmd.append("")
    pmd.append("| per-round ratio | req/s | req per CPU-second | rounds |")
    pmd.append("|---|---|---|---|")
    for name, e in po["ratios"].items():
        short = {"microgate-policy": "microgate with policy", "haproxy-policy": "HAProxy with jwt_verify",
                 "haproxy": "HAProxy", "nginx": "nginx", "microgate": "microgate"}
        a, b = name.split("/")
        pmd.append(f"| {short[a]} / {short[b]} | {ratio(e['rps'])} | "
                   f"{ratio(e['req_per_cpu_second'])} | {e['rounds']} |")
    pmd.append("")
    with_, without = cg.get("microgate-policy", {}).get("per_request"), cg.get("microgate", {}).get("per_request")
    if with_ and without:
        pmd.append(f"**Instructions per request** (callgrind, user space, as in the gateway section; "
                   f"{settings.get('callgrind_requests', '?')} requests per interval): "
                   f"{with_ / 1000:.1f} k with the AccessPolicy, {without / 1000:.1f} k without "
                   f"({with_ - without:+,.0f}, {with_ / without:.2f}×).\n")
    own = po["ratios"].get("microgate-policy/microgate", {}).get("rps")
    if own:
        pmd.append(f"Target: the policy costs ≤ 10 % of throughput once a token has been seen (ratio ≥ 0.90): "
                   f"{ratio(own)}, {verdict(own[0] >= 0.9)}. Ratios are medians of per-round ratios [min–max] in this run.\n")
    pmd.append("Load average per round (1/5/15 min, after its last target): " +
               "; ".join(f"{rnd}: {l}" for rnd, l in sorted(dict(po["loadavg"]).items())) + "\n")
    md.append("### AccessPolicy cost\n")
    md.append("In its own section below (`bench:policy`), which a run of the policy scenario alone also updates.\n")

tmd = []
if results["tracing"]:
    tro = results["tracing"]
    tmd.append("## Tracing cost (`make bench`, scenario `tracing`)\n")
    tmd.append(f"Run {machine.get('date', '?')} on {machine.get('nproc', '?')} CPUs ({machine.get('cpu', '?')}), shared with "
               f"other work: load average before the run {machine.get('loadavg_before', '?')}, CPU busy with other work "
               f"before the first measurement {preflight.get('busy_percent_before', '?')} %. microgate {versions.get('microgate', '?')}, "
               f"wrk {versions.get('wrk', '?')}.\n")
    if isinstance(busy, (int, float)) and busy > 10:
        tmd.append(f"**The machine was not quiet: {busy} % of its CPU was busy with other work before the run "
                   "started.** Read the per-round ratios with their spread.\n")
    tmd.append(
        "**Setup.** Three `microgate gateway` processes with 1 worker each, alike but for tracing, serve the same "
        "Gateway on three loopback addresses in front of the same backends: *microgate* without tracing, and two "
        "with `--tracing-otlp-endpoint` and `--tracing-sampling-ratio` 0.01 and 1.0. wrk's requests carry no "
        "`traceparent`, so every request starts a trace, the sampled share records a server span and an attempt span, "
        "and every request sends the backend a `traceparent`. The collector is an nginx worker that accepts every "
        "OTLP/HTTP export and keeps nothing (`bench/peers/otlp-sink.conf`), so the rows measure the gateway's cost, "
        "not a trace store's. "
        f"`wrk -t2 -c{settings.get('connections', '?')} -d{settings.get('seconds', '?')}s`, {settings.get('rounds', '?')} "
        "rounds, order reversed every other round.\n")
    tmd.append("| target | req/s median [min–max] | req per proxy CPU-second | proxy CPU per request: user + system | peak RSS | p99 per round | requests | non-2xx / socket errors |")
    tmd.append("|---|---|---|---|---|---|---|---|")
    for t, e in tro["targets"].items():
        tmd.append(f"| {NAMES[t]} | {krange(e['rps'])} | {krange(e['req_per_cpu_second'])} | "
                   f"{e['user_us'] * 1e6:.1f} + {e['system_us'] * 1e6:.1f} µs | {mib(e['hwm_kib'])} | {', '.join(e['p99'])} | "
                   f"{e['requests']} | {e['non_2xx']} / {e['socket_errors']} |")
    tmd.append("")
    tmd.append("| per-round ratio | req/s | req per CPU-second | rounds |")
    tmd.append("|---|---|---|---|")
    for name, e in tro["ratios"].items():
        a, b = name.split("/")
        tmd.append(f"| {NAMES[a]} / {NAMES[b]} | {ratio(e['rps'])} | {ratio(e['req_per_cpu_second'])} | {e['rounds']} |")
    tmd.append("")
    for sp in tro["spans"]:
        tmd.append(f"- {NAMES.get(sp['target'], sp['target'])}: {sp['requests']} requests answered over the scenario "
                   f"(warm-up included), {sp['spans_exported']} spans exported, {sp['spans_dropped']} dropped.")
    tmd.append("")
    own = tro["ratios"].get("microgate-trace1/microgate", {}).get("rps")
    if own:
        tmd.append(f"Target: tracing at 1 % costs ≤ 3 % of throughput (ratio ≥ 0.97): {ratio(own)}, "
                   f"{verdict(own[0] >= 0.97)}. Ratios are medians of per-round ratios [min–max] in this run.\n")
    tmd.append("Load average per round (1/5/15 min, after its last target): " +
               "; ".join(f"{rnd}: {l}" for rnd, l in sorted(dict(tro["loadavg"]).items())) + "\n")
    md.append("### Tracing cost\n")
    md.append("In its own section below (`bench:tracing`), which a run of the tracing scenario alone also updates.\n")

section = "\n".join(md).rstrip() + "\n"
with open(os.path.join(OUT, "results.md"), "w") as f:
    f.write(section)
    if pmd:
        f.write("\n" + "\n".join(pmd).rstrip() + "\n")
    if tmd:
        f.write("\n" + "\n".join(tmd).rstrip() + "\n")


def write_block(text, begin, end, body, after=None):
    """text with body between begin and end: in place, else after the marker `after`, else before the
    first second-level heading, else at the end."""
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    if after and after in text:
        i = text.index(after) + len(after)
        return text[:i] + "\n\n" + block + text[i:]
    if "\n## " in text:
        i = text.index("\n## ")
        return text[:i + 1] + block + "\n\n" + text[i + 1:]
    return text.rstrip() + "\n\n" + block + "\n"


bench_md = os.path.join(REPO, "BENCHMARKS.md")
text = open(bench_md).read() if os.path.exists(bench_md) else "# Benchmarks\n"
if pmd:
    text = write_block(text, POLICY_BEGIN, POLICY_END, "\n".join(pmd).rstrip() + "\n", after=END)
if tmd:
    text = write_block(text, TRACING_BEGIN, TRACING_END, "\n".join(tmd).rstrip() + "\n",
                       after=POLICY_END if POLICY_END in text else END)

if partial:
    # A run of some scenarios only (BENCH_SCENARIOS) leaves the published figures alone.
    if pmd or tmd:
        with open(bench_md, "w") as f:
            f.write(text)
    print(f"report: {os.path.join(OUT, 'results.md')} (scenarios {' '.join(settings['scenarios'])}: "
          "BENCHMARKS.md's gateway section left as it was" + (", its policy section written" if pmd else "")
          + (", its tracing section written" if tmd else "") + ")",
          file=sys.stderr)
    sys.exit(0)
text = write_block(text, BEGIN, END, section)
with open(bench_md, "w") as f:
    f.write(text)
print(f"report: {os.path.join(OUT, 'results.md')}, {bench_md}" + (f", {chart}" if chart_ok else ""), file=sys.stderr)
