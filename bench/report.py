"""RESULTS.md from the results dict that bench.run writes as latest.json, through bench/RESULTS.md.j2.

    python -m bench.report bench/results/latest.json bench/RESULTS.md   # re-render
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from bench import goals
from bench.seed_recipe import SEED
from bench.steps import KEEP_SPEEDUP

TEMPLATE = "RESULTS.md.j2"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results"
DEFAULT_MARKDOWN = REPO / "bench" / "RESULTS.md"


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _thousands(value, digits: int | None = None) -> str:
    return f"{value:,}" if digits is None else f"{value:,.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _is_missing(value) -> bool:
    return value in (None, "None")  # MLflow hands back a param that was None as the string "None"


def _dash(value) -> str:
    return "-" if _is_missing(value) else str(value)


def _learning_rate(value) -> str:
    return "-" if _is_missing(value) else f"{float(value):.2e}"


def _number(value: float) -> str:
    """A hyperparameter as one writes it: 1e-6, 0, 0.05."""
    mantissa, _, exponent = f"{value:g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _short_modules(modules) -> str:
    return "/".join(name.removesuffix("_proj") for name in modules)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        undefined=jinja2.StrictUndefined,  # a key missing from latest.json fails the render, never prints blank
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False,
    )
    environment.filters.update(f=_f, fixed=_fixed, thousands=_thousands, met=_met, dash=_dash, lr=_learning_rate,
                               number=_number, short_modules=_short_modules)
    return environment


def asha_view(r: dict) -> dict:
    """The ASHA sweep's figures that explain a missed ASHA goal."""
    asha, flat = r["sweeps"]["asha"], r["sweeps"]["noasha"]
    max_epochs = asha.get("max_epochs")
    rungs = asha.get("asha", {}).get("rungs", [])
    return {
        "epoch_ratio": flat["trial_epochs"] / max(asha["trial_epochs"], 1),
        "recall_kept": goals.asha_recall_kept(r),
        "max_epochs": max_epochs,
        "rungs": rungs,
        "epochs": sorted((t["epochs"] for t in asha["trials"]), reverse=True),
        "full": sum(1 for t in asha["trials"] if t["epochs"] == max_epochs),
        "zero_full": sum(1 for t in asha["trials"] if t["epochs"] == max_epochs and not t["val_exact_recall"]),
        "last": rungs[-1] if rungs else "-",
        "most_saved": (max_epochs - rungs[-1]) if rungs and max_epochs else "-",
    }


def early_view(r: dict) -> dict:
    """Section 4's tables: the arms measured, the replayed set-ups by saving, the warm/cold pairs."""
    by_arm = r["early_stopping"]["sweeps_by_arm"]
    arms = [arm for arm in ("asha", "asha_unlent", "asha_before", "noasha") if arm in by_arm]
    replay = sorted(r["early_stopping"]["replay"], key=lambda row: (-row["saving"], row["best_val_loss_vs_full"]))
    return {"seeds": len(by_arm["asha"]), "arms": arms, "replay": replay,
            "second": list(zip(by_arm["cold"], by_arm["warm"]))}


def overhead_view(r: dict) -> dict:
    """The ASHA sweep's overhead per trial, and with ray.init counted in the wall."""
    asha = r["sweeps"]["asha"]
    trials = max(asha["num_trials"], 1)
    return {
        "compute_per_trial": asha["compute_seconds"] / trials,
        "idle_per_trial": asha["idle_slot_seconds"] / trials,
        "fraction_with_ray_init": 1 - (asha["compute_seconds"] / asha["concurrency"])
        / (asha["wall_seconds"] + r["ray_init_seconds"]),
    }


def failed_sections(r: dict) -> dict:
    return {name: section for name, section in r.get("sections", {}).items() if "error" in section}


def render(r: dict) -> str:
    """The whole RESULTS.md: failed sections, the SmolLM2 sections (the real model), the tiny-model ones."""
    tiny = "goals_met" in r
    return _environment().get_template(TEMPLATE).render(
        r=r, g=goals, recipe=SEED, failed=failed_sections(r),
        asha_view=asha_view(r) if tiny else None, overhead=overhead_view(r) if tiny else None,
        early_view=early_view(r) if tiny else None, keep_speedup=KEEP_SPEEDUP,
    )


def write_results(results: dict, out: Path, markdown: Path) -> None:
    """`out`/latest.json, then `markdown` rendered from it: a rendering problem never loses a measurement."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render(results))


if __name__ == "__main__":
    import sys

    Path(sys.argv[2]).write_text(render(json.loads(Path(sys.argv[1]).read_text())))
