"""The playground's state and operations, independent of HTTP: one model in memory, the steering vectors it
knows, an optional dictionary, and the operations the page calls - all through the library's own
interventions, lens and dashboards (nothing reimplemented here).

Every operation that runs the model holds :attr:`Playground.lock`: hooks are installed on the one model, so
concurrent requests queue instead of interleaving their interventions.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.points import RESIDUAL_KINDS, layer_list
from ..hooks.positions import STEER_POSITIONS
from ..lens import lens_grid
from ..models.tokens import token_strings
from ..steering.vector import SteeringVector

if TYPE_CHECKING:
    from ..lens import Lens
    from ..models.model import Model
    from ..sae.dictionary import SparseAutoencoder

MAX_NEW_TOKENS = 256
MAX_PROMPT_CHARS = 8000
LENS_KINDS = tuple(sorted(RESIDUAL_KINDS, key=lambda k: k != "resid_post"))  # resid_post first: the default


@dataclass
class SteerSpec:
    vector: str
    multiplier: float
    layers: list[int]


@dataclass
class GenerateRequest:
    prompt: str
    steer: list[SteerSpec] = field(default_factory=list)
    positions: str = "auto"
    max_new_tokens: int = 40
    chat: bool = False
    sample: bool = False
    temperature: float = 1.0
    seed: int = 0
    ablate: list[int] = field(default_factory=list)
    scale: dict[int, float] = field(default_factory=dict)


def _number(body: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{key} must be a finite number, got {v!r}")
    if not lo <= v <= hi:
        raise InputError(f"{key} must be between {lo:g} and {hi:g}, got {v!r}")
    return float(v)


GENERATE_KEYS = ("prompt", "steer", "positions", "max_new_tokens", "chat", "sample", "temperature", "seed", "ablate",
                 "scale")
STEER_KEYS = ("vector", "multiplier", "layers")
EXTRACT_KEYS = ("pairs", "point", "name")
LENS_KEYS = ("prompt", "kind", "top_k", "lens", "steer", "positions")
FEATURES_KEYS = ("prompt", "top_k")


def _only(body: Any, keys: Sequence[str], what: str) -> Mapping[str, Any]:
    """``body`` as a JSON object holding only ``keys`` (a misspelt key would otherwise be ignored silently)."""
    if not isinstance(body, Mapping):
        raise InputError(f"the {what} must be a JSON object")
    unknown = [str(k) for k in body if k not in keys]
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise InputError(f"unknown key{'s' if len(unknown) > 1 else ''} {shown} in the {what}; valid: "
                         f"{', '.join(keys)}")
    return body


class _Deltas:
    """A transformers streamer that hands out the text each generated token adds (spaced in context)."""

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]):
        self.tok, self.emit, self.ids, self.text = tokenizer, emit, [], ""
        self.prompt_seen = False
        self.context: list[int] = []
        self.base = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt: keep its last token as decoding context,
            self.prompt_seen = True  # so the first new token keeps its leading space (SentencePiece)
            self.context = [int(x) for x in value.reshape(-1).tolist()[-1:]]
            self.base = self._decode(self.context)
            return
        self.ids += [int(x) for x in value.reshape(-1).tolist()]
        full = self._decode(self.context + self.ids)
        text = full[len(self.base):] if full.startswith(self.base) else self._decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete character: wait for the next token
            return
        delta = text[len(self.text):] if text.startswith(self.text) else text
        self.text = text
        if delta:
            self.emit(delta)

    def end(self) -> None:
        pass


class Playground:
    """One model and what the page can do with it (see module docstring)."""

    def __init__(self, model: Model, *, vectors: Mapping[str, SteeringVector] | None = None,
                 sae: SparseAutoencoder | None = None, texts: Sequence[str] = (), lenses: Sequence[Lens] = (),
                 tuned_lens: Lens | None = None):
        from ..lens import LogitLens

        self.model = model
        offered: list[Lens] = [LogitLens(), *lenses, *([tuned_lens] if tuned_lens is not None else [])]
        self._lenses = {lens.name: lens for lens in offered}  # by name; the logit lens always
        self.vectors: dict[str, SteeringVector] = dict(vectors or {})
        for name, v in self.vectors.items():
            try:
                v.check_values()
                v.check_fits(model)
            except InputError as e:
                raise InputError(f"vector {name!r}: {e}") from None
        self.sae = sae
        self.texts = list(texts)
        self.lock = threading.Lock()
        self._current: threading.Event | None = None  # the running generation's stop event
        self._ids = itertools.count(1)
        if sae is not None:
            from ..hooks.points import HookPoint

            p = HookPoint.parse(sae.cfg.hook_point, model.n_layers)
            if sae.cfg.d_in != p.row_width(model):
                raise InputError(f"dictionary {sae.cfg.name!r} reads {sae.cfg.d_in} values but {p.name} of "
                                 f"{model.name!r} is {p.row_width(model)} wide")

    @property
    def lenses(self) -> list[str]:
        """The lenses the lens view offers."""
        return list(self._lenses)

    # -- description -------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            "model": m.name, "family": m.adapter.family, "layers": m.n_layers, "d_model": m.d_model,
            "chat_template": getattr(m.tokenizer, "chat_template", None) is not None,
            "positions": list(STEER_POSITIONS), "lens_kinds": list(LENS_KINDS), "max_new_tokens": MAX_NEW_TOKENS,
            "lenses": self.lenses,
            "vectors": [self._vector_info(n, v) for n, v in self.vectors.items()],
            "sae": None if self.sae is None else {"name": self.sae.cfg.name, "point": self.sae.cfg.hook_point,
                                                  "d_sae": self.sae.cfg.d_sae, "texts": len(self.texts)},
        }

    @staticmethod
    def _vector_info(name: str, v: SteeringVector) -> dict[str, Any]:
        return {"name": name, "point": v.point, "layers": v.layers,
                "norms": {str(k): round(float(v[k].norm()), 4) for k in v.layers},
                "method": v.meta.get("method", "")}

    # -- requests ----------------------------------------------------------------------------------------
    def _parse_steer(self, body: Mapping[str, Any]) -> list[SteerSpec]:
        """The ``steer`` list of a request: loaded vector names, their layers (numbers or the CLI's layer
        grammar) and multipliers."""
        steer: list[SteerSpec] = []
        for i, s in enumerate(body.get("steer") or []):
            if not isinstance(s, Mapping):
                raise InputError(f"steer[{i}] must be an object with vector, multiplier and layers")
            _only(s, STEER_KEYS, f"steer[{i}] object")
            name = s.get("vector")
            if name not in self.vectors:
                raise InputError(f"unknown vector {name!r}; loaded: {', '.join(self.vectors) or 'none'}")
            vec = self.vectors[name]
            layers = s.get("layers") or vec.layers
            if isinstance(layers, int):
                layers = [layers]
            if isinstance(layers, str):  # what the page's box holds: the CLI's grammar, the CLI's parser
                spec = layers.strip()
                layers = vec.layers if spec.lower() == "all" else \
                    layer_list(spec, self.model.n_layers, what=f"steer[{i}].layers")
            if not isinstance(layers, list) or not all(isinstance(k, int) and not isinstance(k, bool)
                                                       for k in layers):
                raise InputError(f"steer[{i}].layers must be layer numbers or a layer spec such as 8-12:2, got "
                                 f"{layers!r}")
            missing = [k for k in layers if k not in vec.vectors]
            if missing:
                raise InputError(f"vector {name!r} has no layer {missing[0]}; it has {vec.layers}")
            steer.append(SteerSpec(name, _number(s, "multiplier", 0.0, -1e4, 1e4), sorted(set(layers))))
        return steer

    def parse_generate(self, body: Any) -> GenerateRequest:
        """Validate a generation request (the same checks as the CLI's, one clear message per problem)."""
        body = _only(body, GENERATE_KEYS, "request body")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
        positions = body.get("positions", "auto")
        if positions not in STEER_POSITIONS:
            raise InputError(f"unknown positions {positions!r}; valid: {', '.join(STEER_POSITIONS)}")
        chat = bool(body.get("chat", False))
        if chat and getattr(self.model.tokenizer, "chat_template", None) is None:
            raise InputError(f"{self.model.name!r} has no chat template; untick 'chat'")
        steer = self._parse_steer(body)
        ablate, scale = [], {}
        if body.get("ablate") or body.get("scale"):
            if self.sae is None:
                raise InputError("no dictionary is loaded (start the server with --sae) to ablate features")
            d = self.sae.cfg.d_sae
            raw_ablate = body.get("ablate") or []
            if not isinstance(raw_ablate, list):
                raise InputError(f"ablate must be a list of feature numbers, got {raw_ablate!r}")
            for f in raw_ablate:
                if not isinstance(f, int) or isinstance(f, bool) or not 0 <= f < d:
                    raise InputError(f"feature {f!r} does not exist; the dictionary has features 0..{d - 1}")
                ablate.append(f)
            raw_scale = body.get("scale") or {}
            if not isinstance(raw_scale, Mapping):
                raise InputError(f"scale must be an object of feature: factor, got {raw_scale!r}")
            for f, s in raw_scale.items():
                fi = int(f) if isinstance(f, str) and f.lstrip("-").isdigit() else f
                if not isinstance(fi, int) or not 0 <= fi < d:
                    raise InputError(f"feature {f!r} does not exist; the dictionary has features 0..{d - 1}")
                scale[fi] = _number({"factor": s}, "factor", 1.0, -1e4, 1e4)
        return GenerateRequest(
            prompt=prompt, steer=steer, positions=positions, chat=chat,
            max_new_tokens=int(_number(body, "max_new_tokens", 40, 1, MAX_NEW_TOKENS)),
            sample=bool(body.get("sample", False)), temperature=_number(body, "temperature", 1.0, 0.01, 5.0),
            seed=int(_number(body, "seed", 0, 0, 2**31 - 1)), ablate=ablate, scale=scale)

    def interventions(self, req: GenerateRequest) -> list[Any]:
        from ..steering.apply import Steer

        out: list[Any] = [Steer(self.vectors[s.vector], s.multiplier, layers=s.layers, positions=req.positions)
                          for s in req.steer if s.multiplier != 0]
        if req.ablate or req.scale:
            from ..sae.features import FeatureEdit

            assert self.sae is not None
            out.append(FeatureEdit(self.sae, self.sae.cfg.hook_point, ablate=req.ablate, scale=req.scale))
        return out

    def feature_effect(self, req: GenerateRequest, batch: Any) -> dict[str, Any]:
        """How much a feature edit can matter on this prompt, before any text is generated: on how many prompt
        tokens each edited feature fires (and how strongly), and the KL divergence (nats) of the next-token
        distribution after the prompt with the edit alone against none. A feature that never fires on the
        prompt changes nothing there (it may still fire in the generated text)."""
        from ..sae.features import FeatureEdit

        assert self.sae is not None
        point = self.sae.cfg.hook_point
        with torch.no_grad():
            with self.model.capture(point, positions="tokens") as acts:
                base = self.model(**batch).logits[0, -1].float()
            x = acts[point]
            codes = self.sae.encode(x.reshape(x.shape[0], -1).to(self.sae.W_enc.device, torch.float32))
            with self.model.edit(FeatureEdit(self.sae, point, ablate=req.ablate, scale=req.scale)):
                edited = self.model(**batch).logits[0, -1].float()
        kl = torch.nn.functional.kl_div(edited.log_softmax(-1), base.log_softmax(-1), log_target=True,
                                        reduction="sum")
        features = [{"feature": f, "fires_on": int((codes[:, f] > 0).sum()), "max": float(codes[:, f].max())}
                    for f in sorted({*req.ablate, *req.scale})]
        return {"point": point, "tokens": int(codes.shape[0]), "features": features,
                "kl_next_token": max(float(kl), 0.0)}

    def start_generation(self, req: GenerateRequest) -> tuple[queue.Queue[Any], threading.Event]:
        """Start default then steered generation in a worker thread that holds :attr:`lock` for the whole
        request (queued behind any other request). Returns the event queue - ``{"side", "text"}`` per new piece
        of text, ``{"cancelled": true}`` if stopped, ``{"done": true, "export": ...}``, an exception if one was
        raised, then ``None`` - and the request's stop event (:meth:`cancel_current` sets it too)."""
        events: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()

        def run() -> None:
            try:
                with self.lock:
                    self._current = stop
                    try:
                        self._generate(req, stop, events.put)
                    finally:
                        self._current = None
            except BaseException as e:  # handed to the reader, never lost in the thread
                events.put(e)
            finally:
                events.put(None)

        threading.Thread(target=run, daemon=True, name="actlab-generate").start()
        return events, stop

    def cancel_current(self) -> bool:
        """Stop the running generation after its current token; False if none was running."""
        current = self._current
        if current is None:
            return False
        current.set()
        return True

    def generate_stream(self, req: GenerateRequest) -> Iterator[dict[str, Any]]:
        """:meth:`start_generation` as an iterator of events; closing it early stops the generation."""
        events, stop = self.start_generation(req)
        try:
            while (ev := events.get()) is not None:
                if isinstance(ev, BaseException):
                    raise ev
                yield ev
        finally:
            stop.set()  # a no-op once finished; stops the worker if the reader went away

    def _generate(self, req: GenerateRequest, stop: threading.Event, emit: Callable[[Any], None]) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> bool:
                return stop.is_set()

        text = self.model.chat_prompt(req.prompt) if req.chat else req.prompt
        batch = self.model.tokenize(text, add_special_tokens=not req.chat)
        if req.ablate or req.scale:
            emit({"effect": self.feature_effect(req, batch)})
        rows = []
        for side in ("default", "steered"):
            edits = [] if side == "default" else self.interventions(req)
            streamer = _Deltas(self.model.tokenizer, lambda piece, side=side: emit({"side": side, "text": piece}))
            torch.manual_seed(req.seed)
            kw: dict[str, Any] = {"do_sample": req.sample, "max_new_tokens": req.max_new_tokens,
                                  "streamer": streamer, "stopping_criteria": StoppingCriteriaList([Stop()]),
                                  "pad_token_id": self.model.tokenizer.pad_token_id
                                  or self.model.tokenizer.eos_token_id}
            if req.sample:
                kw["temperature"] = req.temperature
            with torch.no_grad(), self.model.edit(*edits):
                self.model.hf.generate(**batch, **kw)
            rows.append({"side": side, "prompt": req.prompt, "text": streamer.text,
                         "interventions": [e.record() for e in edits]})
            if stop.is_set():
                emit({"cancelled": True})
                break
        emit({"done": True, "export": {"kind": "playground_generation", "model": self.model.name,
                                       "positions": req.positions, "max_new_tokens": req.max_new_tokens,
                                       "sample": req.sample, "seed": req.seed, "rows": rows}})

    def extract(self, body: Any) -> dict[str, Any]:
        """A mean-difference vector from a small list of pairs typed in the page (``positive || negative`` per
        line), kept in memory under a new name."""
        from ..data.contrast import ContrastPair
        from ..steering.extraction import contrast_from_pairs, extract

        body = _only(body, EXTRACT_KEYS, "request body")
        if not isinstance(body.get("pairs"), str):
            raise InputError("give pairs as text: one 'positive || negative' pair per line")
        pairs = []
        for n, line in enumerate(body["pairs"].splitlines(), 1):
            if not line.strip():
                continue
            if line.count("||") != 1:
                raise InputError(f"line {n}: write one pair as 'positive text || negative text'")
            a, b = (x.strip() for x in line.split("||"))
            if not a or not b:
                raise InputError(f"line {n}: both sides of '||' need text")
            pairs.append(ContrastPair(a, b))
        if len(pairs) < 2:
            raise InputError(f"need at least 2 pairs to extract a direction, got {len(pairs)}")
        point = body.get("point", "resid_post")  # extract() names the valid kinds when this is not one
        if not isinstance(point, str):
            raise InputError(f"point must be a hook-point kind, got {point!r}")
        name = str(body.get("name") or f"extracted-{next(self._ids)}")
        if name in self.vectors:
            raise InputError(f"a vector named {name!r} exists; choose another name")
        with self.lock:
            vec = extract(self.model, contrast_from_pairs(self.model, pairs), point=point)
        self.vectors[name] = vec
        return self._vector_info(name, vec)

    def lens(self, body: Any) -> dict[str, Any]:
        body = _only(body, LENS_KEYS, "request body")
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            raise InputError("the prompt is empty")
        if len(body["prompt"]) > MAX_PROMPT_CHARS:
            raise InputError(f"the prompt has {len(body['prompt'])} characters; at most {MAX_PROMPT_CHARS}")
        kind = body.get("kind", "resid_post")
        if kind not in LENS_KINDS:
            raise InputError(f"unknown point kind {kind!r}; valid: {', '.join(LENS_KINDS)}")
        top_k = int(_number(body, "top_k", 5, 1, 20))
        which = body.get("lens", "logit")
        if which not in self.lenses:
            raise InputError(f"unknown lens {which!r}; available: {', '.join(self.lenses)} (start the server with "
                             "--lens tuned:DIR for the tuned lens)")
        positions = body.get("positions", "auto")
        if positions not in STEER_POSITIONS or positions == "generated":
            raise InputError(f"unknown positions {positions!r} for the lens; valid: "
                             f"{', '.join(p for p in STEER_POSITIONS if p != 'generated')}")
        req = GenerateRequest(body["prompt"], steer=self._parse_steer(body), positions=positions)
        edits = self.interventions(req)  # the steer view's vectors: the lens reads the steered run
        with self.lock, self.model.edit(*edits) as applied:
            grid = lens_grid(self.model, body["prompt"], kind, top_k=top_k, lens=self._lenses[which])
        return {**grid, "interventions": applied.records()} if edits else grid

    @torch.no_grad()
    def token_features(self, body: Any) -> dict[str, Any]:
        """The dictionary's most active features at each token of a prompt (JSON-ready)."""
        if self.sae is None:
            raise InputError("no dictionary is loaded (start the server with --sae DIR)")
        body = _only(body, FEATURES_KEYS, "request body")
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            raise InputError("the prompt is empty")
        k = int(_number(body, "top_k", 5, 1, 50))
        point = self.sae.cfg.hook_point
        with self.lock:
            batch = self.model.tokenize(body["prompt"])
            acts = self.model.activations(batch, point, positions="all", dtype=torch.float32)
            codes = self.sae.encode(acts[point][0].to(self.sae.W_enc.device)).cpu()  # [T, d_sae]
        ids = batch["input_ids"][0].tolist()
        vals, idx = codes.topk(min(k, codes.shape[-1]), dim=-1)
        return {"kind": "token_features", "model": self.model.name, "dictionary": self.sae.cfg.name,
                "point": point, "tokens": token_strings(self.model.tokenizer, ids),
                "features": [[[int(f), round(float(v), 4)] for v, f in zip(vr, fr, strict=True) if v > 0]
                             for vr, fr in zip(vals.tolist(), idx.tolist(), strict=True)]}

    def feature(self, f: int) -> dict[str, Any]:
        """One feature's dashboard over the server's texts (``--data``), as ``sae top-examples`` writes it."""
        from ..sae.dashboard import feature_dashboards

        if self.sae is None:
            raise InputError("no dictionary is loaded (start the server with --sae DIR)")
        if not 0 <= f < self.sae.cfg.d_sae:
            raise InputError(f"feature {f} does not exist; the dictionary has features 0..{self.sae.cfg.d_sae - 1}")
        if not self.texts:
            raise InputError("no texts to find the feature's contexts in (start the server with --data FILE)")
        with self.lock:
            return feature_dashboards(self.model, self.sae, self.texts, features=[f], contexts=6)
