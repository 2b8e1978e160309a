"""Hook points: the one table of hook kinds, the :class:`HookPoint` type, the point-spec and layer grammars.

Users think in names, not module paths: ``embed``, ``blocks.{i}.{kind}`` and ``final_norm``. Every place
that needs to know about kinds (parsing, capture, editing, widths, the CLI's help, the docs) reads
:data:`KINDS`. Adding a kind is one :class:`HookKind` row here plus, where it needs a module no adapter
names yet, one adapter field.

A *spec* names one point (``blocks.3.resid_post``), a kind at every layer (``resid_post``), a kind at some
layers (``blocks.2-5.resid_post``, ``blocks.0-12:4.mlp_out``, ``blocks.all.attn_out``) or is a list of any of
these (comma-separated or a Python list). Layer selections everywhere (``--layers``, ``layers=``, inside a
point) use one grammar, :func:`parse_layers`: ``all``, ``4``, ``4,8,12``, ``4-12``, ``4-12:2``, inclusive,
negative numbers counting from the end.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import HookPointError, InputError, choices_hint


@dataclass(frozen=True)
class Site:
    """A module's input (``where='in'``) or output (``'out'``). ``field`` names the module through the model:
    ``block`` is the decoder layer itself; ``attn``, ``mlp_out``, ``mlp_down``, ``mlp_norm`` are adapter
    fields inside a layer; ``final_norm`` is an adapter field of the whole model."""

    field: str
    where: str


@dataclass(frozen=True)
class HookKind:
    """One row of the hook-kind table.

    ``read`` is where the activation is read. ``composite`` handles kinds that no module carries on its own
    (``resid_mid``: the residual after the attention sub-block, = ``resid_pre`` + the attention output):
    ``(base kind, part site)``; reading falls back to ``base + part`` when the model has no ``read`` module
    (parallel-residual blocks have no pre-MLP norm reading resid_mid), and edits are written through the part
    (an edit ``f`` of the kind turns the part ``a`` into ``f(base + a) - base``). ``width`` gives the
    activation's last dimension for a model; ``residual`` says whether it lives in the residual stream's basis
    (so the lens can decode it and a residual direction can be added to it).
    """

    name: str
    scope: str  # "block" (one per layer) or "model" (one per model)
    read: Site
    width: Callable[[Any], int]
    residual: bool
    doc: str
    role: str  # "stream": the residual stream itself; "write": what a sub-block adds to it; "internal"
    composite: tuple[str, Site] | None = None
    at_layer: int | None = None  # model-scope kinds read from a block's site: which block
    view: str | None = None  # "heads": the site's last dim split into [head, d_head]; "result": per-head writes
    shape: str = "[batch, seq, d]"  # what handlers and captures see (d: d_model, or d_mlp for mlp_hidden)
    read_only: str | None = None  # why an edit of this kind is refused (None: edits are written)


def _d_model(m: Any) -> int:
    return int(m.d_model)


def _d_mlp(m: Any) -> int:
    return int(m.d_mlp)


def _d_head(m: Any) -> int:
    return int(m.d_head)


def _n_experts(m: Any) -> int:
    return int(m.n_experts)


def _n_ctx(m: Any) -> int:
    return 0  # the pattern's last dimension is the number of keys: it depends on the input


# Block kinds are listed in the order the forward pass computes them (this order breaks ties between points
# that share a module, see hooks.core).
KINDS: dict[str, HookKind] = {k.name: k for k in (
    HookKind("embed", "model", Site("block", "in"), _d_model, True,
             "token (+ position) embeddings: the input of layer 0", "stream", at_layer=0),
    HookKind("resid_pre", "block", Site("block", "in"), _d_model, True,
             "the residual stream entering layer i", "stream"),
    HookKind("attn.q", "block", Site("attn_core", "q"), _d_head, False,
             "attention queries after rotary (OPT: pre-scaled), per head", "internal",
             shape="[batch, seq, head, d_head]"),
    HookKind("attn.k", "block", Site("attn_core", "k"), _d_head, False,
             "attention keys of this forward's tokens after rotary, per KV head", "internal",
             shape="[batch, seq, kv_head, d_head]"),
    HookKind("attn.v", "block", Site("attn_core", "v"), _d_head, False,
             "attention values of this forward's tokens, per KV head", "internal",
             shape="[batch, seq, kv_head, d_head]"),
    HookKind("attn.pattern", "block", Site("attn_core", "pattern"), _n_ctx, False,
             "attention probabilities (that layer computes attention eagerly while hooked)", "internal",
             shape="[batch, query, head, key]"),
    HookKind("attn.z", "block", Site("attn_o", "in"), _d_head, False,
             "per-head attention output before the output projection", "internal", view="heads",
             shape="[batch, seq, head, d_head]"),
    HookKind("attn.result", "block", Site("attn_o", "in"), _d_model, False,
             "per-head contribution to the output projection (sum over heads + bias = its output)", "internal",
             view="result", shape="[batch, seq, head, d_model]"),
    HookKind("attn_out", "block", Site("attn", "out"), _d_model, True,
             "what the attention sub-block adds to the residual stream", "write"),
    HookKind("resid_mid", "block", Site("mlp_norm", "in"), _d_model, True,
             "the residual stream after attention, before the MLP (parallel blocks: resid_pre + attn_out)", "stream",
             composite=("resid_pre", Site("attn", "out"))),
    HookKind("mlp.router", "block", Site("router", "out"), _n_experts, False,
             "the router's logits per expert (mixture-of-experts blocks; the router module's first output)",
             "internal", shape="[batch, seq, expert]",
             read_only="the router picks its top-k experts inside its own module, so an edit of the logits it "
                       "returns would not change the routing; edit resid_mid (what it reads) or mlp_out (what the "
                       "experts write) instead"),
    HookKind("mlp_hidden", "block", Site("mlp_down", "in"), _d_mlp, False,
             "the MLP's hidden activation (after the nonlinearity / gating), d_mlp wide", "internal"),
    HookKind("mlp_out", "block", Site("mlp_out", "out"), _d_model, True,
             "what the MLP sub-block adds to the residual stream", "write"),
    HookKind("resid_post", "block", Site("block", "out"), _d_model, True,
             "the residual stream leaving layer i (= resid_pre of layer i+1)", "stream"),
    HookKind("final_norm", "model", Site("final_norm", "out"), _d_model, True,
             "the output of the final norm (what the unembedding reads)", "stream"),
)}

BLOCK_KINDS: tuple[str, ...] = tuple(k for k, v in KINDS.items() if v.scope == "block")
GLOBAL_POINTS: tuple[str, ...] = tuple(k for k, v in KINDS.items() if v.scope == "model")
RESIDUAL_KINDS: tuple[str, ...] = tuple(k for k in BLOCK_KINDS if KINDS[k].residual)
# What a sub-block adds to the residual stream; directional ablation edits those and the stream entering each block.
WRITE_KINDS: tuple[str, ...] = tuple(k for k in BLOCK_KINDS if KINDS[k].role == "write")
ABLATION_KINDS: tuple[str, ...] = (BLOCK_KINDS[0], *WRITE_KINDS)
# Kinds with a head axis third ([batch, seq, head, ...]): what per-head patching and attribution work on.
HEAD_KINDS: tuple[str, ...] = tuple(k for k in BLOCK_KINDS if KINDS[k].shape.startswith("[batch, seq, ")
                                    and "head," in KINDS[k].shape)
_LAST = 1 << 30


def kind(name: str) -> HookKind:
    """The table row of a kind, or a clear error listing the kinds."""
    try:
        return KINDS[name]
    except KeyError:
        raise HookPointError(f"unknown hook-point kind {name!r}." + choices_hint(name, KINDS)) from None


def block_kind(name: str) -> str:
    """``name`` if it is a per-layer kind (steering vectors and dictionaries live at one), else a clear error."""
    if name not in BLOCK_KINDS:
        raise HookPointError(f"{name!r} is not a per-layer hook-point kind." + choices_hint(name, BLOCK_KINDS))
    return name


@dataclass(frozen=True, order=True)
class HookPoint:
    """One named place in a model: ``layer`` is None for the model-scope kinds (``embed``, ``final_norm``)."""

    layer: int | None
    kind: str

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"blocks.{self.layer}.{self.kind}"

    def __str__(self) -> str:
        return self.name

    @property
    def spec(self) -> HookKind:
        return kind(self.kind)

    @property
    def order(self) -> tuple[int, int]:
        """Position along the forward pass (for sorting, early stopping and handler order at a shared site)."""
        k = self.spec
        if k.scope == "model":
            return (-1, 0) if k.at_layer is not None else (_LAST, 0)
        return (self.layer if self.layer is not None else 0, BLOCK_KINDS.index(self.kind))

    def width(self, model: Any) -> int:
        """The activation's last dimension in ``model`` (d_model, or d_mlp for ``mlp_hidden``)."""
        return self.spec.width(model)

    def row_width(self, model: Any) -> int | None:
        """Values per token when every token's activation is one row (a cache, an SAE's input): the width, or
        for per-head kinds heads x width (``attn.z``: n_heads * d_head, the concatenation attention SAEs read).
        None for ``attn.pattern``, whose key axis depends on the text."""
        shape = self.spec.shape
        if self.kind == "attn.pattern":
            return None
        if "kv_head," in shape:
            return int(model.n_kv_heads) * self.width(model)
        if "head," in shape:
            return int(model.n_heads) * self.width(model)
        return self.width(model)

    @classmethod
    def parse(cls, name: str, n_layers: int) -> HookPoint:
        """Exactly one point from its name (``blocks.3.resid_post``, ``embed``...)."""
        pts = parse_points(name, n_layers)
        if len(pts) != 1:
            raise HookPointError(f"{name!r} names {len(pts)} hook points; give exactly one, e.g. "
                                 f"{pts[0].name!r}")
        return pts[0]


