"""bench/controlplane.py's output: verdicts against the targets, the markdown tables, the plot."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.common import NO_MATPLOTLIB, pyplot, save_plot, verdict_rows
from bench.fanout import _ms


def _floor_ratios(product: dict, floor: dict) -> dict:
    edit = (product["edit_all_s_median"] / floor["edit_all_s_median"]
            if product.get("edit_all_s_median") and floor.get("edit_all_s_median") else None)
    return {"sync": product["sync"]["sync_all_s"] / floor["sync"]["sync_all_s"], "edit": edit}


def _pair_ratios(product: dict, floor: dict) -> dict:
    """" (lo-hi)": the range of the ratios of each product run to the floor run beside it."""
    runs = list(zip(product.get("runs", []), floor.get("runs", [])))
    if len(runs) < 2:
        return {"sync": "", "edit": ""}
    sync = [p["sync_all_s"] / f["sync_all_s"] for p, f in runs]
    edit = [p["edit_all_s_median"] / f["edit_all_s_median"] for p, f in runs
            if p.get("edit_all_s_median") and f.get("edit_all_s_median")]
    return {"sync": f" ({min(sync):.2f}-{max(sync):.2f})",
            "edit": f" ({min(edit):.2f}-{max(edit):.2f})" if edit else ""}


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def verdicts(doc: dict) -> list[dict]:
    rows = []
    for r in doc.get("edit_to_ack", []):
        if r["p99_s"] is not None:
            rows.append({"target": f"config edit -> both Envoys ACK, p99 ({r['mode']}, {r['count']} edits)",
                         "goal": "< 250 ms", "text": f"{r['p99_s'] * 1000:.0f} ms (p50 {r['p50_s'] * 1000:.0f})",
                         "met": r["p99_s"] < 0.25 and r["complete"] == r["count"]})
    fan = {f["clients"]: f for f in doc.get("fanout", []) if f.get("mode", "sotw") == "sotw"}
    if 1000 in fan or fan:
        big = fan.get(1000) or fan[max(fan)]
        v = big["edit_all_s_max"]
        rows.append({"target": f"edit -> all {big['clients']:,} simulated clients ACKed (worst of "
                               f"{len(big.get('edits', []))})", "goal": "< 1 s",
                     "text": f"{v:.2f} s" if v is not None else "incomplete", "met": v is not None and v < 1.0})
        # The largest count: fixed costs (allocator arenas, first-use caches) weigh least there.
        per = big["rss_per_client_kb"]
        others = ", ".join(f"{f['rss_per_client_kb']:.0f} KB at {n:,}" for n, f in sorted(fan.items()) if f is not big)
        rows.append({"target": f"control-plane RSS per connected client ({big['clients']:,} clients)",
                     "goal": "< 64 KB", "text": f"{per:.0f} KB" + (f" ({others})" if others else ""),
                     "met": per < 64})
    products = {(f["clients"], f.get("mode", "sotw")): f for f in doc.get("fanout", [])}
    floors = {(f["clients"], f.get("mode", "sotw")): f for f in doc.get("floor", [])}
    for mode in ("sotw", "delta"):
        n = max((c for c, m in set(products) & set(floors) if m == mode), default=None)
        if n is None:
            continue
        product = products[n, mode]
        r = _floor_ratios(product, floors[n, mode])
        rows.append({"target": f"edit -> all {n:,} ACKed ({mode}), against the trivial floor server (median)",
                     "goal": "≤ 1.2x", "text": _fmt_ratio(r["edit"]), "met": r["edit"] is not None and r["edit"] <= 1.2})
        rows.append({"target": f"first full set to all {n:,} ({mode}), against the trivial floor server",
                     "goal": "≤ 1.2x", "text": _fmt_ratio(r["sync"]), "met": r["sync"] <= 1.2})
        if mode == "delta":
            per = product["rss_per_client_kb"]
            rows.append({"target": f"control-plane RSS per connected client ({n:,} {mode} clients)",
                         "goal": "< 64 KB", "text": f"{per:.0f} KB", "met": per < 64})
    for g in doc.get("big", []):
        size = f"{g['models']:,} models x {g['regions']} regions"
        rows.append({"target": f"validate, {size}", "goal": "< 1 s", "text": f"{g['validate_s']:.2f} s",
                     "met": g["validate_s"] < 1.0})
        rows.append({"target": f"serve start -> a connected Envoy's full set, {size}", "goal": "< 3 s",
                     "text": f"{g['start_to_full_set_s']:.2f} s", "met": g["start_to_full_set_s"] < 3.0})
        for kind, what in (("model", "one model's policy"), ("policy", "the global policy")):
            worst = g[f"edit_{kind}_s_max"]
            rows.append({"target": f"edit of {what} (file written) -> all {g['clients']} Envoys ACKed, {size}",
                         "goal": "< 1 s", "text": f"{worst:.2f} s" if worst is not None else "incomplete",
                         "met": worst is not None and worst < 1.0})
    for b in doc.get("build", []):
        if (b["models"], b["regions"]) == (100, 40):
            rows.append({"target": "build + serialize, 100 models x 40 regions, one node group", "goal": "< 100 ms",
                         "text": f"{b['total_ms']:.0f} ms", "met": b["total_ms"] < 100})
    return rows


def markdown(doc: dict) -> str:
    lines: list[str] = []
    if doc.get("edit_to_ack"):
        lines += ["(i) Config edit -> every Envoy ACKed (2 real Envoys):", "",
                  "| xDS | edits | complete | p50 ms | p99 ms | max ms | write -> reload starts | reload | "
                  "reload -> first push | first push -> last ACK |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in doc["edit_to_ack"]:
            m = r["median_parts_s"]
            lines.append(f"| {r['mode']} | {r['count']} | {r['complete']} | {_ms(r['p50_s'])} | {_ms(r['p99_s'])} | "
                         f"{_ms(r['max_s'])} | {_ms(m['write_to_reload_start_s'])} | {_ms(m['reload_s'])} | "
                         f"{_ms(m['reload_end_to_first_push_s'])} | {_ms(m['first_push_to_last_ack_s'])} |")
        lines += ["", "(the last four columns: medians over the edits, ms)", ""]
    if doc.get("fanout"):
        lines += ["(ii) Simulated ADS clients (separate process; one connection each):", "",
                  "| xDS | clients | initial sync of all | edit -> all ACKed (median / worst) | client p50 / p99 | "
                  "control-plane CPU per edit | CP CPU busy | responses per edit | RSS before -> synced | "
                  "RSS per client |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in doc["fanout"]:
            e = f.get("edits", [])
            p50 = statistics.median([x["p50_s"] for x in e if x.get("p50_s") is not None] or [float("nan")])
            p99 = statistics.median([x["p99_s"] for x in e if x.get("p99_s") is not None] or [float("nan")])
            share = statistics.median([x["cp_cpu_share"] for x in e if x.get("cp_cpu_share")] or [float("nan")])
            responses = statistics.median([x["responses"] for x in e] or [0])
            lines.append(
                f"| {f.get('mode', 'sotw')} | {f['clients']:,} | {f['sync']['sync_all_s']:.2f} s | "
                f"{_ms(f['edit_all_s_median'], '.0f')} / "
                f"{_ms(f['edit_all_s_max'], '.0f')} ms | {_ms(p50, '.0f')} / {_ms(p99, '.0f')} ms | "
                f"{_ms(f['cp_cpu_s_median'], '.0f')} ms | {100 * share:.0f}% | {responses:,.0f} | "
                f"{f['rss_before_mb']:.1f} -> {f['rss_synced_mb']:.1f} MB | {f['rss_per_client_kb']:.1f} KB |")
        lines.append("")
    floors = {(f["clients"], f.get("mode", "sotw")): f for f in doc.get("floor", [])}
    if floors:
        lines += ["(ii) The product against the trivial floor server (bench/xds_floor.py), same run, same clients "
                  "(with repeats: medians, and the range of the ratios of each product/floor pair):",
                  "", "| xDS | clients | runs | initial sync: product / floor | ratio | edit -> all ACKed (median): "
                  "product / floor | ratio | RSS per client: product / floor | load average (1 min) at the runs |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in doc["fanout"]:
            fl = floors.get((f["clients"], f.get("mode", "sotw")))
            if fl is None:
                continue
            r = _floor_ratios(f, fl)
            pairs = _pair_ratios(f, fl)
            loads = [x["loadavg_start"][0] for x in f.get("runs", [f]) + fl.get("runs", [fl]) if x.get("loadavg_start")]
            load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "–"
            lines.append(f"| {f.get('mode', 'sotw')} | {f['clients']:,} | {len(f.get('runs', [f]))} | "
                         f"{f['sync']['sync_all_s']:.2f} / {fl['sync']['sync_all_s']:.2f} s | "
                         f"{r['sync']:.2f}x{pairs['sync']} | {_ms(f['edit_all_s_median'], '.0f')} / "
                         f"{_ms(fl['edit_all_s_median'], '.0f')} ms | {_fmt_ratio(r['edit'])}{pairs['edit']} | "
                         f"{f['rss_per_client_kb']:.1f} / {fl['rss_per_client_kb']:.1f} KB | {load} |")
        lines.append("")
    if doc.get("big"):
        lines += ["(iv) Large configs (wall clock; one simulated Envoy per region):", "",
                  "| models x regions | validate | serve start -> healthy | -> full set | edit -> all ACKed, "
                  "one model's policy (median / worst) | edit -> all ACKed, global policy (median / worst) "
                  "| RSS synced |", "|---|---:|---:|---:|---:|---:|---:|"]
        for g in doc["big"]:
            lines.append(f"| {g['models']:,} x {g['regions']} | {g['validate_s']:.2f} s | "
                         f"{g['start_to_healthy_s']:.2f} s | {g['start_to_full_set_s']:.2f} s | "
                         f"{_ms(g['edit_model_s_median'], '.0f')} / {_ms(g['edit_model_s_max'], '.0f')} ms | "
                         f"{_ms(g['edit_policy_s_median'], '.0f')} / {_ms(g['edit_policy_s_max'], '.0f')} ms | "
                         f"{g['rss_synced_mb']:.0f} MB |")
        lines.append("")
    if doc.get("build"):
        lines += ["(iii) Build + serialize for one node group (median), and a whole reload:", "",
                  "| models x regions | clusters / endpoints / routes | serialized | build ms | serialize ms | "
                  "total ms | reload: validate YAML | reload: all region groups | reload total |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for b in doc["build"]:
            res = b["resources"]
            est = " (est.)" if b["reload_estimated"] else ""
            lines.append(f"| {b['models']:,} x {b['regions']} | {res.get('Cluster', 0):,} / "
                         f"{res.get('ClusterLoadAssignment', 0):,} / 1 | {b['wire_kb']:,.0f} KB | "
                         f"{b['build_ms']:.1f} | {b['serialize_ms']:.1f} | {b['total_ms']:.1f} | "
                         f"{b['validate_ms']:,.0f} ms | {b['all_groups_ms']:,.0f} ms{est} | "
                         f"{b['reload_ms'] / 1000:.2f} s{est} |")
        lines.append("")
    lines += verdict_rows(doc["verdicts"])
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> str:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB

    panels = [p for p in ("edit_to_ack", "fanout", "build") if doc.get(p)]
    if not panels:  # e.g. --parts iv alone: its figures are in the tables
        return "no plot for these parts"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "edit_to_ack":
            for r, color in zip(doc["edit_to_ack"], ("tab:blue", "tab:orange")):
                xs = [e["edit"] for e in r["edits"] if e["write_to_last_ack_s"] is not None]
                ys = [e["write_to_last_ack_s"] * 1000 for e in r["edits"] if e["write_to_last_ack_s"] is not None]
                ax.plot(xs, ys, "o-", ms=3, color=color, label=f"{r['mode']}: p50 {_ms(r['p50_s'], '.0f')}, "
                                                              f"p99 {_ms(r['p99_s'], '.0f')} ms")
                rs = [(e["edit"], e["write_to_reload_start_s"] * 1000) for e in r["edits"]
                      if e["write_to_reload_start_s"] is not None]
                ax.plot([x for x, _ in rs], [y for _, y in rs], ":", color=color, lw=1,
                        label=f"{r['mode']}: write -> reload starts")
            ax.axhline(250, color="black", ls="--", lw=1, label="target p99 250 ms")
            ax.set_ylim(bottom=0)
            ax.set_xlabel("edit #")
            ax.set_ylabel("ms from the file write")
            ax.set_title("(i) edit -> both real Envoys ACKed", fontsize=10)
        elif panel == "fanout":
            fan = [f for f in doc["fanout"] if f.get("mode", "sotw") == "sotw"]
            xs = [f["clients"] for f in fan]
            ax.plot(xs, [(f["edit_all_s_max"] or float("nan")) * 1000 for f in fan], "o-", label="edit -> all ACKed (worst)")
            ax.plot(xs, [(f["edit_all_s_median"] or float("nan")) * 1000 for f in fan], "o--", label="(median)")
            ax.plot(xs, [f["sync"]["sync_all_s"] * 1000 for f in fan], "s:", label="initial sync of all")
            ax.axhline(1000, color="black", ls="--", lw=1, label="target 1 s at 1,000")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("simulated ADS clients")
            ax.set_ylabel("ms")
            ax2 = ax.twinx()
            ax2.bar(xs, [f["rss_per_client_kb"] for f in fan], width=[x * 0.3 for x in xs], alpha=0.2,
                    color="tab:green")
            ax2.set_ylabel("RSS per client, KB (green bars)", color="tab:green")
            ax2.axhline(64, color="tab:green", ls=":", lw=1)
            ax.set_zorder(ax2.get_zorder() + 1)  # lines and legend above the bars
            ax.patch.set_visible(False)
            ax.set_title("(ii) fan-out to simulated Envoys", fontsize=10)
        else:
            by_models: dict[int, list] = {}
            for b in doc["build"]:
                by_models.setdefault(b["models"], []).append(b)
            for models, bs in sorted(by_models.items()):
                ax.plot([b["regions"] for b in bs], [b["total_ms"] for b in bs], "o-", label=f"{models:,} models: one group")
                ax.plot([b["regions"] for b in bs], [b["reload_ms"] for b in bs], "x:", label=f"{models:,} models: reload")
            ax.axhline(100, color="black", ls="--", lw=1, label="target 100 ms (100 x 40)")
            ax.set_yscale("log")
            ax.set_xlabel("regions")
            ax.set_ylabel("ms")
            ax.set_title("(iii) build + serialize", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"Control plane; {doc['machine']['cores']} shared cores, Python {doc['machine']['python']}",
                 fontsize=10)
    return save_plot(fig, path)
