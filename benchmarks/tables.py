r"""Markdown tables for docs/benchmarks.md from the result files of the benchmark scripts.

Run:  python benchmarks/tables.py conditional_densities two_moons two_moons_samplers two_moons_long
      python benchmarks/tables.py page     (writes docs/results.md, the one-screen results page)
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from _common import RESULTS

PUBLISHED_OT = {"ve": {"tanh": 0.072, "bimodal": 0.118, "spiral": 0.042}, "vp": {"tanh": 0.059, "bimodal": 0.103, "spiral": 0.041}}


def conditional_densities() -> None:
    table, times, floor, meta = defaultdict(dict), defaultdict(dict), {}, []
    for path in sorted(RESULTS.glob("conditional_densities_*.json")):
        d = json.loads(path.read_text())
        for name, entry in d["problems"].items():
            m = entry.get("meta", d["meta"])
            line = f"- `{m['command']}` ({m['date_utc']}, commit {m['git_commit']})"
            if line not in meta:
                meta.append(line)
            floor[name] = entry["floor_mean"]
            for v in entry["variants"]:
                opts = dict(v["sample_options"])
                sampler = opts.pop("sampler", "")
                extra = ",".join(f"{k}={val:g}" if isinstance(val, float) else f"{k}={val}" for k, val in opts.items())
                label = f"{d['method']} {d.get('results_label') or d['label']}" + (f" {sampler}" if sampler else "") + (f" ({extra})" if extra else "")
                table[label][name] = v["sinkhorn_mean"]
                times[label][name] = (entry["fit_time_s"], v["sample_time_s"])
    problems = [p for p in ("tanh", "bimodal", "spiral") if p in floor]
    print("| method | " + " | ".join(problems) + " | fit (s) | 4 × 10,000 draws (s) |")
    print("|---" * (len(problems) + 3) + "|")
    for label, values in table.items():
        cells = [f"{values[p]:.3f}" if p in values else "–" for p in problems]
        fit, sample = np.mean(list(times[label].values()), axis=0)
        print(f"| {label} | " + " | ".join(cells) + f" | {fit:.0f} | {sample:.{1 if sample < 10 else 0}f} |")
    for kind in ("ve", "vp"):
        print(f"| published {kind.upper()} | " + " | ".join(f"{PUBLISHED_OT[kind][p]:.3f}" for p in problems) + " | | |")
    print("| floor (reference vs independent reference) | " + " | ".join(f"{floor[p]:.3f}" for p in problems) + " | | |")
    print()
    print("\n".join(meta))


#: two_moons studies: result files ``two_moons_<study>*.json``, each printed as a table of its own.
TWO_MOONS_STUDIES = ("samplers", "long")


def two_moons(study: str | None = None) -> None:
    r"""One C2ST table from the ``two_moons_*.json`` files (runs over disjoint observations are merged).

    The studies (``two_moons_samplers*.json``: cond_score's samplers beside NPSE on
    observations 1–3; ``two_moons_long*.json``: cond_score trained longer) are left out of
    it and printed one table per file by ``two_moons_<study>``.
    """
    paths = sorted(RESULTS.glob("two_moons_*.json"))
    studies = {name: [p for p in paths if p.stem.startswith(f"two_moons_{name}")] for name in TWO_MOONS_STUDIES}
    if study is not None:
        for path in studies[study]:
            print(f"{path.name}:")
            _c2st_table([path])
            print()
    else:
        _c2st_table([p for p in paths if not any(p in group for group in studies.values())])


def _c2st_table(paths: list) -> None:
    per, times, fits, nfes, commands = defaultdict(dict), defaultdict(list), defaultdict(list), defaultdict(list), []
    for path in paths:
        d = json.loads(path.read_text())
        for r in d["results"]:
            if r["observation"] in per[r["method"]]:
                raise SystemExit(f"{path.name}: observation {r['observation']} of {r['method']} is in two result files")
            per[r["method"]][r["observation"]] = r["c2st"]
            times[r["method"]].append(r["sample_time_s"])
            if "nfe" in r:
                nfes[r["method"]].append(r["nfe"])
        for method in {r["method"] for r in d["results"]}:
            fits[method].append(d["fits"]["cond_score" if method.startswith("cond_score") else method]["fit_time_s"])
        obs = sorted({r["observation"] for r in d["results"]})
        m = d["meta"]
        span = f"observation {obs[0]}" if len(obs) == 1 else f"observations {obs[0]}–{obs[-1]}"
        commands.append((obs[0], f"- {span}: `{m['command']}` ({m['date_utc']}, commit {m['git_commit']}, {m['machine']})"))
    if not per:
        print("(no two_moons result files)")
        return
    observations = sorted({o for values in per.values() for o in values})
    nfe_col = " network evaluations (median) |" if nfes else ""
    print("| method | " + " | ".join(f"obs {o}" for o in observations) + f" | mean | fit (s), per run | 10,000 draws (s) |{nfe_col}")
    print("|---" * (len(observations) + 4 + bool(nfes)) + "|")
    for method, values in per.items():
        cells = [f"{values[o]:.3f}" if o in values else "–" for o in observations]
        fit = " / ".join(f"{f:.0f}" for f in fits[method])
        nfe = (f" {np.median(nfes[method]):.0f} |" if nfes[method] else " – |") if nfes else ""
        print(f"| {method} | " + " | ".join(cells) + f" | {np.mean(list(values.values())):.3f} | {fit} | {np.median(times[method]):.2f} |{nfe}")
    print()
    print("\n".join(line for _, line in sorted(commands)))


# ---------------------------------------------------------------------------------------
# The results page (docs/results.md): one short table per problem, the current results
# beside the published and peer figures; each row points to the command that produced it.
# ---------------------------------------------------------------------------------------

PAGE = Path(__file__).resolve().parents[1] / "docs" / "results.md"


class _Commands:
    r"""Numbers the commands of one section: rows cite ``[n]``, the list follows the table."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, meta: dict) -> str:
        line = f"`{meta['command']}` ({str(meta.get('date_utc', ''))[:10]})"
        if line not in self.lines:
            self.lines.append(line)
        return f"[{self.lines.index(line) + 1}]"

    def render(self) -> list[str]:
        return [f"[{i}] {line}  " for i, line in enumerate(self.lines, 1)] + [""]


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["(no result files yet)", ""]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _f(x: Any, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


#: two_moons runs on the page, grouped: runs of one group cover disjoint observations and merge;
#: each group's fit-time ratios are to the sbi peer fitted in the same run(s).
TWO_MOONS_GROUPS = {"flow, defaults": ["two_moons_defaults_flow_npe"],
                    "residual MLP; flow_matching early-stopped (superseded)": ["two_moons_defaults_resmlp"],
                    "flow_matching, current defaults": ["two_moons_defaults_fm_cosine"]}


def page_two_moons() -> list[str]:
    cite, rows = _Commands(), []
    for group, names in TWO_MOONS_GROUPS.items():
        c2st, fits, cpus, refs = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(set)
        for d in filter(None, map(_load, names)):
            for r in d["results"]:
                c2st[r["method"]].append(r["c2st"])
                refs[r["method"]].add(cite(d["meta"]))
            for method in {r["method"] for r in d["results"]}:
                fit = d["fits"]["cond_score" if method.startswith("cond_score") else method]
                fits[method].append(fit["fit_time_s"])
                if "fit_cpu_s" in fit:
                    cpus[method].append(fit["fit_cpu_s"])
        wall = {m: float(np.median(v)) for m, v in fits.items()}
        cpu = {m: float(np.median(v)) for m, v in cpus.items()}
        for method in c2st:
            peer = None if method in ("npe", "npse", "fmpe") else ("npse" if method.startswith(("cond_score", "flow_matching")) else "npe")
            ratio = f"{wall[method] / wall[peer]:.2f}× / {cpu[method] / cpu[peer]:.2f}× {peer.upper()}" if peer in cpu and method in cpu else (
                f"{wall[method] / wall[peer]:.2f}× {peer.upper()}" if peer in wall else "–")
            name = f"sbi {method.upper()}" if peer is None else method
            rows.append([group, name, f"{np.mean(c2st[method]):.3f}", str(len(c2st[method])), f"{wall[method]:.0f}",
                         _f(cpu.get(method), ".0f"), ratio, " ".join(sorted(refs[method]))])
    return ["## two_moons (sbibm) against sbi", "",
            "C2ST of the posterior draws against sbibm's reference draws (0.5 = indistinguishable), mean over the",
            "observations; every method trains on the same 10,000 simulations, called without options, in the same",
            "run as sbi 0.27's NPE or NPSE. Targets: flow at NPE's C2ST or better in ≤ 0.5× NPE's fit time;",
            "cond_score and flow_matching at NPSE's or better in ≤ 0.5× NPSE's. Fit times as wall / CPU seconds of",
            "the fitting process (the machine was shared, so the CPU ratio is the fairer one).", "",
            *_table(["run", "method", "C2ST", "obs.", "fit wall (s)", "fit CPU (s)", "fit time (wall / CPU)", "cmd"], rows),
            *cite.render()]


def page_default_settings() -> list[str]:
    cite, latest, problems = _Commands(), {}, []
    paths = list(RESULTS.glob("default_settings_*.json"))
    for d in sorted((json.loads(p.read_text()) for p in paths), key=lambda d: d["meta"]["date_utc"]):
        per: dict = defaultdict(list)
        for r in d["results"]:
            key = f"{r['problem']} ({r.get('kind', '')})"
            if key not in problems:
                problems.append(key)
            per[(r["method"], key)].append(r["c2st"])
        for k, v in per.items():  # a later run of the same method and problem supersedes an earlier one
            latest[k] = (float(np.mean(v)), cite(d["meta"]))
    methods = list(dict.fromkeys(m for m, _ in latest))
    rows = [[m if m != "npe" else "sbi NPE"] + [f"{latest[(m, p)][0]:.3f} {latest[(m, p)][1]}" if (m, p) in latest else "–"
                                                  for p in problems] for m in methods]
    return ["## Default settings (no options passed)", "",
            "C2ST (0.5 = indistinguishable) of every learned method called without options, beside sbi's NPE,",
            "on vector problems with reference posteriors; each cell from the latest run of that method on that",
            "problem (`[n]`: the run). The defaults of flow, cond_score and flow_matching last changed on 2026-12-02",
            "(cond_score and flow_matching: the residual network); their cells are from runs with today's defaults.",
            "", *_table(["method", *problems], rows), *cite.render()]


#: Conditional-density result labels on the page (method label -> shown as).
CONDITIONAL_SHOWN = {"cond_score ve ode": "cond_score VE, ODE (MLP, 300 epochs)", "cond_score vp_10k_samplers ode": "cond_score VP, ODE (MLP, 10,000 epochs)",
                     "cond_score defaults_resmlp": "cond_score (defaults: residual MLP, 100 epochs)",
                     "flow nsf": "flow (NSF)", "flow_matching defaults_resmlp": "flow_matching (defaults: residual MLP, 100 epochs)",
                     "vae default": "vae (defaults)"}  # fmt: skip


def page_conditional_densities() -> list[str]:
    cite, table, fits = _Commands(), defaultdict(dict), {}
    floor = {}
    for path in sorted(RESULTS.glob("conditional_densities_*.json")):
        d = json.loads(path.read_text())
        for name, entry in d["problems"].items():
            floor[name] = entry["floor_mean"]
            for v in entry["variants"]:
                opts = dict(v["sample_options"])
                label = f"{d['method']} {d.get('results_label') or d['label']}" + (f" {opts.pop('sampler')}" if "sampler" in opts else "")
                if label in CONDITIONAL_SHOWN and not opts:
                    table[label][name] = (v["sinkhorn_mean"], cite(entry.get("meta", d["meta"])))
                    fits.setdefault(label, {})[name] = entry["fit_time_s"]
    problems = ("tanh", "bimodal", "spiral")
    rows = [[CONDITIONAL_SHOWN[label]] + [f"{values[p][0]:.3f} {values[p][1]}" if p in values else "–" for p in problems]
            + [f"{np.median(list(fits[label].values())):.0f}"] for label, values in table.items()]
    rows += [[f"published {k.upper()}"] + [f"{PUBLISHED_OT[k][p]:.3f}" for p in problems] + [""] for k in ("ve", "vp")]
    rows.append(["floor (reference vs reference)"] + [_f(floor.get(p)) for p in problems] + [""])
    return ["## Conditional densities (Tanh, Bimodal, Spiral)", "",
            "Sinkhorn distance between learned and reference conditional draws (lower is better), mean",
            "over the conditioning values; published: the drift-diffusion paper's VE / VP rows.", "",
            *_table(["method", "tanh", "bimodal", "spiral", "fit (s)"], rows), *cite.render()]


def page_advection() -> list[str]:
    cite, rows = _Commands(), []
    for variant in ("full", "masked"):
        d = _load(f"advection_diffusion_{variant}")
        if d is None:
            continue
        for r in d["rows"]:
            for m in (k for k in r if k not in ("noise", "masked", "reference")):
                rows.append([variant, f"{r['noise']:g}", f"{r['reference']['error']:.4f}", m, f"{r[m]['error']:.4f}",
                             f"{r[m]['error_vs_reference']:.4f}", cite(d["meta"])])
    pub = (_load("advection_diffusion_full") or {}).get("published_zero_noise_error")
    return ["## Advection-diffusion boundary flux", "",
            "Error of the posterior-mean flux over 50 test fluxes, relative to the mean flux (published: about",
            f"{pub} at zero noise); 'vs reference': the same distance to the likelihood-based reference's mean.", "",
            *_table(["operator", "σ_ε", "reference", "method", "error", "vs reference", "cmd"], rows), *cite.render()]


def page_elastography() -> list[str]:
    cite, rows = _Commands(), []
    for noise in ("0.025", "0.05", "0.1"):
        d = _load(f"elastography_{noise}_steps1200_10tests")
        if d is not None:
            r = d["result"]
            rows.append([noise, "cond_score, target mu (field)", f"{r['mean_rmse']:.3f} ({r['published_mean_rmse']})",
                         f"{r['std_rmse']:.3f} ({r['published_std_rmse']})", f"{r['fit_time_s']:.0f}", cite(d["meta"])])
    for path in sorted(RESULTS.glob("elastography_curve_*.json")):  # the learning curve: one row per budget
        d = json.loads(path.read_text())
        a = d["args"]
        for pt in d["points"]:
            rows.append([f"{a['noise']:g}", f"cond_score, target mu, U-Net {a['base_channels']} ch. {a.get('precision', 'float32')}, "
                         f"{pt['budget_cpu_min']:g} CPU-min" + (f" ({a['threads']} threads)" if a.get("threads", 1) > 1 else ""), f"{pt['mean_rmse']:.3f} ({d['published'][0]})",
                         f"{pt['std_rmse']:.3f} ({d['published'][1]})", "–", cite(d["meta"])])  # fmt: skip
    for path in sorted(RESULTS.glob("elastography_latent_*.json"), key=lambda p: float(p.stem.split("_")[-1]) if p.stem.split("_")[-1].replace(".", "").isdigit() else 9):
        d = json.loads(path.read_text())
        for r in d.get("results", []):
            pub = r.get("published") or ("–", "–")
            rows.append([f"{r['noise']:g}", f"{r['method']}, target center, field replayed", f"{r['mean_rmse']:.3f} ({pub[0]})",
                         f"{r['std_rmse']:.3f} ({pub[1]})", _f(r.get("fit_time_s"), ".0f"), cite(d["meta"])])
    return ["## Quasi-static elastography", "",
            "Pixel-wise RMSE of the field's posterior mean and standard deviation against the likelihood-based",
            "reference over ten test inclusions (in brackets: the mechanics paper's cSDM, GPU, 100,000 epochs).", "",
            *_table(["σ_η", "method", "mean RMSE (published)", "std RMSE (published)", "fit (s)", "cmd"], rows), *cite.render()]


EIT_SETTINGS = {"2anom_40db": (2, 40), "4anom_40db": (4, 40), "2anom_25db": (2, 25), "4anom_25db": (4, 25)}


def page_eit() -> list[str]:
    from eit import PUBLISHED  # benchmarks/eit.py: the paper's Tables 1–4

    cite, rows = _Commands(), []
    for (setting, key), px in itertools.product(EIT_SETTINGS.items(), (32, 64)):
        d = _load(f"eit_{setting}_{px}px")
        if d is None:
            continue
        best: dict = {}
        for name, m in d["methods"].items():
            base = next(b for b in ("gauss_newton", "cond_score", "csd_star", "flow", "vae") if name.startswith(b))
            if base not in best or m["mean"][0] < best[base][1]["mean"][0]:
                best[base] = (name, m)
        for base, (name, m) in best.items():
            pub = PUBLISHED.get(key, {}).get(base)
            cells = [f"{m['mean'][i]:{f}} ({pub[i]:{f}})" if pub else f"{m['mean'][i]:{f}}" for i, f in ((0, ".4f"), (1, ".2f"), (2, ".3f"))]
            rows.append([f"{key[0]} anom., {key[1]} dB", f"{px} × {px}", name, *cells, _f(m.get("fit_time_s"), ".0f"),
                         cite(m.get("run", d))])
    return ["## Electrical impedance tomography", "",
            "MSE / PSNR / SSIM against the truth over 50 test draws at 32 × 32 and 64 × 64 with 4,000",
            "training pairs, the best variant of each method: one posterior draw, or the mean of draws where the",
            "row's name says so (in brackets: the EIT comparison paper, 128 × 128, 21,600 pairs, GPU; it has no",
            "cond_score row).", "",
            *_table(["setting", "grid", "method", "MSE", "PSNR", "SSIM", "fit (s)", "cmd"], rows), *cite.render()]


def page_oce() -> list[str]:
    cite, rows = _Commands(), []
    for path in sorted(RESULTS.glob("oce_cond_score*.json")):
        d = json.loads(path.read_text())
        r = d["result"]
        for res in ([r["unclipped"]] if "unclipped" in r else []) + [r]:
            clip = ", clip=True" if res.get("clip") else ""
            rows.append(["reduced", f"cond_score, field target ({_oce_net(d['args'], r)}{clip})", f"{res['mean_rmse']:.3f} / {res['std_rmse']:.3f}",
                         f"{res['mean_rmse_vs_truth']:.3f}", _f(r.get("fit_time_s"), ".0f"), cite(d["meta"])])
    for path in sorted(RESULTS.glob("oce_latent*.json")):  # the 7 parameters learnt, pushed forward to the field
        d = json.loads(path.read_text())
        for method, res in d["result"]["methods"].items():
            rows.append(["reduced", f"{method}, latent target ({res.get('train_steps', '?')} steps, {d['result']['num_train']:,} pairs)",
                         f"{res['mean_rmse']:.3f} / {res['std_rmse']:.3f}", f"{res['mean_rmse_vs_truth']:.3f}",
                         _f(res.get("fit_time_s"), ".0f"), cite(d["meta"])])
            if "importance" in res:
                imp = res["importance"]
                rows.append(["reduced", f"{method} as importance proposal, exact likelihood ({d['args']['importance']:,} simulations, ESS {imp['ess']:.0f})",
                             f"{imp['mean_rmse']:.3f} / {imp['std_rmse']:.3f}", f"{imp['mean_rmse_vs_truth']:.3f}",
                             _f(res.get("fit_time_s"), ".0f"), cite(d["meta"])])
    ref = _load("oce_reference")
    if ref:
        r = ref["result"]
        rows.append(["reduced", "Gaussian likelihood on the wrapped phase",
                     f"{r['gauss_vs_exact_mean_rmse']:.3f} / {r['gauss_vs_exact_std_rmse']:.3f}", "–", "–", cite(ref["meta"])])
        rows.append(["reduced", "exact wrapped-phase reference", "–", f"{r['exact_mean_rmse_vs_truth']:.3f}", "–", cite(ref["meta"])])
    full_rows, full_cite = [], _Commands()
    for path in sorted(RESULTS.glob("oce_full*.json")):
        d = json.loads(path.read_text())
        r = d["result"]
        if "mean_rmse_vs_truth" not in r:  # a --simulate-only run
            continue
        cover = r.get("fraction_in_central_80") or {"area": r["ranks_area_fraction_in_central_80"],
                                                     "modulus": r["ranks_modulus_fraction_in_central_80"]}
        cells = [f"{100 * cover[k]:.0f}%" if k in cover else "–" for k in ("area", "modulus", "contrast", "area_median5")]
        full_rows.append([f"cond_score ({_oce_net(d['args'], r)}, {r['num_pairs']:,} pairs)",
                          f"{r['mean_rmse_vs_truth']:.3f} ({r['prior_mean_rmse_vs_truth']:.3f})", *cells,
                          _f(r.get("gel_rms_of_draws"), ".3f"), _f(r.get("fit_time_s"), ".0f"), full_cite(d["meta"])])
    return ["## OCE tumour spheroid (wrapped phase law)", "",
            "Posterior of the field log10(E / E_hydrogel) at 64 × 64: RMSE of the pixel-wise mean / std against the",
            "exact-likelihood reference (reduced variant), and of the mean against the truth; ten test observations.", "",
            *_table(["prior", "posterior", "mean / std RMSE vs reference", "mean RMSE vs truth", "fit (s)", "cmd"], rows),
            *cite.render(),
            "Full prior, held-out test pairs: posterior-mean RMSE of E' against the truth (the prior mean's), the share of",
            "SBC ranks of four summaries of E' in the central 80% (calibrated: about 80%; the spheroid area and mean E'",
            "of pixels with abs(E') > 0.05, the window mean of E', the area after a 5 × 5 median filter) and the RMS of",
            "the draws where the truth is gel (0 for a perfect posterior).", "",
            *_table(["posterior", "mean RMSE vs truth (prior mean)", "area", "mean E' inside", "window mean", "median-filtered area",
                     "draws' RMS in the gel", "fit (s)", "cmd"], full_rows),
            *full_cite.render()]


def _oce_net(args: dict, result: dict) -> str:
    r"""How an OCE field-target cond_score run saw y and was trained, for a row label."""
    parts = [f"{result.get('train_steps') or args.get('max_steps', '?')} steps"]
    if args.get("features"):
        windows = args.get("strain_windows") or []
        parts.append("phase features" + (f" + strain {', '.join(map(str, windows))}" if windows else ""))
    else:
        parts.append("raw y")
    if args.get("base_channels", 8) != 8 or args.get("precision", "float32") != "float32":
        parts.append(f"{args.get('base_channels', 8)} channels, {args.get('precision', 'float32')}")
    return "; ".join(parts)


def page_nuts() -> list[str]:
    cite, rows = _Commands(), []
    for path in sorted(RESULTS.glob("nuts_engines_*.json")):
        d = json.loads(path.read_text())
        for problem, v in d["nuts"].items():
            if "pyro" in v and "numpyro" in v:
                best = max((k for k in v if k.startswith("numpyro") and isinstance(v[k], dict)), key=lambda k: v[k]["ess_per_s"])
                rows.append([problem, f"{v['numpyro']['ess_per_s']:.1f}", f"{v[best]['ess_per_s']:.1f}", f"{v['pyro']['ess_per_s']:.2f}",
                             f"{v['numpyro']['ess_per_s'] / v['pyro']['ess_per_s']:.1f}×", cite(d["meta"])])
    return ["## NUTS: the NumPyro engine against Pyro's", "",
            "Minimum bulk ESS per second of wall time, 4 chains × (1,000 warm-up + 1,000 draws); 'compiled':",
            "the same run again with the JIT cache warm.", "",
            *_table(["problem", "NumPyro", "NumPyro, compiled", "Pyro", "NumPyro / Pyro", "cmd"], rows), *cite.render()]


def page_simulator_failures() -> list[str]:
    cite, rows = _Commands(), []
    for path in sorted(RESULTS.glob("simulator_failures_*.json")):
        d = json.loads(path.read_text())
        by = {(r["rate"], r["isolate"]): r["direct"] for r in d["results"]}
        for rate in sorted({r for r, _ in by if r}):
            old, new = by.get((rate, "rows")), by.get((rate, "bisect"))
            if old and new:
                rows.append([f"{d['call_overhead_ms']:g} ms", f"{100 * rate:g} %", f"{old['seconds']:.2f} s / {old['calls']}",
                             f"{new['seconds']:.2f} s / {new['calls']}", cite(d["meta"])])
    return ["## Failing simulator rows", "",
            "20,000 rows, a fraction failing: wall time / simulator calls when every row of a failed batch is",
            "retried alone (before) and with bisection (now).", "",
            *_table(["cost per call", "failing", "row by row", "bisection", "cmd"], rows), *cite.render()]


def page_training() -> list[str]:
    cite, rows = _Commands(), []
    paths = sorted(RESULTS.glob("train_throughput_*.json"), key=lambda p: json.loads(p.read_text())["meta"]["date_utc"])
    if paths:
        d = json.loads(paths[-1].read_text())
        best: dict = {}
        for r in d["results"]:
            if r.get("loop", "current") == "current":
                best[r["case"]] = max(best.get(r["case"], 0.0), r["steps_per_s"])
        rows = [[case, f"{v:.3g}", cite(d["meta"])] for case, v in best.items()]
    return ["## Training-loop throughput", "", "Steps per second of the shared training loop, one thread, best repeat of the latest run.", "",
            *_table(["case", "steps/s", "cmd"], rows), *cite.render()]


def page_optic_nerve_head() -> list[str]:
    cite, rows = _Commands(), []
    conv = _load("optic_nerve_head_convergence")
    if conv:
        for r in conv["rows"]:
            rows.append([f"mesh: {r['cells_per_pixel']} vs {conv['finest']} cells per pixel", f"{r['relative_l2']:.1e} (tissue {r['relative_l2_tissue']:.1e})",
                         f"max {r['max_abs_relative']:.1e} of max abs(u)", "–", cite(conv["meta"])])
    for path in sorted(RESULTS.glob("optic_nerve_head_cond_score*.json")):
        d = json.loads(path.read_text())
        r = d["result"]
        units = "log10 units" if d["args"].get("transform", "log10") == "log10" else "linear units"
        for res in ([r["unclipped"]] if "unclipped" in r else []) + [r]:
            clip = ", clip=True" if res.get("clip") else ""
            rows.append([f"cond_score, {r['num_train']} pairs, {d['args']['max_steps']} steps, {units}{clip}",
                         f"{res['rmse_mean_vs_truth']:.3f} (prior mean {res['prior_mean_rmse_vs_truth']:.3f})",
                         f"90 %: {res['coverage_90']:.2f}, 50 %: {res['coverage_50']:.2f}", "0.021, 0.032 (two cases)", cite(d["meta"])])
    return ["## Optic nerve head (inverse Helmholtz)", "",
            "Mesh convergence of (u_R, u_I) at the pixel centres (relative L2 difference to the finest mesh), and",
            "cond_score's posterior mean against the truth in the paper's normalised units over ten test draws with",
            "the coverage of its pixel-wise credible intervals.", "",
            *_table(["what", "error / RMSE", "max / coverage", "published", "cmd"], rows), *cite.render()]


def page_score_prior() -> list[str]:
    cite, rows = _Commands(), []
    for path in sorted(RESULTS.glob("score_prior_*.json")):
        if path.stem.endswith("_quick"):
            continue
        d = json.loads(path.read_text())
        for r in d.get("deblurring", []):
            rows.append([r["problem"], f"{r['noise']:g}", f"{r['guidance']} ({r.get('step_rule', '')})", _f(r["mean_rmse_relative"]),
                         _f(r["sd_ratio"], ".2f"), "no" if not r.get("retrained") else "yes", cite(d["meta"])])
        for r in d.get("imaging", []) + d.get("traveltime", []):
            cover = f", 90 % coverage {r['coverage_90']:.2f}" if r.get("coverage_90") is not None else ""
            rows.append([r.get("problem", "?"), f"{r.get('noise', float('nan')):g}", str(r.get("guidance", r.get("method", ""))),
                         _f(r.get("psnr"), ".2f") + " dB PSNR", _f(r.get("ssim"), ".3f") + " SSIM" + cover, "no", cite(d["meta"])])
    return ["## score_prior (one learned prior, the model's likelihood)", "",
            "Deblurring against the exact Gaussian posterior: relative RMSE of the posterior mean and the ratio of",
            "posterior standard deviations (1 = exact); imaging rows: PSNR / SSIM of the posterior mean against the",
            "truth. 'retrained': whether the prior was trained again for this operator or noise level.", "",
            *_table(["problem", "noise", "guidance", "mean error", "sd ratio", "retrained", "cmd"], rows), *cite.render()]


def page_latent_prior() -> list[str]:
    cite, rows = _Commands(), []
    for path in sorted(RESULTS.glob("latent_prior*.json")):
        if path.stem.endswith("_quick"):
            continue
        d = json.loads(path.read_text())
        problem = d.get("settings", {}).get("problem", "deblurring")
        per: dict = defaultdict(lambda: defaultdict(list))
        for r in d["rows"]:
            for k, v in r.items():
                if isinstance(v, dict) and "psnr" in v:
                    per[r["noise"]][k].append(v)
        for noise, methods in per.items():
            for k, vs in methods.items():
                rows.append([problem, f"{noise:g}", k, f"{np.mean([v['psnr'] for v in vs]):.2f}", f"{np.mean([v['ssim'] for v in vs]):.3f}",
                             str(len(vs)), cite(d["meta"])])
    return ["## latent_prior (a flow prior inverted in its latent space)", "",
            "PSNR / SSIM against the truth of the MAP (or, 'mala', the posterior mean) for the three", "reparameterisations of the latent, beside the baselines of each problem.", "",
            *_table(["problem", "noise", "estimate", "PSNR (dB)", "SSIM", "images", "cmd"], rows), *cite.render()]


def page_dask() -> list[str]:
    cite, rows = _Commands(), []
    d = _load("dask_throughput")
    if d:
        for r in d["rows"]:
            rows.append([r["problem"], f"{r['n']} ({r['chunk_size']})", f"{r['serial']['draws_per_s']:.1f}", f"{r['pool']['draws_per_s']:.1f}",
                         f"{r['dask']['draws_per_s']:.1f}", "yes" if r["identical"] else "NO", cite(d["meta"])])
        o = d["overhead"]
        rows.append(["overhead per chunk", f"{o['n']} ({o['chunk_size']})", f"{o['serial_ms_per_chunk']:.1f} ms", "–",
                     f"{o['dask_ms_per_chunk']:.1f} ms", "", cite(d["meta"])])
    return ["## Simulation on Dask against the process pool", "",
            "Draws per second of `simulate` into the transactional store: one process, the process pool",
            "(`workers=2`) and a 2-worker `LocalCluster` (`client=`); 'identical': the three stores agree bit for bit.", "",
            *_table(["simulator", "draws (chunk)", "one process", "pool", "Dask", "identical", "cmd"], rows), *cite.render()]


def page_fem_speed() -> list[str]:
    cite, rows = _Commands(), []
    d = _load("fem_speed")
    if d:
        b, a = d["rates"]["before"], d["rates"]["after"]
        rows.append([f"elastography 56 × 56 ({d['unknowns']} unknowns)", f"{np.median(b['cpu']):.0f}", f"{np.median(a['cpu']):.0f}",
                     f"{d['max_relative_difference']:.0e}", cite(d["meta"])])
    onh = _load("optic_nerve_head_throughput")
    if onh:
        rows.append([f"optic nerve head ({onh['num_dofs']} complex unknowns)", "–", f"{onh['solves_per_second']:.2f} (wall)", "–", cite(onh["meta"])])
    dl = _load("dual_layer_phantom_throughput")
    if dl:
        rows.append([f"dual-layer phantom ({int(dl['num_dofs'])} unknowns, {dl['steps']} time steps)", "–",
                     f"{dl['solves_per_second']:.2f} (wall)", "–", cite(dl["meta"])])
    return ["## Finite-element throughput", "",
            "Solves per CPU-second of one process (median of the repeats), before and after the factorisation reuse,",
            "and the largest relative difference between the two solutions.", "",
            *_table(["problem", "before", "now", "difference", "cmd"], rows), *cite.render()]


def page_dual_layer() -> list[str]:
    cite, rows = _Commands(), []
    d = _load("dual_layer_phantom_convergence")
    if d:
        for r in d["time_step"]:
            rows.append([f"time step {r['dt']:g} vs {r['reference']:g}", f"{r['relative_l2']:.1e}", f"{r['worst_snapshot_relative_l2']:.1e}",
                         _f(r.get("observed_order"), ".2f"), cite(d["meta"])])
        for r in d["mesh"]:
            rows.append([f"mesh {r['cells_per_pixel']:g} vs {r['reference']:g} cells per pixel", f"{r['relative_l2']:.1e}",
                         f"{r['worst_snapshot_relative_l2']:.1e}", _f(r.get("observed_order"), ".2f"), cite(d["meta"])])
    return ["## Dual-layer phantom (elastodynamics)", "",
            "Convergence of the ten displacement snapshots on the grid (relative L2 difference to the reference", "discretisation).", "",
            *_table(["refinement", "relative L2", "worst snapshot", "observed order", "cmd"], rows), *cite.render()]


PAGE_SECTIONS = [page_two_moons, page_default_settings, page_conditional_densities, page_advection, page_elastography,
                 page_eit, page_oce, page_optic_nerve_head, page_dual_layer, page_score_prior, page_latent_prior, page_nuts, page_simulator_failures, page_dask, page_fem_speed, page_training]


def page_text() -> str:
    r"""The text of docs/results.md, from the result files."""
    lines = ["# Results", "",
             "The current results against the published and peer figures, one table per problem, generated by",
             "`python benchmarks/tables.py page` from `benchmarks/results/*.json` (do not edit by hand). `[n]`",
             "points to the command below each table (run in `benchmarks/` unless it names the path) and its date.",
             "Unless a command's row says otherwise the machine is a 2-core CPU without GPU, shared with other",
             "jobs, one torch thread per process: times are upper bounds, ratios to a peer come from one run.",
             "The studies behind these numbers, superseded rows and the history are in the",
             "[benchmark log](benchmarks.md).", ""]
    for section in PAGE_SECTIONS:
        lines += section()
    return "\n".join(lines).rstrip() + "\n"


def page() -> None:
    r"""Writes docs/results.md from the result files."""
    PAGE.write_text(page_text())
    print(f"wrote {PAGE}")


def check_page() -> None:
    r"""Exits non-zero when docs/results.md is not what the result files give (edited by hand or stale)."""
    if not PAGE.exists() or PAGE.read_text() != page_text():
        raise SystemExit(f"{PAGE} is out of date: run `python benchmarks/tables.py page`")
    print(f"{PAGE} is up to date")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tables = {"conditional_densities": conditional_densities, "two_moons": two_moons, "page": page, "check_page": check_page,
              **{f"two_moons_{name}": (lambda name=name: two_moons(name)) for name in TWO_MOONS_STUDIES}}  # fmt: skip
    p.add_argument("tables", nargs="+", choices=tuple(tables))
    for name in p.parse_args().tables:
        tables[name]()
        print()