def point(layer: int | None, kind_name: str) -> HookPoint:
    """``HookPoint(layer, kind)`` with the kind checked against the table (the only way to build names)."""
    k = kind(kind_name)
    if (k.scope == "block") != (layer is not None):
        where = "a layer" if k.scope == "block" else "no layer"
        raise HookPointError(f"hook-point kind {kind_name!r} takes {where}")
    return HookPoint(layer, kind_name)


def all_point_names(n_layers: int) -> list[str]:
    """Every hook point of a model with ``n_layers`` blocks, in forward order."""
    pts = [HookPoint(None, k) for k in GLOBAL_POINTS]
    pts += [HookPoint(i, k) for i in range(n_layers) for k in BLOCK_KINDS]
    return [p.name for p in sorted(pts, key=lambda p: p.order)]


# -- the layer grammar -------------------------------------------------------------------------------------
LAYER_GRAMMAR = "all, 4, 4,8,12, 4-12 or 4-12:2 (inclusive; negative numbers count from the end)"
_RANGE = re.compile(r"^(-?\d+)(?:-(-?\d+))?(?::(\d+))?$")


def parse_layers(spec: str | int | Iterable[int] | None, n_layers: int, *, what: str = "layers"
                 ) -> list[int] | None:
    """Layers from one grammar: ``None``/``'all'`` -> None (every layer); ``'4,8,12'``, ``'4-12'``, ``'4-12:2'``
    (inclusive), an int or a list of ints. Negative numbers count from the end. Sorted, deduplicated, checked."""
    if spec is None:
        return None
    raw: list[int] = []
    if isinstance(spec, bool):
        raise InputError(f"cannot read {what} from {spec!r}; use {LAYER_GRAMMAR}")
    if isinstance(spec, int):
        raw = [spec]
    elif isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("all", "*"):
            return None
        if not s:
            raise InputError(f"the {what} selection is empty; use {LAYER_GRAMMAR}")
        for part in (p.strip() for p in s.split(",")):
            m = _RANGE.match(part)
            if m is None:
                raise InputError(f"cannot read {what} from {spec!r} (at {part!r}); use {LAYER_GRAMMAR}")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            step = int(m.group(3)) if m.group(3) is not None else 1
            if step <= 0:
                raise InputError(f"the step in {part!r} must be positive")
            lo_n, hi_n = (lo + n_layers if lo < 0 else lo), (hi + n_layers if hi < 0 else hi)
            if m.group(2) is not None and hi_n < lo_n:
                raise InputError(f"the layer range {part!r} is empty (it runs backwards); use {LAYER_GRAMMAR}")
            raw += [lo] if m.group(2) is None else list(range(lo_n, hi_n + 1, step))
    else:
        try:
            raw = [int(i) for i in spec]
        except (TypeError, ValueError):
            raise InputError(f"cannot read {what} from {spec!r}; use {LAYER_GRAMMAR}") from None
        if not raw:
            raise InputError(f"the {what} list is empty; give at least one layer")
    out = [i + n_layers if i < 0 else i for i in raw]
    bad = [r for r, i in zip(raw, out, strict=True) if not 0 <= i < n_layers]
    if bad:
        raise InputError(f"{what} {bad} out of range; the model has layers 0..{n_layers - 1}")
    return sorted(set(out))


