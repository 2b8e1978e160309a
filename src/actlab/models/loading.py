"""Resolving and loading models: a local folder, a GGUF file, a short name in the local model
directory (``ACTLAB_MODELS_DIR``), or a Hugging Face hub id.

Lookup order for a name that is not an existing path: each folder of ``ACTLAB_MODELS_DIR`` is searched
for a sub-folder named like the model (the whole id with ``/`` as ``--``, or its last part, any case,
optionally followed by a quantisation suffix such as ``-q4_1``); then the hub is asked.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .. import settings
from ..errors import ActlabError, ModelNotFoundError
from ..progress import task as progress_task
from ..progress import third_party_quiet
from . import gguf as gguf_mod
from .adapters import check_config
from .model import Model

log = logging.getLogger(__name__)

_QUANT_SUFFIX = re.compile(r"^[-_.](q\d[\w]*|iq\d[\w]*|f16|f32|bf16|fp16|gguf)$", re.IGNORECASE)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """Accept a torch dtype, a name (``bf16``, ``float32``...), ``'auto'`` or None."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ActlabError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(DTYPES)}")


def local_models() -> dict[str, Path]:
    """Folder name -> path for every model folder in ``ACTLAB_MODELS_DIR``."""
    out: dict[str, Path] = {}
    for d in settings.models_dirs():
        for sub in sorted(d.iterdir()):
            if sub.is_dir() and ((sub / "config.json").exists() or any(sub.glob("*.gguf"))):
                out.setdefault(sub.name, sub)
    return out


def find_local(name: str) -> Path | None:
    """The local folder for a short name or hub id, or None."""
    wanted = {name.lower(), name.replace("/", "--").lower(), name.split("/")[-1].lower()}
    models = local_models()
    for folder, path in models.items():
        if folder.lower() in wanted:
            return path
    for folder, path in models.items():
        for w in wanted:
            if folder.lower().startswith(w) and _QUANT_SUFFIX.match(folder[len(w):]):
                return path
    return None


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(g)) for g in _WEIGHT_GLOBS)


