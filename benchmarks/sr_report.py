"""Tables, paired statistics, decisions and plots of an ``sr_benchmark.py`` result, from its
``results.json`` alone (so every committed table and plot can be regenerated)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Optional

A_SWEEP = ("ours_a1", "ours_a0.1", "ours_a0.001")

# Paired comparisons (same seeds): (candidate, baseline, what it measures, decides a default?)
COMPARISONS = (
    ("default_rsign", "default", "RSign (learned threshold before the sign)", True),
    ("default_rprelu", "default", "RPReLU on the binary branch", True),
    ("default_bbcu", "default", "BBCU block (shortcut per conv, block skip removed)", True),
    ("default_distill", "default", "distillation from the FP run, from scratch", True),
    ("default_upsampler", "default", "binarizing the upsampler (its cost in dB)", False),
    ("default_2x", "default", "twice the iterations (from scratch)", False),
    ("ckpt", "default_2x", "starting from the FP checkpoint vs from scratch, same total iterations", True),
    ("ckpt_distill", "ckpt", "distillation when starting from the FP checkpoint", True),
    ("ckpt_distill", "default_2x", "FP checkpoint + distillation vs from scratch, same total iterations", True),
    ("ckpt_distill", "fp", "FP checkpoint + distillation vs the FP checkpoint it starts from", False),
    ("new_default", "default", "the new default vs the old one", False),
)


def by_variant(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(results["runs"], key=lambda r: (r["variant"], r["seed"])):
        out.setdefault(r["variant"], []).append(r)
    return out


def mean(runs: list[dict], s: str, key: str = "psnr") -> float:
    return statistics.mean(r["metrics"][s][key] for r in runs)


def sd(runs: list[dict], s: str) -> Optional[float]:
    vals = [r["metrics"][s]["psnr"] for r in runs]
    return statistics.stdev(vals) if len(vals) > 1 else None


def paired(by: dict[str, list[dict]], a: str, b: str, sets: list[str]) -> Optional[dict]:
    """Per-seed differences ``a - b`` on each set (seeds both ran), their mean, and on the
    first set the standard error; ``adopt`` is the decision rule: mean gain on the first set
    larger than twice its standard error (at least 2 seeds) and the same sign on the others."""
    if a not in by or b not in by:
        return None
    ra, rb = {r["seed"]: r for r in by[a]}, {r["seed"]: r for r in by[b]}
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return None
    diffs = {s: [ra[k]["metrics"][s]["psnr"] - rb[k]["metrics"][s]["psnr"] for k in seeds] for s in sets}
    first = diffs[sets[0]]
    se = statistics.stdev(first) / math.sqrt(len(first)) if len(first) > 1 else None
    m = {s: statistics.mean(d) for s, d in diffs.items()}
    adopt = (se is not None and m[sets[0]] > 2 * se and all(m[s] > 0 for s in sets[1:]))
    return {"seeds": seeds, "diffs": diffs, "mean": m, "se": se, "adopt": adopt}


def claims(results: dict) -> list[str]:
    """Round 1's four claims, judged on Set5 PSNR with the seed spread as the noise floor."""
    by = by_variant(results)
    first = results["config"]["eval_sets"][0]
    spreads = [max(v) - min(v) for v in ([r["metrics"][first]["psnr"] for r in runs] for runs in by.values())
               if len(v) > 1]
    noise = max(spreads) if spreads else None
    floor = noise if noise is not None else 0.05

    def delta(a: str, b: str) -> Optional[float]:
        return mean(by[a], first) - mean(by[b], first) if a in by and b in by else None

    def verdict(d: Optional[float]) -> str:
        if d is None:
            return "not run"
        if d > floor:
            return "held"
        return "did not hold (the opposite)" if d < -floor else "could not be told at this budget"

    def line(text: str, d: Optional[float]) -> str:
        return text + (f"{d:+.3f} dB -> {verdict(d)}" if d is not None else "not run")

    lines = [f"Noise floor: largest spread between seeds on {first} = "
             + (f"{noise:.3f} dB" if noise is not None else "n/a (one seed; 0.05 dB used)"),
             line(f"1. Prior vs none (ours - ours_no_prior, {first}): ", delta("ours", "ours_no_prior"))]
    if "bnn" in by and "ours" in by:
        lines.append(line("   ours vs plain BNN: ", delta("ours", "bnn")))
    lines.append(line("2. Shortcuts (ours - ours_no_shortcut): ", delta("ours", "ours_no_shortcut")))
    lines.append(line("3. Curriculum (ours - ours_no_curriculum): ", delta("ours", "ours_no_curriculum")))
    if delta("ours", "q5") is not None:
        lines.append(f"4. Close to 5-bit (ours - q5): {delta('ours', 'q5'):+.3f} dB; gap to full precision: "
                     f"{delta('ours', 'fp'):+.3f} dB")
    return lines


