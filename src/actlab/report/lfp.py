"""The LFP report: the study's tables and figures in one offline page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .html import Page, esc
from .plots import pyplot, save_figure


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _probe_pca(root: Path, out: Path) -> Path | None:
    """PCA of the probe inputs (SAE features of positive, neutral and negative variants)."""
    p = root / "deltas" / "deltas.safetensors"
    if not p.is_file():
        return None
    import torch
    from safetensors.torch import load_file

    t = load_file(str(p))
    x = torch.cat([t["f_pos"], t["f_neu"], t["f_neg"]]).double()
    n = len(t["f_pos"])
    xc = x - x.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    xy = (xc @ vh[:2].T).numpy()
    ev = (s**2 / (s**2).sum())[:2].tolist()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for k, (label, color) in enumerate((("positive", "#27ae60"), ("neutral", "#7f8c8d"), ("negative", "#c0392b"))):
        ax.scatter(xy[k * n:(k + 1) * n, 0], xy[k * n:(k + 1) * n, 1], s=8, alpha=0.6, color=color, label=label)
    ax.set_title(f"PCA of the probe inputs (centred SAE features; explained {ev[0]:.0%}, {ev[1]:.0%})", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def _agreement_scatter(words: list[dict[str, Any]], out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter([w["lexicon"] for w in words], [w["predicted"] for w in words], s=10, alpha=0.6)
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlabel("lexicon valence (true feedback)")
    ax.set_ylabel("probe prediction (implicit feedback)")
    ax.set_title("predicted vs true feedback per word", fontsize=9)
    return save_figure(fig, out)


def build_lfp_report(root: Path, cfg: Any) -> Path:
    root = Path(root)
    page = Page("Learned Feedback Patterns", f"base {cfg.base_model}; fine-tuned {cfg.tuned_model or 'by this run'}; "
                                              f"task {cfg.task}")
    ft = _load(root / "finetune" / "finetune.json")
    page.section("Fine-tuning", "finetune")
    if ft:
        page.text(f"method {ft['method']}" + (f"; {ft['deviation']}" if "deviation" in ft else ""))
        if (root / "finetune" / "finetune.png").is_file():
            page.image(root / "finetune" / "finetune.png", "reward/KL over steps")
    else:
        page.text(f"not run here: the fine-tuned model was given ({cfg.tuned_model})", muted=True)
    page.section("Parameter divergence per layer", "divergence")
    lay = _load(root / "divergence" / "layers.json")
    if lay:
        page.text(f"selected layers: {lay['layers']} ({lay['rule']})")
        page.image(root / "divergence" / "divergence.png", "divergence per layer")
    dic = _load(root / "sae" / "dictionaries.json")
    page.section("Dictionaries", "sae")
    if dic:
        rows = [[layer, name, m["explained_variance"], m["l0"], m["dead_fraction"], m["dense_fraction"]]
                for layer, ms in dic["metrics"].items() for name, m in ms.items()]
        page.table(["layer", "dictionary", "explained variance", "L0", "dead", "dense"], rows)
    pr = _load(root / "probes" / "probes.json")
    page.section("Probe accuracy", "probes")
    if pr:
        keys = sorted(pr["test"])
        page.table(["split", *keys], [["train", *[pr["train"][k] for k in keys]],
                                      ["held-out", *[pr["test"][k] for k in keys]],
                                      ["untrained (Xavier) baseline, held-out",
                                       *[pr["xavier_baseline_test"][k] for k in keys]]])
    pca = _probe_pca(root, root / "report_probe_pca.png")
    if pca:
        page.heading("PCA of the probe inputs")
        page.image(pca, "PCA of the probe inputs")
    ag = _load(root / "agreement" / "agreement.json")
    page.section("Agreement with the true feedback", "agreement")
    if ag:
        page.table(["Kendall tau", "p-value", "sign accuracy", "positive words", "negative words",
                    "tau (negative words)", "words"],
                   [[ag["kendall_tau"], ag["p_value"], ag["sign_accuracy"], ag["sign_accuracy_positive"],
                     ag["sign_accuracy_negative"], ag.get("kendall_tau_negative", float("nan")), ag["n_words"]]])
        page.image(_agreement_scatter(ag["words"], root / "report_agreement.png"), "predicted vs true")
        page.heading("Token table: predicted vs true feedback (strongest lexicon words)")
        page.table(["word", "lexicon valence", "probe prediction"],
                   [[w["word"], w["lexicon"], w["predicted"]] for w in ag["words"][:40]])
    elif ag is None:
        page.text("not run", muted=True)
    fe = _load(root / "features" / "features.json")
    page.section("Feature validation", "features")
    if fe:
        page.text(fe["label_note"], muted=True)
        fr = fe["frequency"]
        page.table(["measure", "value"], [[k, v] for k, v in fr.items()])
        ab = fe["ablation"]
        page.heading("Zero-ablating the related features during generation (lexicon reward)")
        page.table(["prompts", "reward before", "reward after", "ablated features"],
                   [[ab.get("n_prompts", 0), ab.get("reward_before", float("nan")),
                     ab.get("reward_after", float("nan")), len(ab.get("ablated", []))]])
        rows = []
        for f in fe["features"]:
            ctx0 = f["contexts"][0] if f["contexts"] else None
            snippet = ""
            if ctx0:
                toks = [esc(t) for t in ctx0["tokens"]]
                h = ctx0["highlight"]
                if 0 <= h < len(toks):
                    toks[h] = f"<mark>{toks[h]}</mark>"
                snippet = "".join(toks)
            rows.append([esc(f["layer"]), esc(f["feature"]), esc(f"{f['cos_to_other_dictionary']:.3f}"),
                         esc(f["explanation"]), esc(f["related"]), esc(f"{f['firing_rate_strong']:.3f}"),
                         esc(f"{f['firing_rate_all']:.3f}"), snippet])
        page.table(["layer", "feature", "cos (other dict.)", "explanation", "related", "firing (strong feedback)",
                    "firing (all)", "top context"], rows, raw_cells=True)
    return page.write(root / "report.html")