def _resolve(name_or_path: str, gguf_file: str | None) -> tuple[str, str, Path | None]:
    """-> (kind, location, gguf path): kind is 'folder', 'gguf' or 'hub'."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        gguf_mod.check_gguf(p)
        return "gguf", str(p.parent), p
    if p.is_dir():
        return _resolve_folder(p, gguf_file)
    local = find_local(name_or_path)
    if local is not None:
        return _resolve_folder(local, gguf_file)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.endswith(".gguf") or not _HUB_ID.match(name_or_path):
        raise ModelNotFoundError(f"model {name_or_path!r} not found: no such file or folder." + _local_hint())
    return "hub", name_or_path, None


def _resolve_folder(folder: Path, gguf_file: str | None) -> tuple[str, str, Path | None]:
    if gguf_file:
        g = folder / gguf_file
        gguf_mod.check_gguf(g)
        return "gguf", str(folder), g
    if (folder / "config.json").exists() and _has_weights(folder):
        return "folder", str(folder), None
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        gguf_mod.check_gguf(ggufs[0])
        return "gguf", str(folder), ggufs[0]
    if len(ggufs) > 1:
        raise ModelNotFoundError(f"folder {str(folder)!r} holds several GGUF files; pick one with gguf_file=: "
                                 + ", ".join(g.name for g in ggufs))
    raise ModelNotFoundError(f"folder {str(folder)!r} has no model weights (config.json + safetensors/bin) "
                             "and no .gguf file")


def _local_hint() -> str:
    names = list(local_models())
    dirs = [str(d) for d in settings.models_dirs()]
    if not dirs:
        return " No local model directory is set (ACTLAB_MODELS_DIR)."
    return f" Local models in {', '.join(dirs)}: {', '.join(names) or '(none)'}."


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
    validate: bool = True,
    cache_gguf: bool = True,
    **hf_kwargs: Any,
) -> Model:
    """Load a causal LM by hub id, local folder, GGUF file or short name, and wrap it as a :class:`Model`.

    ``dtype`` defaults to float32 on CPU and to the checkpoint's dtype (``'auto'``) on accelerators.
    ``device_map='auto'`` spreads a large model over the available GPUs with accelerate (then ``device``
    is ignored). ``validate`` checks the architecture adapter on a short probe (one tiny forward).
    """

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelNotFoundError(f"model name {name_or_path!r} is empty" + _local_hint())
    requested = name_or_path.strip()
    kind, location, gguf_path = _resolve(requested, gguf_file)
    if kind == "hub":
        _hub_reachable(requested)
    if device_map is None:
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
    dt = parse_dtype(dtype)
    if dt is None:
        dt = torch.float32 if device_map is None and device.type == "cpu" else "auto"
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        common["revision"] = revision
    t0 = time.perf_counter()
    source: dict[str, Any] = {"requested": name_or_path, "kind": kind, "location": location}
    model_kwargs: dict[str, Any] = dict(common, **hf_kwargs)
    model_kwargs[_dtype_kwarg()] = dt
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        model_kwargs["device_map"] = device_map

    with progress_task(f"loading {requested}", unit="") as loading:
        model = _load_and_wrap(requested, name_or_path, kind, location, gguf_path, dt, device, device_map, common,
                               model_kwargs, cache_gguf, validate, source, t0)
        loading.info.update({"family": model.adapter.family, "layers": model.n_layers, "d_model": model.d_model,
                             "dtype": str(model.dtype).replace("torch.", ""), "device": str(model.device)})
    return model


def _load_and_wrap(requested: str, name_or_path: str, kind: str, location: str, gguf_path: Path | None, dt: Any,
                   device: Any, device_map: Any, common: dict[str, Any], model_kwargs: dict[str, Any],
                   cache_gguf: bool, validate: bool, source: dict[str, Any], t0: float) -> Model:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        with third_party_quiet():
            if kind == "gguf":
                assert gguf_path is not None
                hf_model, tokenizer = _load_gguf(Path(location), gguf_path, dt, model_kwargs, cache_gguf, source)
            else:
                config = _read_config(AutoConfig, location, common)
                check_config(config)  # fail fast, before downloading or loading weights
                ck = getattr(config, "dtype" if _dtype_kwarg() == "dtype" else "torch_dtype", None)
                if ck is not None:
                    source["checkpoint_dtype"] = str(ck).replace("torch.", "")
                hf_model = AutoModelForCausalLM.from_pretrained(location, **model_kwargs)
                tokenizer = AutoTokenizer.from_pretrained(location, **common)
    except ActlabError:
        raise
    except SafetensorError as e:
        raise ModelNotFoundError(f"cannot load model from {location!r}: a weights file is corrupt or truncated "
                                 f"({str(e).splitlines()[0]})") from None
    except OSError as e:
        if kind == "hub":
            raise ModelNotFoundError(
                f"model {name_or_path!r} not found locally and could not be loaded from the hub "
                f"({str(e).splitlines()[0]})." + _local_hint()
            ) from None
        raise ModelNotFoundError(f"cannot load model from {location!r}: {str(e).splitlines()[0]}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a config.json with wrong types or values
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelNotFoundError(f"cannot load model from {location!r}: its config does not describe a model "
                                 f"transformers can build ({type(e).__name__}: {first[:200]})") from None
    if device_map is None:
        hf_model.to(device)
    hf_model.eval()
    source["load_seconds"] = round(time.perf_counter() - t0, 3)
    if Path(requested).expanduser().exists():  # a path: the folder's (or the GGUF file's) name
        name = Path(location).name if gguf_path is None else f"{Path(location).name}/{gguf_path.name}"
    else:  # a hub id or short name (also when found in ACTLAB_MODELS_DIR): the name the user gave
        name = requested
    return Model.wrap(hf_model, tokenizer, validate=validate, name=name, source=source)


def _read_config(auto_config: Any, location: str, common: dict[str, Any]) -> Any:
    """A model's config, or a one-line error when its config.json holds values of the wrong type (transformers
    and huggingface_hub raise their own validation errors for those)."""
    try:
        return auto_config.from_pretrained(location, **common)
    except (OSError, ActlabError):
        raise
    except Exception as e:
        first = " ".join(str(e).split())[:240]
        raise ModelNotFoundError(f"cannot load model from {location!r}: its config.json is not a valid "
                                 f"configuration ({type(e).__name__}: {first})") from None


def _hub_reachable(name: str) -> None:
    """Fail in seconds, not after a minute of retries, when a model would come from an unreachable hub."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelNotFoundError(f"model {name!r} is not a local folder, GGUF file or a model in "
                                 "ACTLAB_MODELS_DIR, and HF_HUB_OFFLINE is set, so the hub is not asked."
                                 + _local_hint())
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=5)
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise ModelNotFoundError(f"model {name!r} was not found locally nor on the hub "
                                 f"({type(e).__name__})." + _local_hint()) from None
    except Exception as e:  # connection refused, DNS, timeout, proxy...: one check, no retry storm
        raise ModelNotFoundError(f"model {name!r} is not local and the Hugging Face hub cannot be reached "
                                 f"({type(e).__name__}); set ACTLAB_MODELS_DIR to a folder holding it, or "
                                 "HF_HUB_OFFLINE=1 to fail at once." + _local_hint()) from None


