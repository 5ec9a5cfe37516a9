"""The world's ladder of bars (the table's acceptance criteria), checked on the table's rows: one line per bar, with
the figures it compares and whether it holds."""
EXACT, THROUGH_VAE = "exact renders", "renders through the world VAE"
ORACLE, CLASS_LEVEL = "base model, identity in words (text oracle)", "base model, class word only"
HYPERNET = "hypernet, plain CFG"
FIDELITY_SLACK = 0.95  # "fidelity within 5 %"


def finetuned(steps: int) -> str:
    """Row name of the fine-tune snapshot at `steps`."""
    return f"fine-tuned LoRA, {steps} steps"


def hypernet_hm_cfg(s_subject: float) -> str:
    """Row name of the hypernet with HM-CFG at `s_subject`."""
    return f"hypernet, HM-CFG s_subject {s_subject:g}"


def finetuned_hm_cfg(steps: int, s_subject: float) -> str:
    """Row name of a fine-tune snapshot with HM-CFG at `s_subject`."""
    return f"{finetuned(steps)}, HM-CFG s_subject {s_subject:g}"


def bar_report(results: list[dict], finetune_steps: list[int], hm_cfg: list[float]) -> list[str]:
    """'PASS'/'MISS' lines for every bar whose rows are in `results` (the 200-step bars need that snapshot), and a
    'NOTE' for the class-word row, which has no bar."""
    rows = {r["method"]: r for r in results}
    ident = {name: r["identity_accuracy"] for name, r in rows.items()}
    lines = [_bar(ident[EXACT] == 1.0, f"exact renders: identity {_pct(ident[EXACT])} (bar 100 %)"),
             _bar(ident[THROUGH_VAE] >= 0.95, f"through the VAE: identity {_pct(ident[THROUGH_VAE])} (bar ≥ 95 %)"),
             _bar(ident[ORACLE] >= 0.8, f"text oracle: identity {_pct(ident[ORACLE])} (bar ≥ 80 %)"),
             f"NOTE class word only: identity {_pct(ident[CLASS_LEVEL])} (near chance expected)"]
    if 200 in finetune_steps:
        tuned = rows[finetuned(200)]
        hyper = rows[HYPERNET]
        lines.append(_bar(tuned["identity_accuracy"] >= 0.5,
                          f"fine-tune 200 steps: identity {_pct(tuned['identity_accuracy'])} (bar ≥ 50 %)"))
        speedup = tuned["seconds_per_subject"] / max(hyper["seconds_per_subject"], 1e-9)
        lines.append(_bar(hyper["identity_accuracy"] >= max(0.5, 0.9 * tuned["identity_accuracy"]) and speedup >= 1000,
                          f"hypernet: identity {_pct(hyper['identity_accuracy'])} (bar ≥ 50 % and ≥ 90 % of the "
                          f"200-step fine-tune's {_pct(tuned['identity_accuracy'])}), {speedup:.0f}× less "
                          f"personalization time (bar ≥ 1000×)"))
    lines.append(_guidance_bar(rows, HYPERNET, [hypernet_hm_cfg(s) for s in hm_cfg], 0.0, "hypernet + HM-CFG"))
    longest = max(finetune_steps)
    lines.append(_guidance_bar(rows, finetuned(longest), [finetuned_hm_cfg(longest, s) for s in hm_cfg], 0.10,
                               f"fine-tune {longest} steps + HM-CFG"))
    return lines


def _guidance_bar(rows: dict, plain: str, mixed: list[str], gain: float, label: str) -> str:
    """Some HM-CFG row aligns with the context more than `gain` above the plain row, at fidelity within 5 %."""
    base = rows[plain]
    best = max(mixed, key=lambda name: rows[name]["context_alignment"]
               if rows[name]["fidelity"] >= FIDELITY_SLACK * base["fidelity"] else -1.0)
    r = rows[best]
    holds = (r["context_alignment"] > base["context_alignment"] + gain
             and r["fidelity"] >= FIDELITY_SLACK * base["fidelity"])
    return _bar(holds, f"{label}: best {best!r} context alignment {_pct(r['context_alignment'])} vs plain CFG "
                       f"{_pct(base['context_alignment'])} (bar: > {gain * 100:.0f} points above), fidelity "
                       f"{r['fidelity']:.3f} vs {base['fidelity']:.3f} (bar: within 5 %)")


def _bar(holds: bool, text: str) -> str:
    return f"{'PASS' if holds else 'MISS'} {text}"


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"
