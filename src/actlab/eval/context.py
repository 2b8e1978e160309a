"""What every part of one evaluation shares: the model, the config, the prompt styles of each variant, the
vectors extracted per behaviour (each once, saved in the run folder), the run's resume record (a step's result
is saved when it finishes and reused by a resumed run), and the torch.distributed rank.

Under torchrun every rank runs the same steps in the same order: rank 0 alone reads and writes the record and
the files, and tells the others which steps are done and what they produced (:meth:`Context.step`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..parallel import broadcast, rank_and_world
from ..progress import info
from ..runs import Resume
from ..steering.prompts import PromptStyle, resolve_style
from .config import EvalConfig

if TYPE_CHECKING:
    from ..models.model import Model
    from ..steering.vector import SteeringVector
    from .behaviours import Behaviour

def instruction(beh: Behaviour) -> str:
    """The prompting baseline's instruction (a system prompt, or a first line for a model without a template)."""
    verb = "show" if beh.spec.direction == "increase" else "avoid"
    return f"In every answer, {verb} this behaviour: {beh.description}."


@dataclass
class Context:
    """See module docstring. ``layers`` are the grid's layers; ``notes`` end up in the leaderboard file."""

    cfg: EvalConfig
    model: Model
    out: Path
    resume: Resume | None
    layers: list[int]
    notes: list[str] = field(default_factory=list)
    _vectors: dict[tuple[str, str], SteeringVector] = field(default_factory=dict)
    _saes: dict[int, Any] = field(default_factory=dict)
    _file: SteeringVector | None = None

    @property
    def rank(self) -> int:
        return rank_and_world()[0]

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            info(msg)

    # -- prompts -------------------------------------------------------------------------------------------
    def style(self, beh: Behaviour, variant: str) -> PromptStyle:
        """The prompt style of a variant: ``plain`` (the chat template when the model has one), ``instruction``
        (plus the behaviour's instruction as the system prompt) or ``few_shot`` (plus examples from the
        extraction set as earlier turns)."""
        base = resolve_style(self.model)
        if variant == "plain":
            return base
        if variant == "instruction":
            return PromptStyle(chat=base.chat, system=instruction(beh))
        if variant == "few_shot":
            return PromptStyle(chat=base.chat, history=tuple(self.shots(beh)))
        raise InputError(f"unknown prompt variant {variant!r}; valid: plain, instruction, few_shot")

    def shots(self, beh: Behaviour) -> list[tuple[str, str]]:
        """The few-shot examples: extraction items answered the way the behaviour's direction asks."""
        n = self.cfg.few_shot
        if beh.extraction.format == "ab" and beh.extraction.items:
            return [(it.question, it.matching if beh.spec.direction == "increase" else it.not_matching)
                    for it in beh.extraction.items[:n]]
        return beh.few_shot[:n]

    # -- what methods need ----------------------------------------------------------------------------------
    def vector(self, beh: Behaviour, method: str) -> SteeringVector:
        """The behaviour's vector by an extraction method (``mean_diff``, ``pca``, ``logreg``) at the grid's
        layers. Every method the config needs is extracted from one reading of the activations, once, and saved
        as ``vectors/BEHAVIOUR.METHOD.safetensors``."""
        from ..jobs.steering import extract_vectors
        from ..steering.vector import SteeringVector

        if beh.extraction.format == "instructions" and method == "pca":
            raise InputError("pca needs paired data; the instructions format has none")
        if (beh.name, method) in self._vectors:
            return self._vectors[(beh.name, method)]
        wanted = {"mean_diff", method} | {m for m in ("pca", "logreg") if m in self.cfg.methods}
        if beh.extraction.format == "instructions":
            wanted.discard("pca")
        names = sorted(wanted)
        paths = {m: self.out / "vectors" / f"{beh.name}.{m}.safetensors" for m in names}

        def make() -> list[str]:
            chat = None if beh.extraction.format == "pairs" else self.style(beh, "plain").chat  # the template if any
            # instructions are read at the end of the instruction: its template tokens, or the last token
            read = "last" if beh.extraction.format == "instructions" and not chat else None
            vecs = extract_vectors(self.model, beh.extraction, names, layers=self.layers, chat=chat,
                                   positions=read, batch_size=self.cfg.batch_size)
            if self.rank == 0:
                for m, v in vecs.items():
                    v.save(paths[m])
            return names

        for m in self.step(f"vectors {beh.name} {','.join(names)}", make):
            vec = SteeringVector.load(paths[m]) if self.rank == 0 else None
            self._vectors[(beh.name, m)] = broadcast(vec)
        return self._vectors[(beh.name, method)]

    def dictionary(self, layer: int) -> Any:
        """The SAE for ``layer`` from ``sae:`` in the config (None when none is given for it)."""
        if layer not in self._saes:
            from ..sae.io import load_sae

            folder = self.cfg.sae.get(str(layer))
            self._saes[layer] = load_sae(folder) if folder is not None else None
        return self._saes[layer]

    def file_vector(self) -> SteeringVector:
        """The (first) vector named under ``vectors:`` in the config."""
        if self._file is None:
            from ..steering.vector import SteeringVector

            name, path = next(iter(self.cfg.vectors.items()))
            self._file = SteeringVector.load(path)
            self._file.check_fits(self.model)
            self.note(f"file method: vector {name!r} from {path}")
        return self._file

    # -- steps that resume ---------------------------------------------------------------------------------
    def step(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()``'s JSON-ready result, kept in the resume record when it finishes
        (:meth:`actlab.runs.Resume.keep`); a resumed run reads it back instead of computing it again. Every rank
        computes (the work inside is split and gathered); rank 0 writes."""
        done = self.resume.kept(name) if self.resume is not None else (False, None)
        done = broadcast(done)
        if done[0]:
            return done[1]
        result = json.loads(json.dumps(compute()))  # what a resumed run reads back, exactly
        if self.resume is not None:
            self.resume.keep(name, result)
        return result
