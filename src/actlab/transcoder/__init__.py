"""Skip transcoders: a sparse map from an MLP sub-block's input to its output (:mod:`.model`), saved with
SAELens's field names (:mod:`.io`), and run in place of the MLP (:mod:`.replace`)."""

from .io import load_transcoder, save_transcoder
from .model import Transcoder, TranscoderConfig
from .replace import TranscoderReplace

__all__ = ["Transcoder", "TranscoderConfig", "TranscoderReplace", "load_transcoder", "save_transcoder"]
