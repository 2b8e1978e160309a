"""Running a model with a transcoder in place of one MLP: the sub-block's output becomes the transcoder's
prediction from the sub-block's input, plus - when ``error_term`` - the transcoder's error on that input,
held fixed (``mlp(x) - transcoder(x)``, detached). With the error term the model computes what it computed
before (to rounding) while gradients flow through the transcoder's latents; without it the model runs on the
transcoder alone (its next-token KL to the original measures the replacement's cost)."""

from __future__ import annotations

from typing import Any

import torch

from ..hooks.interventions import Edit, Intervention, point_names
from ..hooks.points import HookPoint
from ..hooks.sites import HookTarget
from .model import Transcoder


class TranscoderReplace(Intervention):
    """Replace ``blocks.i.mlp_out`` by the transcoder's prediction from ``blocks.i.resid_mid`` (see module
    docstring)."""

    kind = "transcoder_replace"

    def __init__(self, tc: Transcoder, *, error_term: bool = False):
        self.tc, self.error_term = tc, error_term
        self.points: list[HookPoint | str] = [tc.cfg.hook_point, tc.cfg.hook_point_out]

    def edits(self, target: HookTarget) -> list[Edit]:
        from ..hooks.interventions import as_point

        p_in, p_out = (as_point(target, p) for p in self.points)
        self.points = [p_in, p_out]
        held: dict[str, torch.Tensor] = {}
        tc = self.tc
        dev = tc.W_enc.device

        def read(x: torch.Tensor, state: Any) -> None:
            held["x"] = x

        def replace(y: torch.Tensor, state: Any) -> torch.Tensor:
            x = held.pop("x")
            pred = tc(x.to(dev, torch.float32)).to(y.device)
            if self.error_term:
                pred = pred + (y.to(pred.dtype) - pred).detach()
            return pred.to(y.dtype)

        return [Edit(p_in, read), Edit(p_out, replace)]

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "points": point_names(self.points), "error_term": self.error_term,
                "transcoder": {"name": self.tc.cfg.name, **self.tc.origin}}