def _iterations(results: dict, by: dict[str, list[dict]], variant: str) -> str:
    """A row's training iterations; a row that needs the FP run (its teacher or its start) also
    counts the FP run's iterations, which are part of its budget."""
    runs = by[variant]
    iters = runs[0].get("iters") or results["config"]["iters"]
    v = results["variants"].get(variant, {})
    if not (v.get("distill") or v.get("init")):
        return f"{iters:,}"
    fp_iters = by["fp"][0].get("iters") if "fp" in by else None
    return f"{iters:,} + {(fp_iters or results['config']['iters']):,} (FP)"


def _table(results: dict, by: dict[str, list[dict]], sets: list[str]) -> list[str]:
    timing = results.get("step_time_s", {})
    fp = by.get("fp")
    lines = ["| variant | " + " | ".join(f"{s} PSNR / SSIM" for s in sets) + f" | gap to FP ({sets[0]}) | seeds | "
             "iterations | train wall (s) | step time vs FP |", "|---|" + "---|" * (len(sets) + 5)]
    bic = results["bicubic"]
    lines.append("| bicubic | " + " | ".join(f"{bic[s]['psnr']:.2f} / {bic[s]['ssim']:.4f}" for s in sets)
                 + (f" | {bic[sets[0]]['psnr'] - mean(fp, sets[0]):+.2f}" if fp else " | ") + " | - | - | - | - |")
    for v, runs in by.items():
        cells = []
        for s in sets:
            dev = sd(runs, s)
            spread = f" ± {dev:.2f}" if dev is not None else ""
            cells.append(f"{mean(runs, s):.2f}{spread} / {mean(runs, s, 'ssim'):.4f}")
        gap = f"{mean(runs, sets[0]) - mean(fp, sets[0]):+.2f}" if fp else "-"
        ratio = f"{timing[v] / timing['fp']:.2f}x" if v in timing and "fp" in timing else "-"
        wall = statistics.mean(r["wall_s"] for r in runs)
        label = results["variants"].get(v, {}).get("label", v)
        iters = _iterations(results, by, v)
        lines.append(f"| {v}: {label} | " + " | ".join(cells) + f" | {gap} | {len(runs)} | {iters} | {wall:.0f} "
                     f"| {ratio} |")
    return lines


def _paired_section(by: dict[str, list[dict]], sets: list[str]) -> list[str]:
    rows = []
    for a, b, what, decides in COMPARISONS:
        p = paired(by, a, b, sets)
        if p is None:
            continue
        per_seed = ", ".join(f"{d:+.2f}" for d in p["diffs"][sets[0]])
        se = f"{p['se']:.3f}" if p["se"] is not None else "-"
        if not decides:
            verdict = "(measurement)"
        elif p["adopt"]:
            verdict = "**adopt**"
        else:
            verdict = "keep off" if len(p["seeds"]) > 1 else "undecided (1 seed)"
        rows.append(f"| {a} - {b} | {what} | {p['mean'][sets[0]]:+.3f} | {se} | {per_seed} | "
                    + " | ".join(f"{p['mean'][s]:+.3f}" for s in sets[1:]) + f" | {verdict} |")
    if not rows:
        return []
    return ["", "## Paired differences (same seeds) and decisions", "",
            f"Rule: an ingredient goes into the shipped default only if its mean paired gain on {sets[0]} is larger "
            f"than twice its standard error and has the same sign on {' and '.join(sets[1:])}.", "",
            f"| difference | what it measures | {sets[0]} mean (dB) | SE | per seed ({sets[0]}) | "
            + " | ".join(f"{s} mean" for s in sets[1:]) + " | decision |",
            "|---|---|---|---|---|" + "---|" * (len(sets) - 1) + "---|", *rows]


