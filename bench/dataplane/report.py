"""bench.dataplane's reading of its cells: medians over rounds, CPU ratios to the static
reference, the verdicts, the Markdown tables and the plot."""

from __future__ import annotations

from pathlib import Path

from bench.common import NO_MATPLOTLIB, fmt, pyplot, save_plot, verdict_rows
from bench.dataplane.targets import BODY_READING, TARGETS
from bench.dataplane.variants import ABLATE_CONNECTIONS, ALTERNATIVES, VARIANTS


def aggregate(results: list[dict]) -> dict:
    """Per (target, connections): the median over rounds of each number."""
    import statistics
    cells: dict[tuple, list[dict]] = {}
    for r in results:
        key = (r.get("variant") and f"ablate:{r['variant']}") or r["target"], r["connections"]
        cells.setdefault(key, []).append(r)
    out = {}
    for key, rs in cells.items():
        agg = {"requests": sum(r["requests"] for r in rs), "errors": sum(r["errors"] for r in rs), "rounds": len(rs)}
        for field in ("rps", "p50_ms", "p90_ms", "p99_ms", "proxy_cpu_us_per_req", "proxy_user_us_per_req",
                      "proxy_sys_us_per_req", "proxy_cores"):
            values = [r[field] for r in rs if r.get(field) is not None]
            agg[field] = statistics.median(values) if values else None
            agg[field + "_range"] = [min(values), max(values)] if len(values) > 1 else None
        out[key] = agg
    return out


def static_ratios(results: list[dict]) -> dict:
    """Per target (and ablation variant): its CPU per request over static-1w's in the same round, at
    ABLATE_CONNECTIONS; median, min and max over rounds. Paired per round, so a busy round weighs
    on both sides of its ratio."""
    import statistics
    static = {r["round"]: r["proxy_cpu_us_per_req"] for r in results
              if r["target"] == "static-1w" and r["connections"] == ABLATE_CONNECTIONS and not r.get("variant")}
    by_key: dict[str, list[float]] = {}
    for r in results:
        key = (r.get("variant") and f"ablate:{r['variant']}") or r["target"]
        if r["connections"] == ABLATE_CONNECTIONS and r.get("proxy_cpu_us_per_req") and static.get(r["round"]) \
                and key != "static-1w":
            by_key.setdefault(key, []).append(r["proxy_cpu_us_per_req"] / static[r["round"]])
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": len(v)}
            for k, v in by_key.items()}


def verdicts(cells: dict, ratios: dict | None = None) -> list[dict]:
    def get(t, c, f):
        cell = cells.get((t, c))
        return cell[f] if cell else None

    rows = []
    e1, r1 = get("envoy-1w", 16, "rps"), get("router-1p", 16, "rps")
    e2, r2 = get("envoy-2w", 16, "rps"), get("router-2p", 16, "rps")
    if e1 and r1:
        rows.append({"target": "req/s vs the Python smart router, 16 connections (1 Envoy worker vs 1 router "
                               "process)", "goal": ">= 2.5x", "value": e1 / r1, "text": f"{e1 / r1:.1f}x",
                     "met": e1 / r1 >= 2.5})
    if e2 and r2:
        rows.append({"target": "the same, 2 Envoy workers vs 2 router processes", "goal": ">= 2.5x",
                     "value": e2 / r2, "text": f"{e2 / r2:.1f}x", "met": e2 / r2 >= 2.5})
    cpu = get("envoy-1w", 16, "proxy_cpu_us_per_req")
    if cpu is not None:
        rows.append({"target": "Envoy CPU per request (1 worker, 16 connections)", "goal": "<= 60 us",
                     "value": cpu, "text": f"{cpu:.0f} us", "met": cpu <= 60})
    chain = (ratios or {}).get("envoy-1w")
    if chain:
        rows.append({"target": "Envoy CPU per request vs the static reference Envoy in the same run (1 worker, "
                               f"{ABLATE_CONNECTIONS} connections, median of per-round ratios)", "goal": "<= 1.2x",
                     "value": chain["median"], "text": f"{chain['median']:.2f}x ({chain['min']:.2f}–{chain['max']:.2f})",
                     "met": chain["median"] <= 1.2})
    p_env, p_dir = get("envoy-1w", 1, "p50_ms"), get("direct", 1, "p50_ms")
    if p_env is not None and p_dir is not None:
        added = p_env - p_dir
        rows.append({"target": "p50 added over direct, 1 connection (1 worker)", "goal": "<= 0.3 ms",
                     "value": added, "text": f"{added:.3f} ms", "met": added <= 0.3})
    return rows


