"""The LFP report: the study's tables and figures in one offline page, built from the stages' typed outputs
(:mod:`actlab.lfp.outputs`) with the report's building blocks (:mod:`actlab.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis.pca import principal_components
from ..report.html import Page, count, esc, number
from ..report.plots import pyplot, save_figure
from .outputs import Agreement, Deltas, Dictionaries, Features, Finetuned, LayerChoice, ProbeSummary


def _probe_pca(root: Path, out: Path) -> Path | None:
    """PCA of the probe inputs (SAE features of positive, neutral and negative variants)."""
    deltas = Deltas.read(root)
    if deltas is None:
        return None
    n = len(deltas.tensors["f_pos"])
    coords, ev = principal_components(deltas.features(), 2)
    xy = coords.numpy()
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


def _frequency_plot(words: list[dict[str, Any]], out: Path) -> Path | None:
    """The study's Fig. 4: probe error per word against how often the fine-tuned model generates it."""
    pts = [w for w in words if w.get("generated_count") is not None]
    if not pts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for held, color, label in ((True, "#2c7fb8", "held-out words"), (False, "#f03b20", "training words")):
        sel = [w for w in pts if w.get("heldout", True) == held]
        if sel:
            ax.scatter([w["generated_count"] for w in sel], [w["error"] for w in sel], s=12, alpha=0.6, color=color,
                       label=label)
    ax.set_xscale("symlog")
    ax.set_xlabel("times the fine-tuned model generated the word")
    ax.set_ylabel("probe error |prediction - valence / 5|")
    ax.set_title("probe error vs generation frequency (Fig. 4 of the study)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


# per-token KL of the fine-tuned policy to the base under which the fine-tuning is said to have barely moved it
# (the paper preset's lr 1e-6 on TinyStories-656K for 200 steps ends at 2.5e-6; the tiny preset at ~0.02)
BARELY_TUNED_KL = 1e-3


def barely_moved(history: list[dict[str, Any]]) -> str | None:
    """A warning when an RL fine-tuning's KL to the base over its last tenth of logged steps stays below
    :data:`BARELY_TUNED_KL` per token; None otherwise (or when no KL was logged, as with DPO)."""
    kls = [h["kl"] for h in history if isinstance(h.get("kl"), (int, float))]
    if not kls:
        return None
    tail = kls[-max(1, len(kls) // 10):]
    kl = sum(tail) / len(tail)
    if kl >= BARELY_TUNED_KL:
        return None
    return (f"the fine-tuning barely moved the model: its KL to the base is {kl:.2g} per token over the last "
            f"{len(tail)} logged step(s) (below {BARELY_TUNED_KL:g}), so the results describe a model close to "
            "the base, not a learned feedback pattern (raise finetune.rl.lr or max_steps)")


def lfp_warnings(root: Path) -> list[str]:
    """What the data says a reader must know before trusting the tables below."""
    out = []
    ft = Finetuned.read(root)
    moved = barely_moved(ft.history) if ft else None
    if moved:
        out.append(moved)
    dic = Dictionaries.read(root)
    for layer, ms in (dic.metrics if dic else {}).items():
        for name, m in ms.items():
            if m.get("dense_fraction", 0) > 0.1:
                out.append(f"dense dictionary: layer {layer} {name} has {m['dense_fraction']:.0%} of its features "
                           "active on more than 10% of tokens (raise the L1 coefficient or train longer)")
    pr = ProbeSummary.read(root)
    if pr and pr.test.get("r2", 0) < 0:
        out.append(f"the probe's held-out R^2 is negative ({pr.test['r2']:.2f}): it predicts the held-out "
                   "deltas worse than their mean; read its agreement numbers with care")
    fe = Features.read(root)
    if fe and fe.frequency.get("self_consistency"):
        out.append("no explainer ran: the feature labels come from the probe itself (chosen on half of the "
                   "examples, measured on the other half) - a self-consistency check, not the study's Table 7")
    n_strong = fe.frequency.get("n_strong") if fe else None
    if n_strong is not None and n_strong < 20:
        out.append(f"the firing rates on strong-feedback inputs rest on {n_strong} input(s) "
                   f"({fe.frequency.get('strong_inputs')}): too few to compare rates")
    ag = Agreement.read(root)
    gen = (ag.frequency or {}).get("words_generated") if ag else None
    if gen is not None and gen < 10:
        out.append(f"the probe-error vs generation-frequency figure (Fig. 4) rests on {gen} generated lexicon "
                   "word(s): too few to read a trend (raise frequency_prompts)")
    if fe and fe.source == "crosscoder" and not fe.n_features:
        out.append("the crosscoder gave no candidate feature (no tuned-only latent, no shared latent whose decoder "
                   "moved past crosscoder.shifted_cosine): nothing below is about what fine-tuning added")
    ab = fe.ablation if fe else {}
    if {"reward_before", "reward_after", "reward_after_random"} <= set(ab):
        eff, rnd = ab["reward_after"] - ab["reward_before"], ab["reward_after_random"] - ab["reward_before"]
        if abs(eff) <= abs(rnd):
            out.append(f"ablating the related features changed the reward by {eff:+.3f}, no more than ablating as "
                       f"many random features ({rnd:+.3f}): no evidence that they carry the feedback")
    return out


def _agreement_section(page: Page, root: Path, ag: Agreement) -> None:
    page.text("Kendall's tau between the probe's prediction for lexicon words and their valences (Table 4), "
              "tau on negative words only (Table 10) and sign accuracy (Table 5). Held-out words appear in no "
              "text the probe was trained on; the untrained (Xavier) probe on the same held-out words is the "
              "baseline.", muted=True)
    c = ag.contexts or {"kind": "templates"}
    if c.get("kind") == "imdb":
        page.text(f"Each word read inside up to {c.get('per_word')} real IMDb passages ({c.get('window_words')} words "
                  f"around it, from {c.get('n_texts')} reviews, the {c.get('excluded_triple_sources')} the triples "
                  f"came from excluded; {c.get('words_without_context')} candidate words occur in none and were "
                  "not scored), as the study does, and the probe's outputs averaged.", muted=True)
    else:
        page.text("Each word read inside three neutral templates (" + "; ".join(ag.templates) + ") and the probe's "
                  "outputs averaged; agreement_contexts: imdb reads real passages as the study does.", muted=True)
    labels = {"heldout": "held-out words (trained probe)", "train": "training words (in-sample)",
              "untrained_baseline": "held-out words, untrained probe (baseline)"}
    page.table(["words", "Kendall tau", "p-value", "sign accuracy", "positive words", "negative words",
                "tau (negative words)", "n"],
               [[labels.get(k, k), g["kendall_tau"], g["p_value"], g["sign_accuracy"], g["sign_accuracy_positive"],
                 g["sign_accuracy_negative"], g.get("kendall_tau_negative", float("nan")), g["n_words"]]
                for k, g in ag.groups.items()])
    page.image(_agreement_scatter(ag.words, root / "report_agreement.png"), "predicted vs true")
    fig4 = _frequency_plot(ag.words + ag.train_words, root / "report_frequency.png")
    if fig4:
        fr = ag.frequency
        page.heading("Probe error vs how often the fine-tuned model generates the word")
        page.image(fig4, "probe error vs generation frequency")
        if fr:
            page.text(f"Spearman rho(error, count) = {fr['spearman_error_vs_count']:.3f} (p = {fr['p_value']:.2g}) "
                      f"over {fr['n_prompts']} {fr.get('completions', 'greedy generations')} "
                      f"({fr['new_tokens']} new tokens); "
                      f"{fr['words_generated']} of the scored words were generated at least once.", muted=True)
    page.heading("Token table: predicted vs true feedback (strongest lexicon words)")
    page.table(["word", "lexicon valence", "probe prediction"],
               [[w["word"], w["lexicon"], w["predicted"]] for w in ag.words[:40]])


def _quality(f: dict[str, Any]) -> str:
    """Detection / fuzzing balanced accuracy, with the AUCs and the simulation correlation when scored."""
    def num(d: Any, key: str) -> str:
        v = d.get(key) if isinstance(d, dict) else None
        return "-" if v is None else f"{number(v):.2f}"

    out = " / ".join(num(f.get(k), "balanced_accuracy") for k in ("detection", "fuzzing"))
    if any(isinstance(f.get(k), dict) and f[k].get("auc") is not None for k in ("detection", "fuzzing")):
        out += " (AUC " + " / ".join(num(f.get(k), "auc") for k in ("detection", "fuzzing")) + ")"
    if isinstance(f.get("simulation"), dict):
        out += f"; simulation r {num(f['simulation'], 'correlation')}"
    return out


def _features_section(page: Page, fe: Features) -> None:
    page.text(fe.label_note, muted=True)
    if fe.source == "crosscoder":
        cc = fe.crosscoder
        ev = cc.get("explained_variance") or []
        def counts(d: dict[str, Any] | None) -> str:
            return ", ".join(f"{v} {k}" for k, v in (d or {}).items())

        page.text(f"Candidates from a crosscoder at {cc.get('point')} ({cc.get('folder')}): latents "
                  f"{counts(cc.get('classes'))}; explained variance base / tuned "
                  + " / ".join(f"{number(v):.3f}" for v in ev) + f"; candidates {counts(cc.get('candidates'))} "
                  f"(shared latents count as shifted below decoder cosine {cc.get('shifted_cosine')}).")
    page.table(["measure", "value"], [[k, v] for k, v in fe.frequency.items()])
    ab = fe.ablation
    page.heading("Zero-ablating the related features during generation (lexicon reward)")
    page.table(["prompts", "reward before", "after ablating the related features",
                "after ablating as many random features", "ablated features"],
               [[ab.get("n_prompts", 0), ab.get("reward_before", float("nan")),
                 ab.get("reward_after", float("nan")), ab.get("reward_after_random", float("nan")),
                 len(ab.get("ablated", []))]])
    rows = []
    for f in fe.features:
        ctx0 = f["contexts"][0] if f["contexts"] else None
        snippet = ""
        if ctx0:
            toks = [esc(t) for t in ctx0["tokens"]]
            h = count(ctx0["highlight"], "highlight")
            if 0 <= h < len(toks):
                toks[h] = f"<mark>{toks[h]}</mark>"
            snippet = "".join(toks)
        cos, strong = f["cos_to_other_dictionary"], f["firing_rate_strong"]
        rows.append([esc(f["layer"]), esc(f["feature"] if "class" not in f else f"{f['feature']} ({f['class']})"),
                     esc("-" if cos is None else f"{cos:.3f}"), esc(f["explanation"]), esc(_quality(f)),
                     esc("yes" if f["related"] else "no"), esc("-" if strong is None else f"{strong:.3f}"),
                     esc(f"{f['firing_rate_all']:.3f}"), snippet])
    if fe.base:
        _base_section(page, fe)
    cos_head = "decoder cos (base vs tuned)" if fe.source == "crosscoder" else "cos (other dict.)"
    page.table(["layer", "feature" if fe.source != "crosscoder" else "latent (class)", cos_head, "explanation",
                "label quality (detection / fuzzing)", "related", "firing (strong feedback)", "firing (all)",
                "top context"], rows, raw_cells=True)


def _base_section(page: Page, fe: Features) -> None:
    """The study's Appendix B: task-related features in the fine-tuned vs the base model's dictionaries."""
    b = fe.base
    page.heading("Task-related features: fine-tuned vs base model (Appendix B)")
    if b.get("note"):
        page.text(b["note"], muted=True)
        return
    labelled = [f for f in fe.features if f.get("related") is not None]
    tuned_share = sum(bool(f["related"]) for f in labelled) / len(labelled) if labelled else None
    page.table(["model", "features explained", "labelled task-related", "share"],
               [["fine-tuned", len(labelled), sum(bool(f["related"]) for f in labelled), tuned_share],
                [f"base ({b.get('model')})", b.get("n_features", 0), b.get("n_related", 0), b.get("related_share")]])
    page.table(["layer", "base feature", "explanation", "related"],
               [[f["layer"], f["feature"], f["explanation"], "yes" if f["related"] else "no"]
                for f in b.get("features", [])])


def study_settings(cfg: Any, root: Path) -> list[list[Any]]:
    """Each of the study's settings beside this run's: [setting, the study, this run, same?]. Differences are
    either choices (a preset, a config) or forced (PPO is gone from TRL; a model with fewer layers; a dataset
    with fewer reviews), and the rows say which."""
    from ..data import read_texts
    from ..data.readers import DatasetError
    from ..finetune.rl import RL_PRESETS

    rows: list[list[Any]] = []

    def row(name: str, study: str, here: str, same: bool, forced: str = "") -> None:
        rows.append([name, study, here, "as the study" if same else (f"differs: {forced}" if forced else
                                                                      "differs (config)")])

    if cfg.tuned_model is None and cfg.finetune.method == "rl":
        rl, st = cfg.finetune.rl, RL_PRESETS["study"]
        row("RL algorithm", "PPO with a value head", f"{rl.method.upper()} with a KL penalty", False,
            "PPO left TRL's main package; GRPO/RLOO take a reward function")
        key = ("batch_size", "beta", "lr", "max_grad_norm")
        row("RL batch / KL / lr / grad clip", " / ".join(f"{getattr(st, k):g}" for k in key),
            " / ".join(f"{getattr(rl, k):g}" for k in key), all(getattr(st, k) == getattr(rl, k) for k in key))
        row("reward", "VADER lexicon (Appendix B: a sentiment classifier)",
            "VADER lexicon" if rl.reward == "lexicon" else f"classifier {rl.classifier}", True)
    elif cfg.tuned_model is not None:
        rows.append(["fine-tuning", "RL with the lexicon reward", f"given: {cfg.tuned_model}", "not run here"])
    else:
        row("fine-tuning", "RL with the lexicon reward", "DPO on preference pairs", False)
    lay = LayerChoice.read(root)
    n_layers = len(lay.mlp_divergence) if lay else None
    k = len(lay.layers) if lay else min(cfg.top_k_layers, n_layers or cfg.top_k_layers)
    few = n_layers is not None and n_layers < 5
    row("layers", "the 5 most divergent MLP layers",
        f"given: {cfg.layers}" if cfg.layers is not None else f"the {k} most divergent MLP layers",
        cfg.layers is None and k == 5, f"the model has {n_layers} layers" if few and cfg.layers is None else "")
    sae = cfg.sae
    row("dictionaries", "1x and 2x, L1 0.001, lr 0.001, batch 32, tied, raw activations",
        f"{' and '.join(f'{e:g}x' for e in sae.expansions)}, L1 {sae.l1_coefficient:g}, lr {sae.train.lr:g}, "
        f"batch {sae.train.batch_size}, {'tied' if sae.tied else 'untied'}, "
        f"{'normalised' if sae.train.normalize_activations else 'raw'} activations",
        sae.expansions == [1.0, 2.0] and sae.l1_coefficient == 1e-3 and sae.train.lr == 1e-3
        and sae.train.batch_size == 32 and sae.tied and not sae.train.normalize_activations)
    row("deltas", "per-token, averaged", "per-token, averaged" if cfg.delta_reduce == "per_token" else
        "codes averaged over the word's tokens, then the norm", cfg.delta_reduce == "per_token")
    row("agreement contexts", "real IMDb passages", "real IMDb passages" if cfg.agreement_contexts == "imdb"
        else "three neutral templates", cfg.agreement_contexts == "imdb")
    comp = cfg.completions
    row("completions (Table 6)", "1000 sampled continuations of 30-token IMDb prefixes",
        f"{cfg.frequency_prompts} (frequency) / {cfg.ablation_prompts} (ablation) {comp.describe()}",
        cfg.frequency_prompts == cfg.ablation_prompts == 1000 and comp.prefix_tokens == 30 and comp.sample)
    row("strong inputs (Table 7)", "predicted delta > 3", "predicted delta > 3" if cfg.strong_inputs == "paper"
        else "top 20% |prediction|", cfg.strong_inputs == "paper")
    if cfg.data is not None:
        try:
            n_data = len(read_texts(cfg.data))
        except (OSError, DatasetError):  # the report still draws without the count
            n_data = None
        if n_data is not None:
            need = max(sae.n_texts, 4 * cfg.triples.n, 200)
            row("IMDb reviews", "25,000 (the IMDb training split)", f"{n_data:,} in {Path(str(cfg.data)).name}",
                n_data >= 25000, f"the data holds fewer; the run uses up to {min(need, n_data):,} of them")
    return rows


def build_lfp_report(root: Path, cfg: Any) -> Path:
    root = Path(root)
    page = Page("Learned Feedback Patterns", f"base {cfg.base_model}; fine-tuned {cfg.tuned_model or 'by this run'}; "
                                              f"task {cfg.task}")
    warnings = lfp_warnings(root)
    if warnings:
        page.section("Warnings", "warnings")
        page.html("<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")
    page.section("Settings against the study", "settings")
    page.text("Where this run follows the study and where it differs: a choice of the config (the tiny preset "
              "scales everything down to run on a CPU) or forced (named).", muted=True)
    page.table(["setting", "the study", "this run", ""], study_settings(cfg, root))
    ft = Finetuned.read(root)
    page.section("Fine-tuning", "finetune")
    if ft:
        page.text(f"method {ft.method}" + (f"; reward: {ft.reward}" if ft.reward else "")
                  + (f"; {ft.deviation}" if ft.deviation else ""))
        if (root / "finetune" / "finetune.png").is_file():
            page.image(root / "finetune" / "finetune.png", "reward/KL over steps")
    else:
        page.text(f"not run here: the fine-tuned model was given ({cfg.tuned_model})", muted=True)
    page.section("Parameter divergence per layer", "divergence")
    lay = LayerChoice.read(root)
    if lay:
        page.text(f"selected layers: {lay.layers} ({lay.rule})")
        page.image(root / "divergence" / "divergence.png", "divergence per layer")
    dic = Dictionaries.read(root)
    page.section("Dictionaries", "sae")
    if dic:
        rows = [[layer, name, m["explained_variance"], m["l0"], m["dead_fraction"], m["dense_fraction"]]
                for layer, ms in dic.metrics.items() for name, m in ms.items()]
        page.table(["layer", "dictionary", "explained variance", "L0", "dead", "dense"], rows)
    pr = ProbeSummary.read(root)
    page.section("Probe accuracy", "probes")
    if pr:
        keys = sorted(pr.test)
        page.table(["split", *keys], [["train", *[pr.train[k] for k in keys]],
                                      ["held-out", *[pr.test[k] for k in keys]],
                                      ["untrained (Xavier) baseline, held-out",
                                       *[pr.xavier_baseline_test[k] for k in keys]]])
    pca = _probe_pca(root, root / "report_probe_pca.png")
    if pca:
        page.heading("PCA of the probe inputs")
        page.image(pca, "PCA of the probe inputs")
    ag = Agreement.read(root)
    page.section("Agreement with the true feedback", "agreement")
    if ag and ag.groups:
        _agreement_section(page, root, ag)
    else:
        page.text("not run" if ag is None else "not applicable to this task", muted=True)
    fe = Features.read(root)
    page.section("Feature validation", "features")
    if fe:
        _features_section(page, fe)
    return page.write(root / "report.html")