def _gap_curve(by: dict[str, list[dict]], sets: list[str]) -> list[str]:
    """The shipped default's gap to full precision at every validation (mean over the seeds
    both ran): whether the gap shrinks or grows with the budget."""
    if "fp" not in by or "default" not in by:
        return []
    seeds = sorted({r["seed"] for r in by["fp"]} & {r["seed"] for r in by["default"]})
    fp_its, fp, _, _ = _curves([r for r in by["fp"] if r["seed"] in seeds], "val_curve")
    d_its, dflt, _, _ = _curves([r for r in by["default"] if r["seed"] in seeds], "val_curve")
    common = sorted(set(fp_its) & set(d_its))
    if not common:
        return []
    f, d = dict(zip(fp_its, fp)), dict(zip(d_its, dflt))
    return ["", f"## Gap of the default to full precision during training ({sets[0]} validation, seeds "
            f"{', '.join(map(str, seeds))})", "", "| iteration | " + " | ".join(f"{it:,}" for it in common) + " |",
            "|---|" + "---|" * len(common),
            "| fp | " + " | ".join(f"{f[it]:.2f}" for it in common) + " |",
            "| default | " + " | ".join(f"{d[it]:.2f}" for it in common) + " |",
            "| gap | " + " | ".join(f"{d[it] - f[it]:+.2f}" for it in common) + " |"]


def markdown(results: dict) -> str:
    by = by_variant(results)
    sets = results["config"]["eval_sets"]
    cfg = results["config"]
    env = results["environment"]
    lines = [f"# SR binarization benchmark, preset `{results['preset']}`", "",
             f"EDSR x{cfg['scale']}, {cfg['num_feat']} features, {cfg['num_block']} blocks; batch {cfg['batch']}, "
             f"LR patch {cfg['lr_patch']}, {cfg['iters']} iterations unless the row says otherwise, Adam lr "
             f"{cfg['lr']} halved at 2/3; training images {' + '.join(cfg['train_sets'])} (LR by bicubic on the fly); "
             f"Y-channel PSNR/SSIM, border {cfg['scale']} cropped. Paper recipe: {results['paper_recipe']}.",
             f"Machine: {env['processor']} ({env['threads']} threads)"
             + (f", GPU {env['cuda']}" if env.get("cuda") else "")
             + f"; grid wall time {results['grid_wall_s'] / 60:.1f} min.", "",
             *_table(results, by, sets), "",
             "(± = standard deviation over seeds.) Step time: median training step on an otherwise idle machine "
             f"(batch {cfg['batch']}, LR patch {cfg['lr_patch']}); full precision "
             f"{results.get('step_time_s', {}).get('fp', float('nan')):.3f} s."]
    if "distill" in results:
        lines += ["", f"Distillation: {json.dumps(results['distill'])} (teacher: the `fp` run of the same seed)."]
    lines += _paired_section(by, sets)
    lines += _gap_curve(by, sets)
    if "ours" in by:
        lines += ["", "## Claims (round 1)", ""]
        lines += [f"- {c}" if not c.startswith("   ") else f"  - {c.strip()}" for c in claims(results)]
    if any(v in by for v in A_SWEEP):
        lines += ["", "## The prior's half-width a (Adam lr {})".format(cfg["lr"]), "",
                  f"| a | {sets[0]} PSNR | mean flip ratio per print interval (first / last) |", "|---|---|---|"]
        for v in A_SWEEP[:2] + ("ours",) + A_SWEEP[2:] + ("ours_no_prior",):
            if v in by and by[v][0]["flip_curve"]:
                fl = by[v][0]["flip_curve"]
                label = {"ours_no_prior": "none", "ours": f"{cfg['prior_a']:g}"}.get(v, v.replace("ours_a", ""))
                lines.append(f"| {label} | {mean(by[v], sets[0]):.2f} | {fl[0][1]:.2e} / {fl[-1][1]:.2e} |")
    return "\n".join(lines) + "\n"


