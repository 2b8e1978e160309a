"""Curated report sections, one per result kind: the figure first, a short "how to read this", the key numbers
in a small table, warnings where the data calls for them, and the raw JSON folded in ``<details>``.

A renderer gets the parsed JSON and a :class:`Context` (the folder's figures, claimed once embedded). A file
of a known kind whose fields do not match is shown by the generic renderer instead (``run_report``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .html import Page, count, esc, number, tok, visible

MAX_DETAILS = 20_000  # characters of raw JSON folded into a section


@dataclass
class Context:
    """The file being rendered and the PNGs beside it (a figure is embedded at most once per page)."""

    path: Path
    pngs: dict[str, Path]
    claimed: set[Path] = field(default_factory=set)
    files: dict[str, Path] = field(default_factory=dict)  # the folder's listed files (never a symbolic link)

    def sibling_json(self, name: str) -> Any:
        """A JSON file beside the rendered one, only when the folder listing holds it (no symbolic link, no file
        outside the run folder); None when it is absent or unreadable."""
        p = self.files.get(name)
        if p is None or p.is_symlink():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return None

    def figure(self, page: Page, *names: str) -> bool:
        """Embed the first existing PNG of ``names`` (file names in the folder); True when one was found."""
        for n in names:
            p = self.pngs.get(n)
            if p is not None and p not in self.claimed:
                page.image(p, n)
                self.claimed.add(p)
                return True
        return False

    def figures_starting(self, page: Page, prefix: str) -> None:
        """Every PNG whose name starts with ``prefix``; two or more side by side in a grid."""
        names = [n for n in sorted(self.pngs) if n.startswith(prefix) and self.pngs[n] not in self.claimed]
        if len(names) < 2:
            for n in names:
                self.figure(page, n)
            return
        grid = page.fork()
        for n in names:
            self.figure(grid, n)
        page.html('<div class="figs">' + "".join(grid.parts) + "</div>")


def details(page: Page, obj: Any, name: str) -> None:
    """The raw JSON, folded (truncated past :data:`MAX_DETAILS` characters; the file has it all)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    more = f" (first {MAX_DETAILS:,} of {len(text):,} characters)" if len(text) > MAX_DETAILS else ""
    page.html(f"<details><summary>raw {esc(name)}{esc(more)}</summary><pre>{esc(text[:MAX_DETAILS])}</pre>"
              "</details>")


def how(page: Page, text: str) -> None:
    page.html(f'<p class="how"><b>How to read this.</b> {esc(text)}</p>')


def warn(page: Page, text: str) -> None:
    page.html(f'<p class="warn">{esc(text)}</p>')


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