def layer_list(spec: str | int | Iterable[int] | None, n_layers: int, *, what: str = "layers") -> list[int]:
    """:func:`parse_layers` with ``None``/``all`` expanded to every layer."""
    got = parse_layers(spec, n_layers, what=what)
    return list(range(n_layers)) if got is None else got


# -- the point-spec grammar --------------------------------------------------------------------------------
_BLOCK_RE = re.compile(r"^blocks\.(?P<layer>[^.]+)\.(?P<kind>[a-z_][a-z_.]*)$")
_SLICE = re.compile(r"^(-?\d*):(-?\d*)$")


def _layers_in_point(token: str, n_layers: int, spec: str) -> list[int]:
    if _SLICE.match(token) is not None:  # the first wave's exclusive Python slice (blocks.2:5), removed
        raise HookPointError(f"hook point {spec!r}: the slice form 'a:b' is gone; write the layers inclusively, "
                             "e.g. 'blocks.2-4.<kind>'")
    try:
        return layer_list(token, n_layers, what=f"layers in hook point {spec!r}")
    except InputError as e:
        raise HookPointError(str(e)) from None


def parse_points(spec: str | HookPoint | Iterable[str | HookPoint], n_layers: int) -> list[HookPoint]:
    """Expand a hook-point spec into concrete points (checked, deduplicated, in forward order)."""
    items: Sequence[str | HookPoint]
    items = [spec] if isinstance(spec, (str, HookPoint)) else list(spec)
    if not items:
        raise HookPointError("no hook point given." + choices_hint("", KINDS))
    out: set[HookPoint] = set()
    for item in items:
        if isinstance(item, HookPoint):
            out.add(_checked(item, n_layers))
            continue
        if not isinstance(item, str):
            raise HookPointError(f"a hook point is a name like 'blocks.3.resid_post', not {type(item).__name__}")
        for part in (p.strip() for p in item.split(",")):
            if part:
                out.update(_parse_one(part, n_layers))
    if not out:
        raise HookPointError("no hook point given." + choices_hint("", KINDS))
    return sorted(out, key=lambda p: p.order)


