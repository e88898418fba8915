"""Text similarity for the GCG recall gate, as GLaMM's evaluation computes it.

GLaMM's ``eval/gcg/evaluate.py`` embeds a text by running ``bert-base-uncased`` on it alone
(tokenised with ``max_length=512, truncation=True``, [CLS] and [SEP] added, no padding) and
averaging the last hidden states over *all* its tokens, [CLS] and [SEP] included; the
similarity of two texts is the cosine of their embeddings. A ground-truth phrase and a predicted
phrase pass the gate when the similarity is ≥ 0.5.

:class:`TextSimilarity` does exactly that with any Hugging Face text encoder (``AutoModel``),
loaded the normal way (hub id or local folder). Embeddings are cached per text: GLaMM embeds
each text once per pair, which gives the same numbers, more slowly.

>>> sim = TextSimilarity("bert-base-uncased")      # or a local folder
>>> sim("a man in a red shirt", "the man")
"""

from __future__ import annotations

import numpy as np

from ..errors import AttendsegError

DEFAULT_TEXT_ENCODER = "bert-base-uncased"


class TextSimilarity:
    """``sim(a, b) -> float``: cosine of mean-pooled last hidden states (GLaMM's gate).

    Args:
        model: hub id or folder of a text encoder (default ``bert-base-uncased``, GLaMM's).
        device: torch device (default CPU: the encoder is small and runs once per text).
        max_length: truncation length in tokens (GLaMM: 512).

    Raises:
        AttendsegError: when the encoder cannot be loaded (not downloaded, no network, not a
            text encoder), with one line saying what to pass instead.
    """

    def __init__(self, model: str = DEFAULT_TEXT_ENCODER, device=None, max_length: int = 512):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = str(model)
        self.max_length = max_length
        self.device = torch.device(device or "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name)
            self.model = AutoModel.from_pretrained(self.name).to(self.device).eval()
        except (OSError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise AttendsegError(
                f"text encoder {self.name!r} could not be loaded ({first}); the GCG recall gate needs "
                f"it: download it once, or pass --text-encoder FOLDER (any Hugging Face text encoder), "
                f"or --text-encoder none to score masks without the text gate"
            ) from None
        self._cache: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"TextSimilarity({self.name!r})"

    def embed(self, text: str) -> np.ndarray:
        """``[D]`` float32: mean over all tokens (special ones included) of the last hidden state."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        import torch

        inputs = self.tokenizer(text, return_tensors="pt", max_length=self.max_length, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state[0]  # [T, D]
        vector = hidden.float().mean(dim=0).cpu().numpy()
        self._cache[text] = vector
        return vector

    def __call__(self, a: str, b: str) -> float:
        u, v = self.embed(a).astype(np.float64), self.embed(b).astype(np.float64)
        norm = np.linalg.norm(u) * np.linalg.norm(v)
        return float(u @ v / norm) if norm > 0 else 0.0


def make_text_similarity(spec: str | None, device=None):
    """The gate from a CLI value: an encoder id / folder, or ``"none"`` (no gate: ``None``)."""
    if spec is None or str(spec).lower() == "none":
        return None
    return TextSimilarity(spec, device=device)