# -- renderers ------------------------------------------------------------------------------------------------
def run_record(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    versions = obj.get("versions", {}) or {}
    rows = [["command", obj.get("command", "")], ["status", obj.get("status", "")],
            ["started", obj.get("started", "")], ["duration", f"{obj['duration_s']:.1f} s"
                                                  if isinstance(obj.get("duration_s"), (int, float)) else ""],
            ["actlab", versions.get("actlab", "")],
            ["git", (str(obj["git"].get("commit", ""))[:12] + (" (with local changes)" if obj["git"].get("dirty")
                                                               else "")) if isinstance(obj.get("git"), Mapping)
             else ""]]
    if obj.get("interventions"):
        rows.append(["interventions", ", ".join(str(i.get("kind", "?")) for i in obj["interventions"]
                                                if isinstance(i, Mapping))])
    page.table(["run", ""], [[k, v] for k, v in rows if v not in ("", None)])
    details(page, obj, "run.json (config, versions, seed)")


def lens(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "lens.png")
    how(page, "Each row of the figure is a layer, each column a hook point; colour is log10 of the target token's "
              "probability when that point's residual contribution is decoded through the final norm and "
              "unembedding, and the cell text its rank (#1 = what the lens would predict). Read down a column "
              "to see where the answer emerges.")
    target = obj["target"]["token"] if isinstance(obj.get("target"), Mapping) else obj.get("target")
    rows = []
    for pr in obj["prompts"]:
        last, first_top = None, None
        for e in pr["points"].get("resid_post", []):
            last = e
            if first_top is None and e.get("target_rank") == 1:
                first_top = e["layer"]
        rows.append([pr["prompt"], visible(pr.get("model_top_token", "")),
                     _f(last.get("target_prob")) if last else "", "never" if first_top is None else first_top])
    page.table(["prompt", "model predicts", f"p({target!r}) at the last layer", "top-1 from layer"], rows)
    details(page, obj, ctx.path.name)


def sweep(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "sweep_heatmap.png")
    ctx.figure(page, "sweep_curves.png")
    cfg, cells = obj["config"], obj["cells"]
    how(page, "p(answer matching the behaviour) on the A/B questions for each layer x multiplier; 0.5 is chance. "
              f"Steering at positions '{cfg.get('positions')}'. p(first) is how often the first answer label "
              "wins whatever the question; flip is the share of questions whose answer changed from the "
              "unsteered run; a collapsed cell gives one answer to (nearly) every question - its p(matching) "
              "then says little about the behaviour.")
    collapsed = [c for c in cells.values() if c.get("collapsed")]
    if collapsed:
        warn(page, f"{len(collapsed)} of {len(cells)} cells collapsed onto one answer: "
                   + ", ".join(f"layer {c['layer']} x {c['multiplier']:g}" for c in collapsed[:8]))
    rows = [[c["layer"], c["multiplier"], c["p_matching"], c.get("p_first", ""), c.get("flip_fraction", ""),
             "yes" if c.get("collapsed") else ""]
            for c in sorted(cells.values(), key=lambda c: (c["layer"], c["multiplier"]))]
    page.table(["layer", "multiplier", "p(matching)", "p(first label)", "flip", "collapsed"], rows[:40])
    page.text(f"{cfg.get('n_questions')} questions; vector {cfg.get('vector_sha256', '')[:12]} at "
              f"{cfg.get('point')}; model {cfg.get('model')}", muted=True)
    details(page, obj, ctx.path.name)


def vector_comparison(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figures_starting(page, "vector_comparison_layers")
    ctx.figure(page, "vector_comparison_cross_model.png")
    ctx.figure(page, "vector_comparison_pca.png")
    how(page, "Layer x layer cosine similarity of each behaviour's vectors (neighbouring layers usually agree), "
              "per-layer cosine between two models' vectors when given, and a PCA of all vectors (each scaled to "
              "unit norm and centred first, so the picture is about directions, not sizes).")
    rows = []
    for name, lc in obj.get("layer_cosine", {}).items():
        m, layers = lc["matrix"], lc["layers"]
        adj = [m[i][i + 1] for i in range(len(layers) - 1)]
        rows.append([name, f"{layers[0]}-{layers[-1]} ({len(layers)})",
                     sum(adj) / len(adj) if adj else float("nan")])
    page.table(["vectors", "layers", "mean cosine of neighbouring layers"], rows)
    for name, per_layer in obj.get("cross_model", {}).items():
        vals = list(per_layer.values()) if isinstance(per_layer, Mapping) else []
        if vals:
            page.text(f"{name}: cross-model cosine {min(vals):.2f} to {max(vals):.2f} over {len(vals)} layers")
    if obj.get("forced_differences"):
        warn(page, "compared despite differences: " + "; ".join(map(str, obj["forced_differences"])))
    details(page, obj, ctx.path.name)


def layer_metrics(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "layer_metrics.png")
    how(page, "Per layer: cosine between the mean activation of the two prompt sets (lower = the sets separate "
              "more), and the mean / maximum per-feature variance (a spike marks a layer dominated by a few "
              "outlier dimensions). The recommended layers follow the first rule below; the control-vectors "
              "study's order of the same metrics is the second.")
    rows = [["recommended", ", ".join(map(str, obj.get("recommended", []))), obj.get("rule", "")]]
    if obj.get("study_ranking"):
        rows.append(["study's order", ", ".join(map(str, obj["study_ranking"])), obj.get("study_rule", "")])
    page.table(["ranking", "layers", "rule"], rows)
    growth = obj.get("variance_growth")
    if isinstance(growth, Mapping) and any(isinstance(g, Mapping) for g in growth.values()):
        page.table(["stream", "mean variance grows per layer", "R2 of log-linear fit", "layers fitted"],
                   [[s, f"x{g['growth']:.3f}", _f(g["r2"]), f"{g['layers'][0]}-{g['layers'][-1]}"]
                    for s, g in growth.items() if isinstance(g, Mapping)])
    details(page, obj, ctx.path.name)


def behaviour_comparison(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "vector_comparison_cross_model.png")
    a, b = obj["models"]
    how(page, f"One mean-difference vector per behaviour on each model ({a} and {b}). First table: per "
              "behaviour, the cosine between the two models' vectors at each layer (1 = the fine-tune kept the "
              "direction). Second: within each model, the mean cosine between different behaviours' vectors per "
              "layer (high = the behaviours share a direction there). Layer heatmaps and the PCA are in "
              "vector_comparison.json's section.")
    rows = []
    for label, per in obj["cross_model"].items():
        vals = {int(k): float(v) for k, v in per.items()}
        lo, hi = min(vals, key=vals.get), max(vals, key=vals.get)
        rows.append([label, _f(sum(vals.values()) / len(vals)), f"{_f(vals[lo])} (L{lo})", f"{_f(vals[hi])} (L{hi})"])
    page.table(["behaviour", "mean cosine across models", "lowest", "highest"], rows)
    within = obj.get("between_behaviours", {})
    if len(obj["behaviours"]) > 1 and all(isinstance(within.get(x), Mapping) for x in (a, b)):
        def mean_off(mat: Sequence[Sequence[float]]) -> float:
            n = len(mat)
            return sum(mat[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        layers = sorted(set(within[a]) & set(within[b]), key=int)
        page.table(["layer", f"between behaviours, {a}", f"between behaviours, {b}"],
                   [[k, _f(mean_off(within[a][k])), _f(mean_off(within[b][k]))] for k in layers])
    details(page, obj, ctx.path.name)


def mix_sweep(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "mix_sweep.png")
    concept = obj["concept"]["token"]
    how(page, f"The source prompt's activation mixed in at one layer at a time. 'lens rank' is where the mixed-in "
              f"activation, decoded by the logit lens, ranks the concept {concept!r} (1 = its top token): the "
              "recommendation is the first layer where the concept decodes (rank within the top "
              f"{obj.get('top_k')}). The probabilities are the concept's as the prompts' next token, mixed and "
              "unmixed; 'in generation' is the share of mixed generations containing it.")
    rec = obj.get("recommended_layer")
    page.table(["layer", "lens rank", "lens p", "lens top", "p mixed", "p unmixed", "in generation",
                "first generation"],
               [[f"{r['layer']}{' (recommended)' if r['layer'] == rec else ''}", r["lens_rank"], _f(r["lens_prob"]),
                 r["lens_top"], _f(r["concept_prob_mixed"]), _f(r["concept_prob_unmixed"]),
                 _f(r["concept_in_generation"]), (r["generations"] or [""])[0]] for r in obj["layers"]])
    if rec is None:
        warn(page, f"the concept {concept!r} never reaches the lens's top {obj.get('top_k')} at the swept layers: "
                   "no layer is recommended (sweep later layers, or name the concept with --concept)")
    details(page, obj, ctx.path.name)


def untangling(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "untangling.png")
    how(page, "Does depth untangle the two sets? Per layer, a linear probe's accuracy on held-out items "
              f"({obj.get('test_fraction', 0.25):.0%} of each set, trained on the rest), the mean distance between "
              "items (all pairs, within a set, across sets) and the mean feature variance. The growth rows fit "
              "log(value) = a + b * layer: exp(b) is the factor per layer; an R2 near 1 is the near-exponential "
              "growth the control-vectors study reports.")
    fits = [[name, f"x{g['growth']:.3f}", _f(g["r2"])] for name, g in (
        ("mean pairwise distance", obj.get("distance_growth")), ("mean variance", obj.get("variance_growth")))
            if isinstance(g, Mapping)]
    if fits:
        page.table(["quantity", "growth per layer", "R2"], fits)
    page.table(["layer", "held-out accuracy", "train accuracy", "chance", "distance (all)", "within", "between",
                "between / within"],
               [[count(r["layer"]), _f(r["test_accuracy"]), _f(r["train_accuracy"]), _f(r["chance"]),
                 _f(r["distance"]["all"]), _f(r["distance"]["within"]), _f(r["distance"]["between"]),
                 _f(r["distance"]["between_over_within"])] for r in obj["layers"]])
    small = min(obj.get("n_positive", 0), obj.get("n_negative", 0))
    if small < 20:
        warn(page, f"only {small} items in the smaller set: the held-out accuracy rests on a handful of test items")
    details(page, obj, ctx.path.name)


def dataset_pca(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "dataset_pca.png")
    how(page, "Each point is one item of the dataset (its activation at the layer), placed on the first two "
              "principal components of all items at that layer, coloured by class (the answer matching the "
              "behaviour or not). Separation: the distance between the class centroids over the within-class "
              "spread in that plane; where it grows, the layer has started to tell the classes apart.")
    page.table(["layer", "separation", "PC1 / PC2 variance"],
               [[count(r["layer"]), _f(r["separation"]), f"{100 * number(r['explained'][0]):.0f}% / "
                 f"{100 * number(r['explained'][1]):.0f}%"] for r in obj["layers"]])
    details(page, obj, ctx.path.name)


def prompting(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "prompting.png")
    how(page, "Does the instruction act on the residual stream like an added vector or like a rotation? Per "
              "layer, two maps fitted on half the prompts carry the unprompted activation x towards the prompted "
              "one y; on the other half, the residual error of each (0 = reproduces the prompt's effect, 1 = "
              "explains none of it) and the KL from the prompted run's next-token distribution to the "
              "unprompted run with the map applied. A rotation keeps norms, an addition changes them (norm "
              "ratio).")
    rows = []
    for r in obj["per_layer"]:
        better = "rotation" if number(r["residual_error_rotate"]) < number(r["residual_error_add"]) else "addition"
        rows.append([count(r["layer"]), _f(r["residual_error_add"]), _f(r["residual_error_rotate"]), better,
                     _f(r.get("kl_none", "")), _f(r.get("kl_add", "")), _f(r.get("kl_rotate", "")),
                     _f(r.get("theta_degrees", ""), 2), _f(r.get("mean_norm_ratio_y_x", ""))])
    page.table(["layer", "error: addition", "error: rotation", "fits better", "KL none", "KL addition",
                "KL rotation", "angle (deg)", "norm ratio y/x"], rows)
    page.text(f"instruction {obj.get('instruction', '')!r}; {obj.get('n_train')} prompts fit the maps, "
              f"{obj.get('n_test')} test them", muted=True)
    details(page, obj, ctx.path.name)


def curvature(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "curvature.png")
    how(page, f"The {obj.get('metric', 'metric')} as m x the steering vector is added at every position of "
              f"{obj.get('point', 'the point')}, with its first and second derivatives in m (autograd). A flat, "
              "'Euclidean' response would have a second derivative of 0; its size against the first says how "
              "soon a linear reading of the multiplier stops holding.")
    page.table(["multiplier", "value", "first derivative", "second derivative"],
               [[_f(r["multiplier"], 3), _f(r["value"], 4), _f(r["first_derivative"], 4),
                 _f(r["second_derivative"], 4)] for r in obj["rows"]])
    page.text(f"vector norm {_f(obj.get('vector_norm', ''), 4)}; {obj.get('note', '')}", muted=True)
    details(page, obj, ctx.path.name)


def hessian(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "hessian.png")
    params = obj.get("params") if isinstance(obj.get("params"), Mapping) else None
    what = (f"the {count(params['count']):,} parameters matching {params['glob']!r}" if params
            else f"a vector added at every position of {obj.get('point')}")
    how(page, f"The leading eigenvalues of the Hessian of the next-token loss with respect to {what}, found by "
              f"{obj.get('method')} from Hessian-vector products (the matrix is never formed). Large magnitudes "
              "are the directions the loss is most curved along; negative ones mean the point is not a minimum "
              "along them." + (" |cos| compares each eigenvector with the steering vector, beside a random "
                               "direction's expected |cos|." if "abs_cos_to_vector" in obj else "")
        + (" Per batch: each batch's own leading eigenvalues, averaged, beside the Hessian of all batches at "
           "once." if obj.get("per_batch") else ""))
    head = ["eigenvector", "eigenvalue"]
    cols: list[list[str]] = [[str(i + 1) for i in range(len(obj["eigenvalues"]))],
                             [_f(v, 4) for v in obj["eigenvalues"]]]
    if "abs_cos_to_vector" in obj:
        head.append("|cos| to the vector")
        cols.append([_f(c) for c in obj["abs_cos_to_vector"]])
    if obj.get("per_batch"):
        head.append("mean of per-batch")
        cols.append([_f(v, 4) for v in obj["per_batch"]["mean"]])
    page.table(head, [list(r) for r in zip(*cols, strict=True)])
    page.text(f"{count(obj.get('hessian_vector_products', 0))} Hessian-vector products", muted=True)
    details(page, obj, ctx.path.name)


def mix(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    rec = obj.get("intervention") if isinstance(obj.get("intervention"), Mapping) else {}
    how(page, "Activation mixing: the source prompt's activation (scaled) added at the point while each prompt "
              "generates; the unmixed and mixed texts side by side (greedy).")
    page.table(["prompt", "unmixed", "mixed"],
               [[g["prompt"], g["unmixed"], g["mixed"]] for g in obj["generations"]])
    page.text("; ".join(f"{k} {v}" for k, v in rec.items() if k in ("source", "points", "scale", "position")),
              muted=True)
    details(page, obj, ctx.path.name)


def vocab_projection(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figures_starting(page, "vocab")
    how(page, "Tokens whose logits the direction raises (promotes) and lowers most when it is read through the "
              "final norm's gain and the unembedding, per layer. Early layers often give sub-word noise; a "
              "coherent list says the direction is already 'about' those words.")
    rows = []
    for entry in obj["layers"]:
        layer = entry["layer"] if isinstance(entry, Mapping) else entry
        sc = obj["scores"][str(layer)]
        rows.append([esc(layer), " ".join(tok(t) for t, _ in sc["positive"][:6]),
                     " ".join(tok(t) for t, _ in sc["negative"][:6])])
    page.table(["layer", "promoted", "suppressed"], rows, raw_cells=True)
    details(page, obj, ctx.path.name)


def divergence(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "divergence.png")
    how(page, "L2 norm of the difference between the two models' parameters per layer (whole layer and per module "
              "group); large bars are where fine-tuning (or an edit) changed the model most.")
    per = obj["per_layer"]
    page.table(["top layers", "rule", "largest / smallest layer change"],
               [[", ".join(map(str, obj.get("top_layers", []))), obj.get("rule", ""),
                 f"{max(per):.3g} / {min(per):.3g}" if per else ""]])
    if obj.get("outside"):
        page.table(["outside the layers", "L2 difference"], [[k, v] for k, v in obj["outside"].items()])
    details(page, obj, ctx.path.name)


def patching(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figures_starting(page, "patching_")
    axis = "position" if obj.get("axis") == "position" else "head"
    how(page, f"Each cell: the metric ({obj.get('metric', '')}) when that layer's activation at that "
              f"{axis} is taken from the clean prompt while the model reads the corrupted one, scaled so 0 is the "
              "corrupted run and 1 the clean run. Activation patching runs every cell; attribution patching is its "
              "first-order estimate from one forward and one backward, good where the change is small.")
    page.table(["clean prompt", "corrupted prompt", "clean metric", "corrupted metric"],
               [[obj.get("clean", ""), obj.get("corrupt", ""), _f(obj.get("clean_metric")),
                 _f(obj.get("corrupt_metric"))]])
    rows = []
    for method, res in obj.get("methods", {}).items():
        for k, grid in res.get("normalised", {}).items():
            cells = [(v, li, j) for li, row in enumerate(grid) for j, v in enumerate(row) if v == v]
            if cells:
                v, li, j = max(cells, key=lambda c: abs(c[0]))
                where = obj["tokens"][j] if axis == "position" and j < len(obj.get("tokens", [])) else f"head {j}"
                rows.append([method, k, f"layer {obj['layers'][li]}, {visible(str(where))}", _f(v)])
    if rows:
        page.table(["method", "kind", "largest effect at", "effect"], rows)
    details(page, obj, ctx.path.name)


def tuned_lens_eval(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "tuned_lens.png")
    how(page, "Per layer, how far the lens's reading of the residual stream entering that layer is from the model's "
              "final next-token distribution (KL, log scale) and how well it predicts the next token (cross-entropy), "
              "on held-out text. The tuned lens learns one affine map per layer; where it sits well below the logit "
              "lens, the layer's representation is in another basis than the output's.")
    kl, ce = obj["kl"], obj["cross_entropy"]
    rows = [[layer, _f(kl["logit"][i]), _f(kl["tuned"][i]), _f(ce["logit"][i]), _f(ce["tuned"][i])]
            for i, layer in enumerate(obj["layers"])]
    page.table(["layer", "KL logit", "KL tuned", "CE logit", "CE tuned"], rows)
    worse = [layer for i, layer in enumerate(obj["layers"]) if kl["tuned"][i] > kl["logit"][i]]
    if worse:
        warn(page, f"the tuned lens is further from the output than the logit lens at layers {worse}: train longer, "
                   "on more text, or with a smaller learning rate")
    details(page, obj, ctx.path.name)


def refusal(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "scores.png")
    how(page, "Difference-of-means refusal directions, one per layer and end-of-instruction position, scored by "
              "how far ablating them lowers refusal on harmful prompts (bypass), how far adding them raises it on "
              "harmless ones (induce), and the KL they cost on harmless prompts; the selected one (red line) "
              "passes the filters with the best bypass.")
    page.table(["selected layer", "eoi position", "refusal rate before", "after ablation"],
               [[obj["layer"], obj["eoi_position"], obj["refusal_rate_before"], obj["refusal_rate_after"]]])
    if isinstance(obj.get("classes_before"), Mapping) and isinstance(obj.get("classes_after"), Mapping):
        page.table(["generations", "refusal", "refuse then comply", "comply"],
                   [[when, *(obj[f"classes_{when}"].get(c, 0) for c in ("refusal", "refuse_then_comply", "comply"))]
                    for when in ("before", "after")])
    if obj["refusal_rate_before"] == 0:
        warn(page, "the model refused none of the validation prompts before ablation, so the generation check "
                   "cannot show an effect; use more or harder prompts, or check the chat template")
    rows = ctx.sibling_json("generations.json")
    if isinstance(rows, list):
        with contextlib.suppress(KeyError, TypeError):
            page.table(["prompt", "before", "after ablation"],
                       [[r["prompt"], r["before"], r["after"]] for r in rows[:4]])
    details(page, obj, ctx.path.name)


def _classes(c: Any) -> str:
    return "/".join(str(c.get(k, 0)) for k in ("refusal", "refuse_then_comply", "comply")) if isinstance(
        c, Mapping) else ""


def refusal_study(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    how(page, f"Follow-ups on the selected direction (layer {obj.get('layer')}): the refusal rate on the harmful "
              "validation prompts with it ablated only at some layers, directions extracted again after "
              "ablating the earlier ones (a large second-round norm that still lowers refusal means refusal is "
              "not one direction), and a harmfulness direction read at the instruction's last token (Zhao et "
              "al. 2025). Classes are refusal / refuse-then-comply / comply counts.")
    if isinstance(obj.get("subsets"), list):
        page.table(["ablated at layers", "refusal rate", "classes", "KL on harmless"],
                   [[r["subset"], _f(r["refusal_rate"]), _classes(r.get("classes")), _f(r["kl_harmless"])]
                    for r in obj["subsets"]])
    if isinstance(obj.get("rounds"), list):
        page.table(["round", "norm", "of round 1", "max |cos| with earlier", "refusal rate, this round ablated",
                    "rounds so far ablated"],
                   [[r["round"], _f(r["norm"]), _f(r["relative_norm"]),
                     _f(max((abs(c) for c in r["cos_with_earlier"]), default=0.0)), _f(r["refusal_rate_alone"]),
                     _f(r["refusal_rate_cumulative"])] for r in obj["rounds"]])
    harm = obj.get("harmfulness")
    if isinstance(harm, Mapping):
        page.table(["direction ablated", "refusal rate", "classes", "first-token refusal score"],
                   [["none", "", "", _f(harm["clean_refusal_score"])],
                    *([name, _f(e["refusal_rate"]), _classes(e["classes"]), _f(e["refusal_score"])]
                      for name, e in harm["ablated"].items())])
        page.html(f"<p>harmfulness vs refusal direction: cosine {_f(harm['cos_with_refusal'])}; read from "
                  f"{harm['n_harmful']} harmful and {harm['n_harmless']} harmless training prompts "
                  f"({esc(str(harm['grouping']))}).</p>")
        if harm["grouping"] == "all":
            warn(page, "the model refused none of the harmful training prompts (or answered none of the harmless "
                       "ones), so the harmfulness direction uses every prompt rather than refused vs answered ones")
    details(page, obj, ctx.path.name)


def sae_metrics(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    stem = ctx.path.stem
    ctx.figure(page, f"{stem}_training.png")
    ctx.figure(page, f"{stem}_density.png")
    how(page, "Explained variance (1 - unexplained/total; 1 is perfect) and L0 (features active per token) trade "
              "off against each other. Dead features never fire; dense ones fire on more than 10% of tokens - "
              "many dense features mean the sparsity penalty is too weak. Loss recovered (when measured) is how "
              "much of the language-model loss gap between zero-ablation and the clean run the reconstruction "
              "closes (1 = all of it).")
    dicts = obj["dictionaries"]
    cols = [c for c in ("dictionary", "explained_variance", "l0", "dead_fraction", "dense_fraction",
                        "loss_recovered") if any(c in d for d in dicts)]
    page.table(cols, [[d.get(c, "") for c in cols] for d in dicts])
    for d in dicts:
        if d.get("dense_fraction", 0) > 0.1:
            warn(page, f"{d['dictionary']}: {100 * d['dense_fraction']:.0f}% of features are dense (fire on > 10% "
                       "of tokens); raise the L1 coefficient or train longer")
        if isinstance(d.get("explained_variance"), float) and d["explained_variance"] < 0:
            warn(page, f"{d['dictionary']}: negative explained variance - worse than predicting the mean")
    details(page, {k: v for k, v in obj.items() if k != "density"}, ctx.path.name + " (densities left out)")


def sae_overlap(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    how(page, "How many decoder directions of one dictionary have a close match in the other: mean over features of "
              "the best cosine (both ways) and the mean cosine of a one-to-one (Hungarian) matching.")
    page.table(["A", "B", "A -> B", "B -> A", "Hungarian"],
               [[obj["a"], obj["b"], obj["mean_max_cos_a_to_b"], obj["mean_max_cos_b_to_a"],
                 obj.get("hungarian_mean_cos", "")]])
    page.table(["feature A", "feature B", "cosine"],
               [[p["feature_a"], p["feature_b"], p["cos"]] for p in obj.get("top_pairs", [])[:8]])
    details(page, obj, ctx.path.name)


def finetune(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figure(page, "finetune.png")
    how(page, "The fine-tuning run's logged quantities per step (RL: lexicon reward and KL to the reference model; "
              "DPO: preference accuracy and the implied KL). A reward that rises while KL stays small is the "
              "intended regime; a KL that explodes means the policy drifted far from the base model.")
    last = obj["history"][-1] if obj.get("history") else {}
    page.table(["method", "steps logged", *list(last)[1:6]],
               [[obj.get("method", ""), len(obj.get("history", [])), *[last[k] for k in list(last)[1:6]]]])
    if obj.get("deviation"):
        page.text(f"Deviation from the study: {obj['deviation']}", muted=True)
    details(page, obj, ctx.path.name)


def cache_manifest(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    page.table(["model", "points", "tokens", "texts", "shards", "dtype", "complete"],
               [[obj.get("model", ""), ", ".join(obj.get("points", [])), obj.get("n_tokens", ""),
                 obj.get("n_texts_done", ""), len(obj.get("shards", [])), obj.get("dtype", ""),
                 "yes" if obj.get("complete") else "no (resumable)"]])
    details(page, obj, ctx.path.name)


def lens_demo(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figures_starting(page, "lens_")
    how(page, "The demo's logit lens: for each prompt, log10 p(answer) when each layer's residual stream is decoded "
              "through the final norm and unembedding (cell text: the answer's rank).")
    page.table(["prompt", "answer", "model predicts", "p(answer), last layer", "top-1 from layer"],
               [[r["prompt"], visible(r["target"]), visible(r["model_prediction"]), r["final_prob"],
                 "never" if r["first_layer_top1"] is None else r["first_layer_top1"]] for r in obj["summary"]])
    details(page, obj, ctx.path.name)


def steering_demo(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figures_starting(page, "steering")
    how(page, "Generations steered with a sentiment vector at each multiplier, scored by VADER (compound, -1 to 1): "
              "a working vector moves the mean score with the multiplier's sign.")
    page.table(["multiplier", "mean VADER compound"], [[float(m), v] for m, v in obj["mean_vader"].items()])
    by_m: dict[float, str] = {}
    for g in obj.get("generations", []):
        by_m.setdefault(g["multiplier"], g["text"])
    page.table(["multiplier", "first generation"], [[m, t] for m, t in sorted(by_m.items())])
    details(page, obj, ctx.path.name)


def lfp_agreement(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    ctx.figures_starting(page, "agreement")
    how(page, "Kendall tau between the probe's per-word error ranking and the lexicon, on lexicon words held out "
              "from the probe's training triples (the study's Table 4), beside the training words and an untrained "
              "probe; p is the test's p-value.")
    page.table(["words", "Kendall tau", "p", "sign accuracy"],
               [[g, v.get("kendall_tau"), v.get("p_value"), v.get("sign_accuracy")]
                for g, v in obj["groups"].items()])
    details(page, obj, ctx.path.name)


def lfp_features(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    how(page, "Features the probe relies on, labelled related or not to the fine-tuning objective, how often they "
              "fire on strongly-predicted examples, and the reward after ablating the related ones (beside as many "
              "random features).")
    page.text(obj.get("label_note", ""), muted=True)
    ab = obj.get("ablation", {})
    page.table(["features", "related", "reward before", "after ablating related", "after ablating random"],
               [[obj.get("n_features"), obj.get("n_related"), ab.get("reward_before", ""),
                 ab.get("reward_after", ""), ab.get("reward_after_random", "")]])
    details(page, obj, ctx.path.name)


def probes(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    how(page, "The probe predicting the reward from SAE feature deltas: held-out (test) scores beside training and an "
              "untrained probe; a negative R^2 means worse than predicting the mean.")
    keys = [k for k in ("r2", "pearson", "sign_accuracy", "mse", "accuracy", "auc") if k in obj["test"]]
    page.table(["split", *keys], [[split, *[obj[split].get(k) for k in keys]]
                                  for split in ("train", "test", "xavier_baseline_test") if split in obj])
    if isinstance(obj["test"].get("r2"), float) and obj["test"]["r2"] < 0:
        warn(page, "held-out R^2 is negative: the probe does not generalise beyond its training triples")
    details(page, obj, ctx.path.name)


def model_config(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "dtype", "torch_dtype")
    page.table(["saved model", ""], [[k, obj[k]] for k in keys if k in obj])
    details(page, obj, ctx.path.name)


def eval_leaderboard(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    from .eval import leaderboard_section

    leaderboard_section(page, obj, ctx)


def crosscoder(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    from .diffing import crosscoder_section

    crosscoder_section(page, obj, ctx)


def feature_explanations(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    how(page, "Each latent's explanation and how well a scorer model, given only the explanation, picks the "
              "contexts where the latent fires out of random silent ones (detection) and tells its true active "
              "tokens from as many other marked tokens (fuzzing): balanced accuracy, 0.5 = chance. Unparsed "
              "replies count as wrong answers.")

    def ba(x: Any) -> str:
        v = x.get("balanced_accuracy") if isinstance(x, Mapping) else None
        return "-" if v is None else _f(v)

    def failed(r: Mapping[str, Any]) -> str:
        n = sum(x["failed_replies"] for x in (r.get("detection"), r.get("fuzzing"))
                if isinstance(x, Mapping) and isinstance(x.get("failed_replies"), int))
        return _f(n)

    page.table(["latent", "explanation", "detection", "fuzzing", "unparsed replies"],
               [[_f(r.get("latent")), str(r.get("explanation", "")), ba(r.get("detection")), ba(r.get("fuzzing")),
                 failed(r)] for r in obj.get("latents", []) if isinstance(r, Mapping)])
    details(page, {k: v for k, v in obj.items() if k != "latents"}, ctx.path.name)


def transcoder_eval(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    how(page, "A skip transcoder in place of one MLP, on held-out texts: the fraction of the MLP output's variance "
              "it explains, and the next-token KL from the original model (nats per token) with the transcoder "
              "alone and with its error term added back (which should be ~0).")
    page.table(["points", "explained variance", "KL replaced", "KL with error term", "loss original",
                "loss replaced"],
               [[" -> ".join(map(str, obj.get("points", []))), _f(obj.get("explained_variance")),
                 _f(obj.get("kl_replaced")), _f(obj.get("kl_with_error_term")), _f(obj.get("loss_original")),
                 _f(obj.get("loss_replaced"))]])
    details(page, obj, ctx.path.name)


def folded(page: Page, obj: Any, ctx: Context) -> None:
    """Configuration-like files: folded only."""
    details(page, obj, ctx.path.name)


Renderer = Callable[[Page, Any, Context], None]


def _kind(obj: Any) -> str | None:
    return obj.get("kind") if isinstance(obj, Mapping) and isinstance(obj.get("kind"), str) else None


# (test on file name and parsed JSON, renderer), first match wins
SECTIONS: Sequence[tuple[Callable[[Path, Any], bool], Renderer]] = [
    (lambda p, o: p.name == "run.json" and isinstance(o, Mapping) and "command" in o, run_record),
    (lambda p, o: p.stem == "lens" and isinstance(o, Mapping) and "prompts" in o, lens),
    (lambda p, o: p.name == "sweep.json" and isinstance(o, Mapping) and {"config", "cells"} <= set(o), sweep),
    (lambda p, o: _kind(o) == "vector_comparison", vector_comparison),
    (lambda p, o: _kind(o) == "behaviour_comparison" and isinstance(o.get("cross_model"), Mapping),
     behaviour_comparison),
    (lambda p, o: _kind(o) == "layer_metrics", layer_metrics),
    (lambda p, o: _kind(o) == "dataset_pca", dataset_pca),
    (lambda p, o: _kind(o) == "untangling" and isinstance(o.get("layers"), list), untangling),
    (lambda p, o: _kind(o) == "prompting" and isinstance(o.get("per_layer"), list), prompting),
    (lambda p, o: _kind(o) == "curvature" and isinstance(o.get("rows"), list), curvature),
    (lambda p, o: _kind(o) == "hessian" and isinstance(o.get("eigenvalues"), list), hessian),
    (lambda p, o: _kind(o) == "mix" and isinstance(o.get("generations"), list), mix),
    (lambda p, o: _kind(o) == "mix_sweep" and isinstance(o.get("layers"), list), mix_sweep),
    (lambda p, o: _kind(o) == "vocab_projection", vocab_projection),
    (lambda p, o: _kind(o) == "divergence", divergence),
    (lambda p, o: _kind(o) == "patching" and "methods" in o, patching),
    (lambda p, o: _kind(o) == "tuned_lens_eval" and {"kl", "cross_entropy"} <= set(o), tuned_lens_eval),
    (lambda p, o: p.name == "refusal.json" and isinstance(o, Mapping) and "refusal_rate_after" in o, refusal),
    (lambda p, o: p.name == "refusal_study.json" and isinstance(o, Mapping) and "layer" in o, refusal_study),
    (lambda p, o: _kind(o) == "sae_metrics", sae_metrics),
    (lambda p, o: _kind(o) == "sae_overlap", sae_overlap),
    (lambda p, o: p.name == "finetune.json" and isinstance(o, Mapping) and "history" in o, finetune),
    (lambda p, o: p.name == "manifest.json" and isinstance(o, Mapping) and "shards" in o, cache_manifest),
    (lambda p, o: p.stem == "lens" and isinstance(o, Mapping) and "summary" in o, lens_demo),
    (lambda p, o: p.name == "steering.json" and isinstance(o, Mapping) and "mean_vader" in o, steering_demo),
    (lambda p, o: p.name == "agreement.json" and isinstance(o, Mapping) and "groups" in o, lfp_agreement),
    (lambda p, o: p.name == "features.json" and isinstance(o, Mapping) and "ablation" in o, lfp_features),
    (lambda p, o: p.name == "probes.json" and isinstance(o, Mapping) and "test" in o, probes),
    (lambda p, o: p.name == "config.json" and isinstance(o, Mapping) and "model_type" in o, model_config),
    (lambda p, o: _kind(o) == "eval_leaderboard" and isinstance(o.get("rows"), list), eval_leaderboard),
    (lambda p, o: _kind(o) == "crosscoder_latents" and isinstance(o.get("latents"), list), crosscoder),
    (lambda p, o: _kind(o) == "feature_explanations" and isinstance(o.get("latents"), list), feature_explanations),
    (lambda p, o: _kind(o) == "transcoder_eval", transcoder_eval),
    (lambda p, o: p.name in ("train_config.json", "cfg.json", "word_split.json", "neuronpedia.json",
                             "generations.json", "candidates.json", "summary.json",
                             "dictionaries.json", "layers.json", "generation_config.json"), folded),
]


def find(path: Path, obj: Any) -> Renderer | None:
    for test, renderer in SECTIONS:
        try:
            if test(path, obj):
                return renderer
        except (TypeError, AttributeError):
            continue
    return None