def _dtype_kwarg() -> str:
    """transformers 5 renamed ``torch_dtype`` to ``dtype``."""
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def _check_all_weights_read(gguf_path: Path, model: Any, info: dict[str, Any]) -> None:
    """Refuse a GGUF model whose weights transformers' reader did not all find: it would leave them at their random
    initialisation (one log line, then a model that runs and validates - it is self-consistent - and is wrong).
    Seen with gpt-oss files in llama.cpp's layout: the reader maps no GGUF name to the fused expert projections."""
    missing = sorted(set(info.get("missing_keys") or ()))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        bad = missing or mismatched
        raise ModelNotFoundError(
            f"cannot read GGUF file {str(gguf_path)!r} as {model.config.model_type!r}: transformers' GGUF reader "
            f"found no weights for {len(bad)} parameter(s) ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}),"
            " which would stay randomly initialised; this transformers cannot read this architecture's GGUF layout"
            " - load the original (safetensors) checkpoint instead")


def _load_gguf(folder: Path, gguf_path: Path, dt: Any, model_kwargs: dict[str, Any], use_cache: bool,
               source: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source["gguf_file"] = str(gguf_path)
    cached = gguf_mod.cached_folder(settings.cache_dir(), gguf_path, str(dt)) if use_cache else None
    if cached is not None and cached.is_dir():
        source["gguf_cache"] = str(cached)
        source["gguf_cache_hit"] = True
        model = AutoModelForCausalLM.from_pretrained(cached, **model_kwargs)
        return model, AutoTokenizer.from_pretrained(cached)
    kw = dict(model_kwargs)
    device_map = kw.pop("device_map", None)
    with gguf_mod.shared_reads():  # the file's metadata parsed once, not once per reader transformers opens
        try:
            model, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_path.name,
                                                               output_loading_info=True, **kw)
        except Exception as e:  # gguf readers raise struct/Value/Key errors on damaged files
            raise ModelNotFoundError(f"cannot read GGUF file {str(gguf_path)!r} (truncated, corrupt or an "
                                     f"architecture transformers cannot de-quantize): {str(e).splitlines()[0]}"
                                     ) from None
        _check_all_weights_read(gguf_path, model, info)
        if any((folder / f).exists() for f in _TOKENIZER_FILES):
            tokenizer = AutoTokenizer.from_pretrained(folder)
            source["tokenizer"] = "folder"
        else:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_path.name)
            source["tokenizer"] = "gguf"
            source["tokenizer_fixes"] = gguf_mod.fix_tokenizer(tokenizer, gguf_path)
    if cached is not None:
        gguf_mod.save_to_cache(cached, model, tokenizer, {"gguf_file": str(gguf_path), "dtype": str(dt)})
        source["gguf_cache"] = str(cached)
        source["gguf_cache_hit"] = False
        if device_map is not None:  # reload from the cache so accelerate can place the weights
            model = AutoModelForCausalLM.from_pretrained(cached, **model_kwargs)
    return model, tokenizer
