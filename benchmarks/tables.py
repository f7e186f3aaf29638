r"""Markdown tables for docs/benchmarks.md from the result files of the benchmark scripts.

Run:  python benchmarks/tables.py conditional_densities two_moons two_moons_samplers two_moons_long
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

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


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tables = {"conditional_densities": conditional_densities, "two_moons": two_moons,
              **{f"two_moons_{name}": (lambda name=name: two_moons(name)) for name in TWO_MOONS_STUDIES}}  # fmt: skip
    p.add_argument("tables", nargs="+", choices=tuple(tables))
    for name in p.parse_args().tables:
        tables[name]()
        print()