def _curves(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max over seeds of a per-iteration curve, at the iterations all seeds have."""
    common = sorted(set.intersection(*(set(it for it, _ in r[key]) for r in runs))) if runs else []
    vals = [[dict(r[key])[it] for r in runs] for it in common]
    return common, [statistics.mean(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = by_variant(results)
    colors = plt.cm.tab20.colors
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for k, (v, runs) in enumerate(by.items()):
        its, m, lo, hi = _curves(runs, "val_curve")
        if not its:
            continue
        color = colors[(2 * k) % 20 + (k >= 10)]
        ax.plot(its, m, marker="o", ms=3, label=f"{v} ({len(runs)})", color=color,
                ls="--" if v in ("fp", "q5", "q4") else "-")
        if len(runs) > 1:
            ax.fill_between(its, lo, hi, color=color, alpha=0.15)
    ax.set_xlabel("iteration")
    ax.set_ylabel("Set5 PSNR (dB, Y)")
    ax.set_title(f"validation PSNR (mean over seeds, band: min..max), preset {results['preset']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "val_psnr.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for k, (v, runs) in enumerate(by.items()):
        if not runs[0]["flip_curve"]:
            continue
        its, m, _, _ = _curves(runs, "flip_curve")
        prior = (results["variants"].get(v, {}).get("binarize") or {}).get("prior_a") is not None
        ax.plot(its, [max(x, 1e-7) for x in m], label=v, color=colors[(2 * k) % 20 + (k >= 10)],
                ls="-" if prior else "--")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("fraction of weight signs flipped per print interval")
    ax.set_title("flip ratio (mean over seeds; dashed: no prior)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "flip_ratio.png", dpi=120)
    plt.close(fig)


def write_outputs(results: dict, out: Path) -> None:
    """``results.json``, ``results.md`` and the plots into ``out`` (learning-curve tables and
    plots for a ladder)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if results.get("ladder"):
        (out / "results.md").write_text(ladder_markdown(results))
        ladder_plots(results, out)
    else:
        (out / "results.md").write_text(markdown(results))
        plots(results, out)


# -- learning curves (round 3: each budget its own full-schedule run) ---------------------------
DECIDE_AT, GUARD_AT, GUARD_DB = 8000, 2000, 0.05


def by_budget(results: dict) -> dict[int, dict[str, list[dict]]]:
    """``{budget: {variant: runs}}``; a run without a budget is at the preset's iterations."""
    out: dict[int, dict[str, list[dict]]] = {}
    for r in sorted(results["runs"], key=lambda r: (r["variant"], r["seed"])):
        budget = r.get("budget") or results["config"]["iters"]
        out.setdefault(budget, {}).setdefault(r["variant"], []).append(r)
    return dict(sorted(out.items()))


def baseline_of(variant: str, results: dict) -> Optional[str]:
    """What a ladder variant is compared with: an ingredient ``<candidate>_<x>`` with its
    candidate, a candidate (or ``default_<x>``) with ``default``; ``None`` for fp and default."""
    if variant in ("fp", "default", "q5", "q4", "bnn"):
        return None
    for base in sorted(results["variants"], key=len, reverse=True):
        if variant.startswith(base + "_") and base != variant:
            return base
    return "default"


def gap_rows(ladder: dict[int, dict[str, list[dict]]], sets: list[str]) -> dict[str, dict[int, dict]]:
    """Per variant and budget, the paired gap to full precision (same seeds) on every set."""
    rows: dict[str, dict[int, dict]] = {}
    for budget, by in ladder.items():
        for v in by:
            if v == "fp":
                continue
            p = paired(by, v, "fp", sets)
            if p is not None:
                rows.setdefault(v, {})[budget] = p
    return rows


def slope(points: list[tuple[int, float]]) -> Optional[float]:
    """Least-squares slope of value against log2(budget): dB per doubling of the budget."""
    if len({b for b, _ in points}) < 2:
        return None
    xs = [math.log2(b) for b, _ in points]
    ys = [v for _, v in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def ladder_decision(ladder: dict[int, dict[str, list[dict]]], a: str, b: str, sets: list[str]) -> dict:
    """The round-3 rule for adopting ``a`` over ``b``: its paired gain on the first set at
    :data:`DECIDE_AT` iterations is larger than 2 SE with the same sign on the other sets, and at
    :data:`GUARD_AT` it loses no more than :data:`GUARD_DB` dB."""
    at = {budget: paired(by, a, b, sets) for budget, by in ladder.items()}
    decide, guard = at.get(DECIDE_AT), at.get(GUARD_AT)
    if decide is None or decide["se"] is None:
        verdict = "undecided (no 8k pair of 2+ seeds)"
    elif not decide["adopt"]:
        verdict = "keep off"
    elif guard is not None and guard["mean"][sets[0]] < -GUARD_DB:
        verdict = f"keep off (loses {guard['mean'][sets[0]]:+.3f} dB at {GUARD_AT:,})"
    else:
        verdict = "**adopt**"
    return {"at": at, "verdict": verdict}


def ladder_markdown(results: dict) -> str:
    ladder = by_budget(results)
    sets = results["config"]["eval_sets"]
    cfg, env = results["config"], results["environment"]
    lines = [f"# SR binarization learning curves, preset `{results['preset']}`", "",
             f"EDSR x{cfg['scale']}, {cfg['num_feat']} features, {cfg['num_block']} blocks; batch {cfg['batch']}, "
             f"LR patch {cfg['lr_patch']}; training images {' + '.join(cfg['train_sets'])}. Each budget is its own "
             f"full-schedule run: Adam lr {cfg['lr']} halved at 2/3 of it, the curriculum (where used) over its first "
             "half, the prior annealing (where used) over its last third, validation 8 times. Y-channel PSNR/SSIM, "
             f"border {cfg['scale']} cropped. Machine: {env['processor']} ({env['threads']} threads), 2 runs at a "
             f"time; grid wall time {results['grid_wall_s'] / 3600:.1f} h.", ""]
    for budget, by in ladder.items():
        lines += [f"## {budget:,} iterations", "", *_budget_table(results, by, sets, budget), ""]
    lines += _gap_table(results, ladder, sets)
    lines += _ladder_pairs(results, ladder, sets)
    lines += _step_times(results)
    return "\n".join(lines) + "\n"


def _step_times(results: dict) -> list[str]:
    """Median training step of each timed variant against FP (``--timing``, idle machine)."""
    times = results.get("step_time_s", {})
    if not times.get("fp"):
        return []
    cells = ", ".join(f"{v} {t:.3f} s ({t / times['fp']:.2f}x)" for v, t in sorted(times.items(), key=lambda x: x[1]))
    return ["", "## Training step time", "", "Median of round-robin steps on an otherwise idle machine "
            f"(`--timing`), against full precision: {cells}. The train wall column above is not comparable "
            "(runs shared the cores with other work)."]


def _budget_table(results: dict, by: dict[str, list[dict]], sets: list[str], budget: int) -> list[str]:
    fp = by.get("fp")
    lines = ["| variant | " + " | ".join(f"{s} PSNR / SSIM" for s in sets) + f" | gap to FP ({sets[0]}, paired) | "
             "seeds | train wall (s) |", "|---|" + "---|" * (len(sets) + 3)]
    for v, runs in by.items():
        cells = []
        for s in sets:
            dev = sd(runs, s)
            cells.append(f"{mean(runs, s):.2f}{f' ± {dev:.2f}' if dev is not None else ''} / "
                         f"{mean(runs, s, 'ssim'):.4f}")
        p = paired(by, v, "fp", sets) if fp and v != "fp" else None
        gap = f"{p['mean'][sets[0]]:+.3f}" if p else "-"
        label = results["variants"].get(v, {}).get("label", v)
        seeds = ",".join(str(r["seed"]) for r in runs)
        wall = statistics.mean(r["wall_s"] for r in runs)
        lines.append(f"| {v}: {label} | " + " | ".join(cells) + f" | {gap} | {seeds} | {wall:.0f} |")
    return lines


def _gap_table(results: dict, ladder: dict[int, dict[str, list[dict]]], sets: list[str]) -> list[str]:
    rows = gap_rows(ladder, sets)
    budgets = list(ladder)
    lines = [f"## Gap to full precision ({sets[0]}, dB, paired by seed: mean [per seed]) and its slope", "",
             "Slope: least squares of the mean gap against log2(iterations), dB per doubling of the budget "
             "(0 = a gap that stops growing).", "",
             "| variant | " + " | ".join(f"{b:,}" for b in budgets) + " | slope (dB/doubling) | "
             + " | ".join(f"{s} gap at {budgets[-1]:,}" for s in sets[1:]) + " |",
             "|---|" + "---|" * (len(budgets) + len(sets))]
    for v, at in rows.items():
        cells = []
        for b in budgets:
            p = at.get(b)
            cells.append(f"{p['mean'][sets[0]]:+.2f} [{', '.join(f'{d:+.2f}' for d in p['diffs'][sets[0]])}]"
                         if p else "-")
        sl = slope([(b, p["mean"][sets[0]]) for b, p in at.items()])
        last = at.get(budgets[-1])
        tail = [f"{last['mean'][s]:+.2f}" if last else "-" for s in sets[1:]]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {f'{sl:+.3f}' if sl is not None else '-'} | "
                     + " | ".join(tail) + " |")
    return lines + [""]


def _ladder_pairs(results: dict, ladder: dict[int, dict[str, list[dict]]], sets: list[str]) -> list[str]:
    variants = sorted({v for by in ladder.values() for v in by})
    budgets = list(ladder)
    lines = ["## Paired differences and decisions", "",
             f"Rule: adopt only if the paired gain on {sets[0]} at {DECIDE_AT:,} iterations is larger than 2 SE and "
             f"has the same sign on {' and '.join(sets[1:])}, and it loses no more than {GUARD_DB} dB at "
             f"{GUARD_AT:,}. Cells: {sets[0]} mean (SE) [{', '.join(sets[1:])} means].", "",
             "| candidate - baseline | " + " | ".join(f"{b:,}" for b in budgets) + " | decision |",
             "|---|" + "---|" * (len(budgets) + 1)]
    for v in variants:
        base = baseline_of(v, results)
        if base is None or not any(base in by and v in by for by in ladder.values()):
            continue
        d = ladder_decision(ladder, v, base, sets)
        cells = []
        for b in budgets:
            p = d["at"].get(b)
            if p is None:
                cells.append("-")
                continue
            se = f" ({p['se']:.3f})" if p["se"] is not None else ""
            others = ", ".join(f"{p['mean'][s]:+.2f}" for s in sets[1:])
            cells.append(f"{p['mean'][sets[0]]:+.3f}{se} [{others}]")
        lines.append(f"| {v} - {base} | " + " | ".join(cells) + f" | {d['verdict']} |")
    return lines


def ladder_plots(results: dict, out: Path) -> None:
    """``gap_curve.png``: each variant's gap to full precision against the budget (log2 axis),
    mean over seeds with the min..max band; ``signals.png``: flip ratio, fraction at the prior's
    edge and branch/stream ratio during the largest budget's runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ladder = by_budget(results)
    sets = results["config"]["eval_sets"]
    colors = plt.cm.tab10.colors
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, (v, at) in enumerate(gap_rows(ladder, sets).items()):
        bs = sorted(at)
        m = [at[b]["mean"][sets[0]] for b in bs]
        ax.plot(bs, m, marker="o", label=v, color=colors[k % 10], ls="-" if k < 10 else "--")
        ax.fill_between(bs, [min(at[b]["diffs"][sets[0]]) for b in bs], [max(at[b]["diffs"][sets[0]]) for b in bs],
                        color=colors[k % 10], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("training iterations (each its own full-schedule run)")
    ax.set_ylabel(f"{sets[0]} PSNR gap to full precision (dB)")
    ax.set_title("gap to full precision against budget (mean over seeds, band: min..max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "gap_curve.png", dpi=120)
    plt.close(fig)

    top = ladder[max(ladder)]
    keys = [("flip_ratio", "flip ratio per print interval", True), ("prior_edge", "fraction at the box edge", False),
            ("branch_ratio", "mean branch / stream", False)]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, title, log) in zip(axes, keys):
        for k, (v, runs) in enumerate(top.items()):
            curve = runs[0]["flip_curve"] if key == "flip_ratio" else runs[0].get("log_curves", {}).get(key)
            if curve:
                ax.plot([i for i, _ in curve], [max(x, 1e-7) for _, x in curve], label=v, color=colors[k % 10])
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{title} ({max(ladder):,} its, seed {top[next(iter(top))][0]['seed']})", fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "signals.png", dpi=120)
    plt.close(fig)
