"""Encoders: frozen pretrained models (or any function) that turn raw items into latents.

An encoder maps a list of ``B`` raw items to a ``(B, D)`` floating tensor
(:class:`Encoder`). The adapters here also carry ``identity`` (a JSON dict
recorded in the latent store) and ``dim``, run in micro-batches of
``max_batch_size`` without autograd, and return ``float32`` on the CPU:

- :class:`CallableEncoder`: any function or ``nn.Module``.
- :class:`HFTextEncoder`, :class:`HFImageEncoder`, :class:`HFAudioEncoder`:
  Hugging Face ``transformers`` checkpoints (BGE / E5 / MiniLM, DINOv2,
  Whisper / CLAP), from a Hub id or a local directory
  (``pip install "fusemix[hf]"``).
- :class:`SentenceTransformerEncoder`: ``sentence-transformers`` models
  (``pip install "fusemix[sentence-transformers]"``).

The Hugging Face and sentence-transformers adapters take ``progress=False``
to load their model without the libraries' progress bars and INFO logs.
``HFImageEncoder(transform=...)`` and ``HFTextEncoder(preprocess=...)`` /
``SentenceTransformerEncoder(preprocess=...)`` prepare the inputs the way
another codebase does (e.g. the FuseMix authors':
:data:`fusemix.preprocess.DINOV2_EVAL_TRANSFORM`,
:func:`fusemix.preprocess.blip_caption`), recorded in the identity.

The optional dependencies are imported only when an adapter is built.
"""

from fusemix.encoders._source import fingerprint_path
from fusemix.encoders.base import BatchEncoder, Encoder, IdentifiedEncoder
from fusemix.encoders.callable_spec import load_callable_encoder
from fusemix.encoders.callables import CallableEncoder
from fusemix.encoders.hf_audio import HFAudioEncoder
from fusemix.encoders.hf_image import HFImageEncoder
from fusemix.encoders.hf_text import HFTextEncoder
from fusemix.encoders.sentence_transformer import SentenceTransformerEncoder

__all__ = [
    "BatchEncoder",
    "CallableEncoder",
    "Encoder",
    "HFAudioEncoder",
    "HFImageEncoder",
    "HFTextEncoder",
    "IdentifiedEncoder",
    "SentenceTransformerEncoder",
    "fingerprint_path",
    "load_callable_encoder",
]
