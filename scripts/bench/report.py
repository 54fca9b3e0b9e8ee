#!/usr/bin/env python3
"""scripts/bench.sh's report: reads the raw results of one run, prints the tables and writes
the summary JSON (machine, load, every figure, the goals of issue #5).

Usage: report.py RAW_DIR OUT_JSON
       report.py SUMMARY.json OUT_JSON     (print a saved summary again, goals recomputed)

With bench.sh --policies (meta.json "mode": "policies") the phases hold the xdpmesh pair alone
at web's plain path, its path with retries, and the plain path again (the control), and the
tables are those of print_policies: ratios to plain, no goals. There PHASE/gwa-metrics.txt is
gateway A's /metrics after the phase (its retry counters must be zero: nothing failed).

RAW_DIR holds what bench.sh wrote:
  meta.json                      command, date, quick, rates, phases and their targets
  load.txt                       "epoch load1" samples taken during the run
  PHASE/tcp-RATE.json            xdpmesh-bench reports (--compare, one run per target)
  PHASE/http-RATE.json
  PHASE/wrk-NAME-rN.txt          wrk -t1 -c32 --latency output, one file per round
  PHASE/iperf-NAME-rN.json       iperf3 -J output, one file per round
                                 (a pair's runs carry its two processes' CPU time over their
                                 measured windows: "cpu", xdpmesh-bench --cpu-of)
  PHASE/cpu-{start,end}.txt      "NAME PID TICKS": the proxies' user + system CPU time before
                                 and after the phase's fixed-rate latency runs ("-": gone)
  PHASE/seconds.txt              those runs' wall time
  PHASE/gwa-metrics.txt          (--policies) gateway A's /metrics after the phase
"""

import json
import os
import platform
import re
import statistics
import sys


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine():
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "hostname": platform.node(),
    }


def load_stats(path):
    vals = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    vals.append(float(parts[1]))
    except OSError:
        pass
    if not vals:
        return None
    return {
        "samples": len(vals),
        "min": min(vals),
        "max": max(vals),
        "mean": round(statistics.mean(vals), 2),
    }


WRK_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def wrk_latency_us(text, pct):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)\s*$" % pct, text, re.M)
    return float(m.group(1)) * WRK_UNITS[m.group(2)] if m else None


