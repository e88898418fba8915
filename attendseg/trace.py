"""Trace: everything one capture recorded for one image + text, saved and loaded losslessly.

Shapes (``T`` recorded tokens, ``L`` kept layer entries, ``H`` kept head entries, ``N`` image
tokens over all views):

* ``token_ids``: ``[T]`` int64 — the generated tokens (EOS included when generated), or the
  teacher-forced text tokens.
* ``offsets``: ``[T, 2]`` int64 — ``(start, end)`` character span of each token in ``text``;
  special tokens (EOS) get an empty span where they stand (after the text written so far).
* ``maps``: ``[T, L, H, N]`` float32 — attention probability from the recorded query row of
  token t to each image token (softmax over *all* keys, not renormalised over the image). ``L`` is
  ``len(layers)`` when ``per_layer`` else 1 (mean over ``layers``); ``H`` likewise for heads.

Row convention: with ``rows="predicting"`` (default, the paper's), the map of token t is the
attention of the query that *predicts* t (the position before it; for t = 0 the last prompt
position). With ``rows="own"``, it is the attention of token t's own position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import AttendsegError
from .views import View

SCHEMA_VERSION = 1


@dataclass
class Trace:
    """One image's captured attention. See the module docstring for shapes."""

    token_ids: torch.Tensor
    text: str
    offsets: torch.Tensor
    maps: torch.Tensor
    views: list[View]
    image_size: tuple[int, int]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    per_layer: bool = False
    per_head: bool = False
    rows: str = "predicting"
    mode: str = "generate"
    prompt: str = ""
    model_id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        T = self.token_ids.shape[0]
        if self.offsets.shape != (T, 2) or self.maps.dim() != 4 or self.maps.shape[0] != T:
            raise ValueError(
                f"inconsistent trace shapes: token_ids {tuple(self.token_ids.shape)}, "
                f"offsets {tuple(self.offsets.shape)}, maps {tuple(self.maps.shape)}"
            )

    def __len__(self) -> int:
        return self.token_ids.shape[0]

    def __repr__(self) -> str:
        """One line: sizes and what was kept, never the tensors."""
        def kept(values, separate):
            values = list(values)
            span = f"{values[0]}–{values[-1]}" if values == list(range(values[0], values[-1] + 1)) and \
                len(values) > 2 else ",".join(map(str, values))
            return f"{span} ({'separate' if separate else 'averaged'})" if values else "none"

        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return (f"Trace({len(self)} tokens × {self.n_image_tokens} image tokens, maps "
                f"{list(self.maps.shape)}, layers {kept(self.layers, self.per_layer)}, heads "
                f"{kept(self.heads, self.per_head)}, mode={self.mode!r}, model={self.model_id!r}, "
                f"text={text!r})")

    @property
    def n_image_tokens(self) -> int:
        return self.maps.shape[-1]

    @property
    def tokens(self) -> list[str]:
        """Each token's text as it appears in ``text`` (empty for special tokens)."""
        return [self.text[s:e] for s, e in self.offsets.tolist()]

    def token_maps(self, layers=None, heads=None) -> torch.Tensor:
        """``[T, N]`` maps averaged over the chosen layer / head entries (default: all kept).

        ``layers`` / ``heads`` are model layer / head indices and need ``per_layer`` /
        ``per_head`` traces.
        """
        maps = self.maps
        if layers is not None:
            maps = maps[:, self._entries(layers, self.layers, self.per_layer, "layer")]
        if heads is not None:
            maps = maps[:, :, self._entries(heads, self.heads, self.per_head, "head")]
        return maps.mean(dim=(1, 2))

    @staticmethod
    def _entries(wanted, kept, separate, what) -> list[int]:
        wanted = [wanted] if isinstance(wanted, int) else list(wanted)
        if not separate:
            raise AttendsegError(f"this trace averaged its {what}s; record with per_{what}=True")
        missing = [w for w in wanted if w not in kept]
        if missing:
            raise AttendsegError(f"{what}s {missing} were not recorded (recorded: {list(kept)})")
        return [kept.index(w) for w in wanted]

    # ----------------------------------------------------------------------------- saving
    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file atomically: tensors plus all other fields as JSON metadata."""
        from safetensors.torch import save

        from .files import atomic_write_bytes

        path = Path(path)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "text": self.text,
            "views": [v.to_dict() for v in self.views],
            "image_size": list(self.image_size),
            "layers": list(self.layers),
            "heads": list(self.heads),
            "per_layer": self.per_layer,
            "per_head": self.per_head,
            "rows": self.rows,
            "mode": self.mode,
            "prompt": self.prompt,
            "model_id": self.model_id,
            "meta": self.meta,
        }
        tensors = {
            "token_ids": self.token_ids.contiguous(),
            "offsets": self.offsets.contiguous(),
            "maps": self.maps.float().contiguous(),
        }
        return atomic_write_bytes(path, save(tensors, metadata={"attendseg": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["attendseg"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(
            token_ids=tensors["token_ids"],
            text=meta["text"],
            offsets=tensors["offsets"],
            maps=tensors["maps"],
            views=[View.from_dict(v) for v in meta["views"]],
            image_size=tuple(meta["image_size"]),
            layers=tuple(meta["layers"]),
            heads=tuple(meta["heads"]),
            per_layer=meta["per_layer"],
            per_head=meta["per_head"],
            rows=meta["rows"],
            mode=meta["mode"],
            prompt=meta["prompt"],
            model_id=meta["model_id"],
            meta=meta["meta"],
        )