def markdown(doc: dict) -> str:
    cells = doc["cells"]
    conns = sorted({c for (_, c) in cells})
    names = [t for t in TARGETS if any((t, c) in cells for c in conns)]
    lines = ["| target | conns | req/s | vs direct | vs router (same cores) | p50 ms | p99 ms | proxy CPU us/req "
             "(user + sys) | proxy cores busy | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in conns:
        for t in names:
            cell = cells.get((t, c))
            if not cell:
                continue
            direct = cells.get(("direct", c), {}).get("rps")
            peer = {"envoy-1w": "router-1p", "envoy-2w": "router-2p"}.get(t)
            router = cells.get((peer, c), {}).get("rps") if peer else None
            cpu = (f"{cell['proxy_cpu_us_per_req']:.0f} ({cell['proxy_user_us_per_req']:.0f} + "
                   f"{cell['proxy_sys_us_per_req']:.0f})" if cell["proxy_cpu_us_per_req"] is not None else "–")
            if cell.get("proxy_cpu_us_per_req_range"):
                lo, hi = cell["proxy_cpu_us_per_req_range"]
                cpu += f" [{lo:.0f}–{hi:.0f}]"
            rps_range = cell.get("rps_range")
            rps_text = f"{cell['rps']:,.0f}" + (f" [{rps_range[0]:,.0f}–{rps_range[1]:,.0f}]" if rps_range else "")
            vs_direct = f"{100 * cell['rps'] / direct:.0f}%" if direct else "–"
            vs_router = f"{cell['rps'] / router:.1f}x" if router else "–"
            lines.append(f"| {t} | {c} | {rps_text} | {vs_direct} | {vs_router} | {cell['p50_ms']:.3f} | "
                         f"{cell['p99_ms']:.3f} | {cpu} | {fmt(cell['proxy_cores'], '.2f')} | {cell['errors']} |")
    ablation = [(v, cells.get((f"ablate:{v}", ABLATE_CONNECTIONS))) for v in VARIANTS]
    ablation = [(v, c) for v, c in ablation if c]
    if ablation:
        static = cells.get(("static-1w", ABLATE_CONNECTIONS))
        lines += ["", f"Where Envoy's CPU goes (1 worker, {ABLATE_CONNECTIONS} connections; the +jwt rows add client "
                      "authentication and `+tracing` the tracer to `full`; each row from `full` to `bare` drops one "
                      "more part; the last rows are `full` with the rewrite done another way, compared with `full`):",
                  "",
                  "| variant | what is left out | req/s | p50 ms | CPU us/req (user + sys) | saved vs the row above "
                  "| x static reference (median of per-round ratios) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        prev = full = None
        for v, c in ablation:
            base = full if v in ALTERNATIVES else prev
            saved = f"{base - c['proxy_cpu_us_per_req']:.1f} us" if base is not None else "–"
            if v in ALTERNATIVES:
                saved += " (vs full)"
            spread = c.get("proxy_cpu_us_per_req_range")
            ratio = doc.get("static_ratios", {}).get(f"ablate:{v}")
            vs_static = (f"{ratio['median']:.2f}x [{ratio['min']:.2f}–{ratio['max']:.2f}]" if ratio else
                         f"{c['proxy_cpu_us_per_req'] / static['proxy_cpu_us_per_req']:.2f}x" if static else "–")
            lines.append(f"| {v} | {VARIANTS[v]} | {c['rps']:,.0f} | {c['p50_ms']:.3f} | "
                         f"{c['proxy_cpu_us_per_req']:.1f} ({c['proxy_user_us_per_req']:.1f} + "
                         f"{c['proxy_sys_us_per_req']:.1f})" + (f" [{spread[0]:.0f}–{spread[1]:.0f}]" if spread else "")
                         + f" | {saved} | {vs_static} |")
            if v not in ALTERNATIVES:
                prev = c["proxy_cpu_us_per_req"]
            if v == "full":
                full = prev
        if static:
            lines.append(f"| static reference | `static-1w`: a hand-written static Envoy, route rewrite, static token "
                         f"| {static['rps']:,.0f} | {static['p50_ms']:.3f} | {static['proxy_cpu_us_per_req']:.1f} "
                         f"({static['proxy_user_us_per_req']:.1f} + {static['proxy_sys_us_per_req']:.1f}) | – | 1.00x |")
    reading = [(cell, cells.get((f"body:{cell}", ABLATE_CONNECTIONS))) for cell in BODY_READING]
    reading = [(cell, c) for cell, c in reading if c]
    if reading:
        lines += ["", f"The OpenAI front door's body reading (envoy-1w, {ABLATE_CONNECTIONS} connections, the same "
                      f"{doc['settings'].get('chat_body_bytes', '~1 KB')} B chat body to the same gemini cluster):", "",
                  "| path | what Envoy does | req/s | p50 ms | CPU us/req (user + sys) | extra vs the row above |",
                  "|---|---|---:|---:|---:|---:|"]
        prev = None
        for cell, c in reading:
            extra = f"{c['proxy_cpu_us_per_req'] - prev:+.1f} us" if prev is not None else "–"
            spread = c.get("proxy_cpu_us_per_req_range")
            lines.append(f"| `{BODY_READING[cell][0]}` | {BODY_READING[cell][1]} | {c['rps']:,.0f} | "
                         f"{c['p50_ms']:.3f} | {c['proxy_cpu_us_per_req']:.1f} ({c['proxy_user_us_per_req']:.1f} + "
                         f"{c['proxy_sys_us_per_req']:.1f})" + (f" [{spread[0]:.0f}–{spread[1]:.0f}]" if spread else "")
                         + f" | {extra} |")
            prev = c["proxy_cpu_us_per_req"]
    counted = [r for r in doc["results"] if r.get("instructions_per_req") and r["connections"] == ABLATE_CONNECTIONS]
    if counted:
        lines += ["", *instruction_rows(counted)]
    perf = doc.get("perf")
    if perf:
        lines += ["", f"perf samples of Envoy (1 worker, {ABLATE_CONNECTIONS} connections, an extra cell): "
                  + ", ".join(f"{b['binary']} {b['share_pct']:.1f}%" for b in perf["by_binary"])
                  + "; top kernel functions: "
                  + ", ".join(f"{k['symbol']} {k['share_pct']:.1f}%" for k in perf["top_kernel"][:5])]
    lines += ["", *verdict_rows(doc["verdicts"])]
    return "\n".join(lines)


def instruction_rows(counted: list[dict]) -> list[str]:
    """`--instructions`: Envoy's instructions per request (callgrind, user space), each row over
    the static reference's and over `full`'s."""
    import statistics
    per: dict[str, list[int]] = {}
    for r in counted:
        per.setdefault(r.get("variant") or r["target"], []).append(r["instructions_per_req"])
    per_req = {k: statistics.median(v) for k, v in per.items()}
    static, full = per_req.get("static-1w"), per_req.get("full")
    rows = [f"Instructions per request (callgrind, user space; 1 worker, {ABLATE_CONNECTIONS} connections):", "",
            "| row | what it is | instructions/request | x static reference | x `full` |", "|---|---|---:|---:|---:|"]
    for key, value in per_req.items():
        what = VARIANTS.get(key, "the target of the same name above")
        rows.append(f"| {key} | {what} | {value:,.0f} | " + (f"{value / static:.2f}x" if static else "–")
                    + " | " + (f"{value / full:.2f}x" if full else "–") + " |")
    return rows


def plot(doc: dict, path: Path) -> str:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB

    cells = doc["cells"]
    conns = sorted({c for (t, c) in cells if t in TARGETS})
    names = [t for t in TARGETS if any((t, c) in cells for c in conns)]
    colors = {"direct": "tab:gray", "static-1w": "tab:green", "envoy-1w": "tab:blue", "envoy-2w": "tab:cyan",
              "router-1p": "tab:orange", "router-2p": "tab:red"}
    ablation = [(v, cells.get((f"ablate:{v}", ABLATE_CONNECTIONS))) for v in VARIANTS]
    ablation = [(v, c) for v, c in ablation if c]
    fig, grid = plt.subplots(2, 2, figsize=(14, 9.5))
    axes = grid.flatten()
    width = 0.8 / len(names)
    for i, t in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(conns))]
        rps = [cells.get((t, c), {}).get("rps") or 0 for c in conns]
        axes[0].bar(xs, rps, width, color=colors[t], label=t)
        p50 = [cells.get((t, c), {}).get("p50_ms") or float("nan") for c in conns]
        p99 = [cells.get((t, c), {}).get("p99_ms") or float("nan") for c in conns]
        axes[1].bar(xs, p99, width, color=colors[t], alpha=0.35)
        axes[1].bar(xs, p50, width, color=colors[t], label=t)
        if t != "direct":
            cpu = [cells.get((t, c), {}).get("proxy_cpu_us_per_req") or 0 for c in conns]
            axes[2].bar(xs, cpu, width, color=colors[t], label=t)
    for ax, title, ylabel in ((axes[0], "throughput", "requests/s (log)"),
                              (axes[1], "latency: p50 (solid), p99 (light)", "ms (log)"),
                              (axes[2], "proxy CPU per request", "us of CPU per request")):
        ax.set_xticks(range(len(conns)), [f"{c} conn" for c in conns])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].axhline(60, color="black", ls="--", lw=1, label="target 60 us")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    if ablation:
        ax = axes[3]
        ys = range(len(ablation))
        ax.barh(list(ys), [c["proxy_user_us_per_req"] for _, c in ablation], color="tab:blue", label="user")
        ax.barh(list(ys), [c["proxy_sys_us_per_req"] for _, c in ablation],
                left=[c["proxy_user_us_per_req"] for _, c in ablation], color="tab:purple", label="kernel")
        ax.set_yticks(list(ys), [v for v, _ in ablation], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(60, color="black", ls="--", lw=1)
        ax.set_xlabel("us of Envoy CPU per request")
        ax.set_title(f"Envoy CPU by filter chain ({ABLATE_CONNECTIONS} conn, 1 worker)", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    else:
        axes[3].set_visible(False)
    fig.suptitle(f"Data plane, {doc['settings']['body_bytes']} B JSON POST, backend {doc['backend']}, "
                 f"load {doc['load'].split()[0]}; {doc['machine']['cores']} shared cores", fontsize=10)
    return save_plot(fig, path)