def read_wrk(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    errs = re.search(r"Socket errors: (.*)$", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "req_per_s": float(rps.group(1)) if rps else None,
        "p50_us": wrk_latency_us(text, 50),
        "p99_us": wrk_latency_us(text, 99),
        "socket_errors": errs.group(1).strip() if errs else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def read_iperf(path):
    try:
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        return {"gbit_s": None, "error": "unreadable iperf3 output: %s" % e}
    if "error" in j:
        return {"gbit_s": None, "error": j["error"]}
    end = j.get("end", {})
    recv = end.get("sum_received", {}).get("bits_per_second")
    retr = end.get("sum_sent", {}).get("retransmits")
    return {"gbit_s": recv / 1e9 if recv else None, "retransmits": retr}


def harness_runs(path):
    try:
        with open(path, encoding="utf-8") as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return {}
    out = {}
    for r in rep.get("runs", []):
        lat = r["latency"]
        out[r["name"]] = {
            "asked_rate": r["asked_rate"],
            "achieved_rate": round(r["achieved_rate"], 1),
            "connections": r["connections"],
            "ok": r["ok"],
            "errors": r["errors"],
            "p50_us": lat["p50_ns"] / 1000.0,
            "p90_us": lat["p90_ns"] / 1000.0,
            "p99_us": lat["p99_ns"] / 1000.0,
            "p999_us": lat["p999_ns"] / 1000.0,
            "max_us": lat["max_ns"] / 1000.0,
            "send_delay_p50_us": r["send_delay"]["p50_ns"] / 1000.0,
            "warning": r.get("warning"),
            # --cpu-of: the proxies' CPU over this run's measured windows (issue #21).
            "cpu_ms_per_1k": (r.get("cpu") or {}).get("ms_per_1k_requests"),
        }
    return out


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def collect(raw, meta):
    phases = {}
    for phase in meta["phases"]:
        pname, targets = phase["name"], phase["targets"]
        pdir = os.path.join(raw, pname)
        res = {"about": phase["about"], "targets": {t["name"]: {"role": t["role"]} for t in targets}}
        for mode in ("tcp", "http"):
            for rate in meta["rates"]:
                runs = harness_runs(os.path.join(pdir, "%s-%s.json" % (mode, rate)))
                for name, r in runs.items():
                    if name in res["targets"]:
                        res["targets"][name].setdefault(mode, {})[str(rate)] = r
        for t in targets:
            name = t["name"]
            wrk, iperf = [], []
            for rnd in range(1, meta["rounds"] + 1):
                p = os.path.join(pdir, "wrk-%s-r%d.txt" % (name, rnd))
                if os.path.exists(p):
                    wrk.append(read_wrk(p))
                p = os.path.join(pdir, "iperf-%s-r%d.json" % (name, rnd))
                if os.path.exists(p):
                    iperf.append(read_iperf(p))
            res["targets"][name]["wrk"] = {
                "connections": 32,
                "req_per_s": mean([w["req_per_s"] for w in wrk]),
                "p50_us": mean([w["p50_us"] for w in wrk]),
                "p99_us": mean([w["p99_us"] for w in wrk]),
                "rounds": wrk,
            }
            res["targets"][name]["bulk"] = {
                "gbit_s": mean([i["gbit_s"] for i in iperf]),
                "rounds": iperf,
            }
        res["proxy_cpu"] = proxy_cpu(pdir, meta.get("clk_tck", 100))
        if meta.get("mode") == "policies":
            res["gateway_a_policy_counters"] = policy_counters(os.path.join(pdir, "gwa-metrics.txt"))
        phases[pname] = res
    return phases


def proxy_cpu(pdir, clk_tck):
    """CPU seconds each proxy process used over the phase's fixed-rate latency runs, and their
    wall seconds."""

    def ticks(path):
        out = {}
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            return {}
        for line in lines:
            parts = line.split()
            # "-" for a pid or ticks: the process was not there.
            if len(parts) == 3 and parts[2].isdigit():
                out[parts[0]] = (parts[1], int(parts[2]))
        return out

    start, end = ticks(os.path.join(pdir, "cpu-start.txt")), ticks(os.path.join(pdir, "cpu-end.txt"))
    used = {}
    for name, (pid, t1) in end.items():
        p0 = start.get(name)
        # A process that was not the same one at both ends (restarted, gone) is not counted.
        if p0 and p0[0] == pid and t1 >= p0[1]:
            used[name] = (t1 - p0[1]) / clk_tck
    try:
        with open(os.path.join(pdir, "seconds.txt"), encoding="utf-8") as f:
            wall = int(f.read().strip())
    except (OSError, ValueError):
        wall = None
    return {"cpu_seconds": used, "wall_seconds": wall} if used else None


def policy_counters(path):
    """Gateway A's request-policy counters (xdpmesh_route_*_total series, summed per family),
    or None when its /metrics text was not saved. A family with no series counted nothing."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    if "xdpmesh_" not in text:
        return None
    out = {"series": []}
    for fam in ("xdpmesh_route_retries_total", "xdpmesh_route_retries_skipped_total",
                "xdpmesh_route_faults_total", "xdpmesh_route_rate_limited_total"):
        total = 0
        for line in text.splitlines():
            if line.startswith(fam + "{") or line.startswith(fam + " "):
                out["series"].append(line)
                try:
                    total += int(float(line.rsplit(" ", 1)[1]))
                except ValueError:
                    pass
        out[fam] = total
    return out


def role(phase, r):
    for name, t in phase["targets"].items():
        if t["role"] == r:
            return name
    return None


def fmt(x, nd=1):
    if x is None:
        return "-"
    if abs(round(x, nd)) >= 1000:
        return "{:,.0f}".format(x)
    if x != 0 and abs(x) < 0.01:
        return "{:.4f}".format(x)
    return "{:.{}f}".format(x, nd)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def print_tables(summary):
    meta = summary["meta"]
    for pname, ph in summary["phases"].items():
        d, h = role(ph, "direct"), role(ph, "haproxy")
        print("\n== phase %s: %s" % (pname, ph["about"]))
        for mode, what in (("tcp", "TCP 64 B request/response RTT"), ("http", "HTTP keep-alive GET latency")):
            print("\n%s (xdpmesh-bench, open loop, coordinated omission corrected), µs" % what)
            print(
                "  %-15s %7s %9s %8s %8s %9s %9s %9s %13s"
                % ("path", "rate", "achieved", "p50", "p99", "+p50", "+p99", "+p50/hop", "+p50 / HAP+")
            )
            for rate in meta["rates"]:
                k = str(rate)
                base = ph["targets"].get(d, {}).get(mode, {}).get(k)
                hap = ph["targets"].get(h, {}).get(mode, {}).get(k)
                hap_add = hap["p50_us"] - base["p50_us"] if hap and base and hap["ok"] and base["ok"] else None
                for name, t in ph["targets"].items():
                    r = t.get(mode, {}).get(k)
                    if not r:
                        print("  %-15s %7s  (no result)" % (name, rate))
                        continue
                    # At "max" every path is saturated and the percentiles are queueing:
                    # only the achieved rate means something there. An empty histogram
                    # (every request timed out) has no percentiles.
                    if rate == "max" or r["ok"] == 0 or not base or base["ok"] == 0:
                        add50 = add99 = None
                    else:
                        add50 = r["p50_us"] - base["p50_us"] if name != d else None
                        add99 = r["p99_us"] - base["p99_us"] if name != d else None
                    if r["ok"] == 0:
                        r = dict(r, p50_us=None, p99_us=None)
                    rel = ratio(add50, hap_add) if name not in (d, h) else None
                    flag = " *" if r.get("warning") else ""
                    print(
                        "  %-15s %7s %9s %8s %8s %9s %9s %9s %13s%s"
                        % (
                            name,
                            rate,
                            fmt(r["achieved_rate"], 0),
                            fmt(r["p50_us"]),
                            fmt(r["p99_us"]),
                            fmt(add50),
                            fmt(add99),
                            fmt(add50 / 2 if add50 is not None else None),
                            fmt(rel, 2),
                            flag,
                        )
                    )
        print("\nThroughput: HTTP req/s (wrk -t1 -c32, closed loop) and one-stream bulk (iperf3)")
        print(
            "  %-15s %10s %8s %8s %9s %9s %8s %9s %9s"
            % ("path", "req/s", "p50 µs", "p99 µs", "/direct", "/HAProxy", "Gbit/s", "/direct", "/HAProxy")
        )
        dw = ph["targets"].get(d, {}).get("wrk", {}).get("req_per_s")
        hw = ph["targets"].get(h, {}).get("wrk", {}).get("req_per_s")
        db = ph["targets"].get(d, {}).get("bulk", {}).get("gbit_s")
        hb = ph["targets"].get(h, {}).get("bulk", {}).get("gbit_s")
        for name, t in ph["targets"].items():
            w, b = t.get("wrk", {}), t.get("bulk", {})
            print(
                "  %-15s %10s %8s %8s %9s %9s %8s %9s %9s"
                % (
                    name,
                    fmt(w.get("req_per_s"), 0),
                    fmt(w.get("p50_us")),
                    fmt(w.get("p99_us")),
                    fmt(ratio(w.get("req_per_s"), dw), 2),
                    fmt(ratio(w.get("req_per_s"), hw), 2),
                    fmt(b.get("gbit_s"), 2),
                    fmt(ratio(b.get("gbit_s"), db), 2),
                    fmt(ratio(b.get("gbit_s"), hb), 2),
                )
            )
    print("\n+p50/+p99: added over the direct path measured in the same phase, interleaved; a pair is")
    print("two proxy hops (A and B), so +p50/hop = +p50 / 2. '+p50 / HAP+' = this pair's added p50")
    print("over the HAProxy pair's added p50. '*' = the harness warned (rate not carried: see JSON);")
    print("the percentiles then include the queueing. 'max' asks %s req/s: every path saturates, so" % meta["max_rate_asked"])
    print("only its achieved rate is read (the harness's own one-thread ceiling is near the direct row's).")
    print_cpu_per_request(summary)
    print_proxy_cpu(summary)
    goals = summary["goals"]
    print("\nGoals for the AF_XDP pair (issue #5). haproxy-x: the HAProxy pair of the same phase")
    print("(interleaved); haproxy-k: the kernel phase's (no XDP program attached; not interleaved):")
    for g in goals:
        print("  %-52s %-58s %s" % (g["goal"], g["measured"], "MET" if g["met"] else "NOT MET" if g["met"] is False else "n/a"))
    print_machine(summary)


def spread(xs, nd=0):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return "%s-%s" % (fmt(min(xs), nd), fmt(max(xs), nd))


def print_policies(summary):
    """--policies: per backend, each path against plain (ratio = path / plain)."""
    meta = summary["meta"]
    for pname, ph in summary["phases"].items():
        t = ph["targets"]
        base = role(ph, "plain")
        print("\n== backend %s: %s" % (pname, ph["about"]))
        print("   plain = http://10.10.1.1/ (route web, no policy); retries = http://10.10.1.1/retry/ (route")
        print("   web-retry, retries at their defaults); plain-again = plain once more (A/A control)")
        print("\nHTTP keep-alive GET latency (xdpmesh-bench, %s connections, open loop), µs; x = ratio to plain"
              % meta["http_connections"])
        print("  %-12s %7s %9s %7s %10s %10s %10s %7s %7s %7s"
              % ("path", "rate", "achieved", "x", "p50", "p99", "p99.9", "p50 x", "p99 x", "errors"))
        for rate in meta["rates"]:
            k = str(rate)
            b = t.get(base, {}).get("http", {}).get(k)
            for name, tt in t.items():
                r = tt.get("http", {}).get(k)
                if not r:
                    print("  %-12s %7s  (no result)" % (name, rate))
                    continue
                ok = r["ok"] > 0 and b and b["ok"] > 0 and name != base
                # At "max" the percentiles are the harness's queue: only the achieved rate compares.
                x50 = ratio(r["p50_us"], b["p50_us"]) if ok and rate != "max" else None
                x99 = ratio(r["p99_us"], b["p99_us"]) if ok and rate != "max" else None
                xr = ratio(r["achieved_rate"], b["achieved_rate"]) if ok else None
                flag = " *" if r.get("warning") else ""
                print(
                    "  %-12s %7s %9s %7s %10s %10s %10s %7s %7s %7s%s"
                    % (name, rate, fmt(r["achieved_rate"], 0), fmt(xr, 3), fmt(r["p50_us"]), fmt(r["p99_us"]),
                       fmt(r["p999_us"]), fmt(x50, 3), fmt(x99, 3),
                       sum(v for e, v in r["errors"].items() if e != "unfinished"), flag)
                )
        bw = t.get(base, {}).get("wrk", {})
        print("\nHTTP req/s, wrk -t1 -c32 (closed loop), %s rounds of %s s per path, interleaved: mean"
              % (meta["rounds"], meta["wrk_seconds_per_round"]))
        print("of the rounds, and the rounds' range; x = ratio to plain")
        print("  %-12s %9s %15s %7s %8s %15s %7s %8s %7s" % ("path", "req/s", "rounds", "x", "p99 µs", "rounds", "x", "p50 µs", "non-2xx"))
        for name, tt in t.items():
            w = tt.get("wrk", {})
            rounds = w.get("rounds", [])
            print(
                "  %-12s %9s %15s %7s %8s %15s %7s %8s %7s"
                % (name, fmt(w.get("req_per_s"), 0), spread([x["req_per_s"] for x in rounds]),
                   fmt(ratio(w.get("req_per_s"), bw.get("req_per_s")), 3) if name != base else "",
                   fmt(w.get("p99_us")), spread([x["p99_us"] for x in rounds], 1),
                   fmt(ratio(w.get("p99_us"), bw.get("p99_us")), 3) if name != base else "",
                   fmt(w.get("p50_us")), sum(x["non_2xx"] for x in rounds))
            )
        c = ph.get("gateway_a_policy_counters")
        if c is None:
            print("\ngateway A's policy counters: not read (its /metrics did not answer)")
        else:
            print("\ngateway A's policy counters after the backend's runs: retries %d, retries skipped %d,"
                  " faults %d, rate-limited %d" % (c["xdpmesh_route_retries_total"], c["xdpmesh_route_retries_skipped_total"],
                                                   c["xdpmesh_route_faults_total"], c["xdpmesh_route_rate_limited_total"]))
    print("\n'*' = the harness warned (rate not carried: see JSON); 'max' asks %s req/s, so its" % meta["max_rate_asked"])
    print("percentiles include the queueing and its achieved rate is the ceiling (of the path or the harness).")
    print("errors: failed requests (timeouts, resets, bad answers); the requests still queued when a run")
    print("ends ('unfinished', at max) are not errors and not counted.")
    print("plain-again/plain is what two identical targets differ by in this run: the noise.")
    print_machine(summary)


def print_cpu_per_request(summary):
    """Issue #21: each pair's CPU per 1,000 requests at each fixed rate (over exactly its own
    measured windows), next to its added p50 from the same runs."""
    rows = []
    for pname, ph in summary["phases"].items():
        d, h, x = role(ph, "direct"), role(ph, "haproxy"), role(ph, "xdpmesh")
        t = ph["targets"]
        for mode in ("tcp", "http"):
            for rate in summary["meta"]["rates"]:
                k = str(rate)
                try:
                    dr, hr, xr = t[d][mode][k], t[h][mode][k], t[x][mode][k]
                except (KeyError, TypeError):
                    continue
                if hr.get("cpu_ms_per_1k") is None or xr.get("cpu_ms_per_1k") is None:
                    continue
                ha, xa = hr["p50_us"] - dr["p50_us"], xr["p50_us"] - dr["p50_us"]
                rows.append((pname, mode, rate, hr, xr, ha, xa))
    if not rows:
        return
    print("\nCPU per 1,000 requests at a fixed rate (the pair's two processes, user + system, over")
    print("its own measured windows; xdpmesh-bench --cpu-of), and added p50 from the same runs:")
    print("  %-7s %-5s %6s %11s %11s %7s %12s %12s %7s"
          % ("phase", "mode", "rate", "HAProxy ms", "xdpmesh ms", "CPU x", "HAP +p50 µs", "xdp +p50 µs", "+p50 x"))
    for pname, mode, rate, hr, xr, ha, xa in rows:
        flag = " *" if hr.get("warning") or xr.get("warning") else ""
        print("  %-7s %-5s %6s %11s %11s %7s %12s %12s %7s%s"
              % (pname, mode, rate, fmt(hr["cpu_ms_per_1k"]), fmt(xr["cpu_ms_per_1k"]),
                 fmt(ratio(xr["cpu_ms_per_1k"], hr["cpu_ms_per_1k"]), 2), fmt(ha), fmt(xa),
                 fmt(ratio(xa, ha), 2), flag))


def print_proxy_cpu(summary):
    rows = [(p, ph["proxy_cpu"]) for p, ph in summary["phases"].items() if ph.get("proxy_cpu")]
    if not rows:
        return
    print("\nProxies' CPU time over each phase's fixed-rate latency runs (user + system of the processes;")
    print("the kernel's softirq work for them is not in it). There every path is asked the same")
    print("requests; a path that could not carry a rate ('*' above) served fewer:")
    for pname, c in rows:
        s = c["cpu_seconds"]

        def pair(a, b):
            if a in s and b in s:
                return "%.1f s (A %.1f + B %.1f)" % (s[a] + s[b], s[a], s[b])
            return "-"

        print(
            "  %-7s %ss wall: HAProxy pair %s; xdpmesh pair (%s) %s"
            % (pname, c["wall_seconds"] or "?", pair("haproxy-a", "haproxy-b"), pname, pair("gw-a", "gw-b"))
        )


def print_machine(summary):
    ld = summary["load_average_1m"]
    m = summary["machine"]
    print(
        "\nmachine: nproc %s, %s, Linux %s; load average (1 min) during the run: %s"
        % (m["nproc"], m["cpu_model"], m["kernel"], "%(min).2f-%(max).2f (mean %(mean).2f)" % ld if ld else "-")
    )
    print("run: %s, %s, commit %s" % (summary["meta"]["date"], summary["meta"]["command"], summary["meta"]["commit"]))


def goals(summary):
    """Issue #5's goals for the AF_XDP pair, against the HAProxy pair of the AF_XDP phase
    (interleaved, same conditions) and of the kernel phase (no XDP program attached)."""
    out = []
    ph = summary["phases"].get("afxdp")
    if not ph:
        return out
    d, x = role(ph, "direct"), role(ph, "xdpmesh")
    t = ph["targets"]
    for bname in ("afxdp", "kernel"):
        bph = summary["phases"].get(bname)
        if not bph:
            continue
        bd, h = role(bph, "direct"), role(bph, "haproxy")
        bt = bph["targets"]
        for rate in summary["meta"]["rates"]:
            if rate == "max":
                continue
            k = str(rate)
            try:
                xr, hr = t[x]["tcp"][k], bt[h]["tcp"][k]
                xdp = xr["p50_us"] - t[d]["tcp"][k]["p50_us"]
                hap = hr["p50_us"] - bt[bd]["tcp"][k]["p50_us"]
            except (KeyError, TypeError):
                continue
            note = []
            if hr.get("warning"):
                note.append("HAProxy pair saturated")
            if xr.get("warning"):
                note.append("xdpmesh pair saturated")
            xc, hc = xr.get("cpu_ms_per_1k"), hr.get("cpu_ms_per_1k")
            if bname == "afxdp" and xc is not None and hc is not None:
                out.append(
                    {
                        "goal": "#21 TCP CPU/1k req at %s req/s <= 1.0 x %s's, +p50 <= 0.5 x" % (rate, h),
                        "measured": "%.1f vs %.1f ms (%s x), +p50 %s x"
                        % (xc, hc, fmt(ratio(xc, hc), 2), fmt(ratio(xdp, hap), 2)),
                        "met": bool(hc > 0 and xc <= hc and hap > 0 and xdp <= 0.5 * hap),
                    }
                )
            out.append(
                {
                    "goal": "TCP RTT added p50 at %s req/s <= 0.5 x %s's" % (rate, h),
                    "measured": "%.1f vs %.1f µs (%s x)%s"
                    % (xdp, hap, fmt(ratio(xdp, hap), 2), " [%s]" % ", ".join(note) if note else ""),
                    "met": bool(hap > 0 and xdp <= 0.5 * hap),
                }
            )
        xw, hw = t.get(x, {}).get("wrk", {}).get("req_per_s"), bt.get(h, {}).get("wrk", {}).get("req_per_s")
        r = ratio(xw, hw)
        out.append(
            {
                "goal": "HTTP req/s, 32 keep-alive conns >= 1.5 x %s's" % h,
                "measured": "%s vs %s (%s x)" % (fmt(xw, 0), fmt(hw, 0), fmt(r, 2)),
                "met": None if r is None else r >= 1.5,
            }
        )
        xb, hb = t.get(x, {}).get("bulk", {}).get("gbit_s"), bt.get(h, {}).get("bulk", {}).get("gbit_s")
        r = ratio(xb, hb)
        out.append(
            {
                "goal": "bulk Gbit/s, one stream >= %s's" % h,
                "measured": "%s vs %s (%s x)" % (fmt(xb, 2), fmt(hb, 2), fmt(r, 2)),
                "met": None if r is None else r >= 1.0,
            }
        )
    return out


def report(summary):
    """Print the tables (and recompute the goals) of the summary's mode."""
    if summary["meta"].get("mode") == "policies":
        print_policies(summary)
        return
    summary["goals"] = goals(summary)
    print_tables(summary)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: report.py RAW_DIR|SUMMARY.json OUT_JSON")
    raw, out = sys.argv[1], sys.argv[2]
    if raw.endswith(".json"):
        # A saved summary: print its tables again (and recompute the goals) without the raw files.
        with open(raw, encoding="utf-8") as f:
            summary = json.load(f)
        report(summary)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, ensure_ascii=False)
            f.write("\n")
        return
    with open(os.path.join(raw, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    summary = {
        "tool": "scripts/bench.sh",
        "format": 1,
        "meta": meta,
        "machine": machine(),
        "load_average_1m": load_stats(os.path.join(raw, "load.txt")),
        "phases": collect(raw, meta),
    }
    report(summary)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