def check_spec(spec: str | Iterable[str]) -> None:
    """Check a spec's grammar and kinds without a model (layer numbers are checked once the model is known)."""
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if not parts:
        raise HookPointError("no hook point given." + choices_hint("", KINDS))
    for part in parts:
        if part in KINDS:
            continue
        m = _BLOCK_RE.match(part)
        if m is None:
            examples = [*KINDS, *(f"blocks.0.{k}" for k in BLOCK_KINDS)]
            raise HookPointError(f"unknown hook point {part!r}." + choices_hint(part, examples, limit=20))
        if m.group("kind") not in BLOCK_KINDS:
            raise HookPointError(f"unknown hook-point kind {m.group('kind')!r} in {part!r}."
                                 + choices_hint(m.group("kind"), BLOCK_KINDS))
        token = m.group("layer")
        if not (_SLICE.match(token) or token in ("all", "*")):
            try:
                parse_layers(token, 1 << 20)
            except InputError as e:
                raise HookPointError(f"hook point {part!r}: {e}") from None


def _checked(p: HookPoint, n_layers: int) -> HookPoint:
    k = kind(p.kind)
    if k.scope == "model":
        if p.layer is not None:
            raise HookPointError(f"hook-point kind {p.kind!r} takes no layer")
        return p
    if p.layer is None or not 0 <= p.layer < n_layers:
        raise HookPointError(f"layer {p.layer} of {p.name!r} is out of range; the model has layers "
                             f"0..{n_layers - 1}")
    return p


def _parse_one(s: str, n_layers: int) -> list[HookPoint]:
    if s in KINDS:
        k = KINDS[s]
        return [HookPoint(None, s)] if k.scope == "model" else [HookPoint(i, s) for i in range(n_layers)]
    m = _BLOCK_RE.match(s)
    if m is None:
        examples = [*KINDS, *(f"blocks.0.{k}" for k in BLOCK_KINDS)]
        raise HookPointError(f"unknown hook point {s!r}." + choices_hint(s, examples, limit=20))
    name = m.group("kind")
    if name not in BLOCK_KINDS:
        raise HookPointError(f"unknown hook-point kind {name!r} in {s!r}." + choices_hint(name, BLOCK_KINDS))
    return [HookPoint(i, name) for i in _layers_in_point(m.group("layer"), n_layers, s)]


def kinds_table_markdown() -> str:
    """The hook-kind table as Markdown (docs/architecture.md embeds it; a test keeps the two equal)."""
    rows = ["| kind | scope | read at | edits written through | shape | residual basis | meaning |",
            "|---|---|---|---|---|---|---|"]
    for k in KINDS.values():
        if k.read.where in ("in", "out"):
            read = f"{k.read.where}put of `{k.read.field}`"
        else:
            read = f"`{k.read.where}` in `{k.read.field}`'s attention call"
        read += f" (layer {k.at_layer})" if k.at_layer is not None else ""
        if k.view == "result":
            read += ", times each head's slice of its weight"
        if k.composite:
            base, part = k.composite
            read += f"; without one: `{base}` + {part.where}put of `{part.field}`"
            write = f"{part.where}put of `{part.field}` (as `f({base} + a) - {base}`)"
        elif k.view == "result":
            write = "output of `attn_o` (as the sum over heads + bias)"
        elif k.read_only:
            write = "read-only (the routing is decided inside the router)"
        else:
            write = "the read site"
        shape = k.shape.replace("d]", "d_mlp]") if k.width is _d_mlp else k.shape
        rows.append(f"| `{k.name}` | {k.scope} | {read} | {write} | `{shape}` | {'yes' if k.residual else 'no'} "
                    f"| {k.doc} |")
    return "\n".join(rows) + "\n"
