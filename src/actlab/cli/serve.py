"""``actlab serve``: the local playground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from .common import DeviceMapOpt, DeviceOpt, DtypeOpt, GgufOpt, MaxMemOpt, ModelArg, checks, console, load, opt
from .output import err_console


def serve_cmd(
    model: ModelArg,
    vector: Annotated[list[Path] | None, opt("--vector", metavar="FILE", help="Steering vector file(s) to offer "
                                             "(repeat the option for several).")] = None,
    eval_dir: Annotated[Path | None, opt("--eval", metavar="DIR", help="An actlab eval run folder: offer its "
                                         "vectors and print each method's chosen layer and multiplier.")] = None,
    sae: Annotated[Path | None, opt("--sae", metavar="DIR", help="A dictionary folder: features per token, feature "
                                    "pages and feature ablation.")] = None,
    data: Annotated[Path | None, opt("--data", metavar="PATH", help="Texts in which feature pages find their "
                                     "top contexts.")] = None,
    limit: Annotated[int, opt("--limit", metavar="N", help="Texts to read from --data.")] = 200,
    lens: Annotated[str | None, opt("--lens", metavar="LENS", help="'tuned:DIR': offer a tuned lens in the lens view "
                                   "beside the logit lens.")] = None,
    host: Annotated[str, opt("--host", metavar="HOST", help="Address to bind; anything but loopback makes the "
                             "model reachable from the network.")] = "127.0.0.1",
    port: Annotated[int, opt("--port", metavar="PORT", help="Port.")] = 8765,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """A local playground in the browser: default vs steered generation streamed side by side, the logit lens
    per layer and position, SAE features per token and their pages. Needs `pip install actlab[serve]`."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        from ..errors import InputError

        raise InputError("actlab serve needs the serve extra: pip install 'actlab[serve]' (Starlette + "
                         "uvicorn)") from None
    vector = list(vector or [])
    if eval_dir is not None:
        checks.input_dir(eval_dir, "--eval run folder")
        vector += _eval_vectors(eval_dir)
    for v in vector:
        checks.input_file(v, "--vector")
    if sae is not None:
        checks.input_dir(sae, "--sae dictionary folder")
    if data is not None:
        checks.input_path(data, "--data")
    checks.positive(limit, "--limit")
    if lens is not None and lens != "logit":
        if not lens.startswith("tuned:"):
            from ..errors import InputError

            raise InputError(f"unknown --lens {lens!r}; valid: logit, tuned:DIR")
        checks.input_dir(Path(lens[len("tuned:"):]), "--lens tuned: folder")
    if not 0 < port < 65536:
        from ..errors import InputError

        raise InputError(f"--port must be between 1 and 65535, got {port}")
    from ..data.texts import read_texts
    from ..sae import load_sae
    from ..serve import Playground
    from ..serve.app import is_loopback, serve
    from ..steering.vector import SteeringVector

    vectors = {}
    for v in vector or []:
        name = v.stem if v.stem not in vectors else str(v)
        vectors[name] = SteeringVector.load(v).check_values(f"--vector {str(v)!r}")
    dictionary = load_sae(sae) if sae is not None else None
    texts = read_texts(data, limit=limit) if data is not None else []
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    from ..tuned_lens import parse_lens

    pg = Playground(m, vectors=vectors, sae=dictionary, texts=texts, lenses=[parse_lens(lens, m)])
    if not is_loopback(host):
        err_console.print(f"warning: binding {host}: anyone who can reach this machine can run the model",
                          highlight=False)
    console.print(f"actlab playground for {m.name} on http://{host}:{port}/ (Ctrl+C to stop)", highlight=False)
    serve(pg, host=host, port=port)


def _eval_vectors(folder: Path) -> list[Path]:
    """An evaluation's saved vectors, and its chosen cells printed (what to set in the playground)."""
    import json

    from ..errors import InputError

    found = sorted(p for p in (folder / "vectors").glob("*.safetensors") if not p.is_symlink()) \
        if (folder / "vectors").is_dir() else []
    if not found:
        raise InputError(f"--eval {str(folder)!r} holds no vectors/ (is it an actlab eval run folder?)")
    try:
        rows = json.loads((folder / "leaderboard.json").read_text(encoding="utf-8")).get("rows", [])
    except (OSError, ValueError, AttributeError):
        rows = []
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict) and isinstance(r.get("strength"), (int, float)) and r.get("layer") is not None:
            console.print(f"eval choice: {r.get('behaviour')} / {r.get('method')}: layer {r.get('layer')}, "
                          f"strength {r.get('strength'):g}", highlight=False)
    return found
