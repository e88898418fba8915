"""Attention capture: record text→image attention rows while the model runs at full speed.

One attention function, registered with transformers' ``AttentionInterface`` under
:data:`ATTENTION_NAME` (and its mask under the same name in ``AttentionMaskInterface``), replaces
the language model's attention. It returns exactly what the wrapped fast implementation
(``sdpa``) returns, so generation is unchanged. When a :class:`Recorder` is active, it also
recomputes, for the recorded query rows only, ``softmax(q·Kᵀ·scale + mask)`` in float32 over all
keys, keeps the image-key columns, reduces heads, and hands the result to the recorder.

Memory is ``O(recorded rows × kept layers × kept heads × image tokens)``: no ``seq²`` matrix is
ever kept, unlike ``output_attentions=True``.

Each row of a batch has its own image-token positions and its own count ``N_b`` (dynamic
resolution, tiles): the Recorder gathers through one ``[B, N_max]`` index padded with position 0,
and zeroes the padded columns, so a row's first ``N_b`` columns are exactly what running it alone
records.

Rows recorded per forward call are the *last* ``n_rows`` query positions, shifted ``shift``
positions to the left. Generation uses ``(1, 0)`` on every call: the last prompt position in the
prefill (it predicts the first new token), then the single new position in each decode step
(``use_cache=False`` re-runs the whole sequence each step: its last row is recorded). A
teacher-forced text of ``r`` tokens at the end of the sequence uses ``(r, 1)`` for the
predicting rows, ``(r, 0)`` for the tokens' own rows.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Callable, Iterator, Sequence

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

ATTENTION_NAME = "attendseg"
#: The fast implementation the capture function wraps by default.
WRAPPED = "sdpa"

#: The recorder of the current thread / task (each thread starts with none, so concurrent
#: captures in different threads never see each other's calls).
_ACTIVE: contextvars.ContextVar["Recorder | None"] = contextvars.ContextVar("attendseg_recorder", default=None)


class Recorder:
    """Collects image-column attention rows, reduced online.

    Args:
        key_index: per batch row, the ``[N_b]`` sequence positions of its image tokens (keys), in
            map order; a ``[B, N]`` tensor when every row has the same count.
        layers: language-model layer indices to record, in execution order.
        heads: head indices to keep, or None for all heads.
        per_layer: keep each layer separately (else mean over ``layers``).
        per_head: keep each head separately (else mean over ``heads``).
        n_rows, shift: which query rows of each forward call to record (module docstring).
        past: tokens already in the KV cache before the first recorded call (a cached prefix
            that was run without this recorder).

    After the run, :meth:`maps` returns ``[B, R, L, H, N_max]`` float32 on the CPU, where ``R``
    is the number of recorded rows over all forward calls, in order; row b's columns from
    ``n_keys[b]`` on are zero padding.
    """

    def __init__(
        self,
        key_index: torch.Tensor,
        layers: Sequence[int],
        heads: Sequence[int] | None = None,
        per_layer: bool = False,
        per_head: bool = False,
        n_rows: int = 1,
        shift: int = 0,
        past: int = 0,
    ):
        if not layers:
            raise ValueError("no layers to record")
        self.key_index, self.key_valid = pad_key_index(key_index)
        batch, width = self.key_index.shape
        self.n_keys = [width] * batch if self.key_valid is None else self.key_valid.sum(1).tolist()
        self.layers = tuple(layers)
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
        self.heads = None if heads is None else tuple(heads)
        self.per_layer = per_layer
        self.per_head = per_head
        self.n_rows = n_rows
        self.shift = shift
        self.past = past
        self._steps: list[torch.Tensor] = []
        self._current: torch.Tensor | None = None
        self._seq_len = 0
        self._head_index: torch.Tensor | None = None
        self._index: torch.Tensor | None = None
        self._valid: torch.Tensor | None = None
        self._gather: dict = {}  # probs' (B, H, r) → the gather index expanded to it (a view)

    def wants(self, layer_idx: int | None) -> bool:
        return layer_idx in self._slot

    def record(self, module, query, key, attention_mask, scaling, softcap=None) -> torch.Tensor:
        """Compute the recorded rows of one layer's attention, store their image columns, and
        return their ``[B, H, r, kv]`` float32 probabilities over all keys."""
        q_len, kv_len = query.shape[2], key.shape[2]
        slot = self._slot[module.layer_idx]
        if slot == 0:  # the first recorded layer opens a new forward call
            first = not self._steps and self._current is None
            # tokens in the sequence so far: the whole input when there is no cache (q == kv),
            # else one more chunk (the first chunk after ``past`` cached tokens); a static
            # cache's kv also counts its empty slots
            if first:
                self._seq_len = self.past + q_len
            else:
                self._seq_len = q_len if q_len == kv_len else self._seq_len + q_len
            self._flush()
        stop = q_len - self.shift
        rows = slice(max(stop - self.n_rows, 0), stop)
        filled = min(self._seq_len, kv_len)  # keys holding real tokens (static caches pad)
        probs = row_probabilities(query, key, attention_mask, scaling, rows, softcap, filled)  # [B, H, r, kv]
        if self._index is None or self._index.device != probs.device:
            self._index = self.key_index.to(probs.device)
            self._valid = None if self.key_valid is None else self.key_valid.to(probs.device)
            self._gather = {}
        dropped = max(self._seq_len - kv_len, 0)  # keys a sliding-window cache no longer holds
        if dropped:
            index = self._index - dropped
            valid = index >= 0 if self._valid is None else (index >= 0) & self._valid
            image = probs.gather(-1, _expand(index.clamp(min=0), probs)) * valid[:, None, None, :]
        else:
            gather = self._gather.get(probs.shape[:3])
            if gather is None:
                gather = self._gather[probs.shape[:3]] = _expand(self._index, probs)
            image = probs.gather(-1, gather)  # [B, H, r, N]
            if self._valid is not None:
                image = image * self._valid[:, None, None, :]
        if self.heads is not None:
            if self._head_index is None:
                self._head_index = torch.tensor(self.heads, device=image.device)
            image = image.index_select(1, self._head_index)
        image = image.transpose(1, 2) if self.per_head else image.mean(dim=1).unsqueeze(2)  # [B, r, H, N]
        if self._current is None:
            n_layers = len(self.layers) if self.per_layer else 1
            self._current = image.new_zeros(image.shape[0], image.shape[1], n_layers, *image.shape[2:])
        if self.per_layer:
            self._current[:, :, slot] = image
        else:
            self._current[:, :, 0] += image
        return probs

    def _flush(self) -> None:
        if self._current is not None:
            self._steps.append(self._current)
            self._current = None

    def maps(self) -> torch.Tensor:
        """``[B, R, L, H, N_max]`` float32 (CPU): all recorded rows, in call order (row b's
        columns from ``n_keys[b]`` on are zero)."""
        self._flush()
        if not self._steps:
            raise RuntimeError("nothing was recorded: did the model run its language layers?")
        maps = torch.cat(self._steps, dim=1).cpu()
        return maps if self.per_layer else maps / len(self.layers)


def pad_key_index(key_index) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row key positions → ``([B, N_max] int64 index, [B, N_max] bool validity or None)``.

    ``key_index`` is a ``[B, N]`` tensor or a list of ``[N_b]`` tensors. Padded slots point at
    position 0 and are marked invalid; validity is None when every row has the same count.
    """
    if isinstance(key_index, torch.Tensor):
        if key_index.dim() != 2:
            raise ValueError(f"key_index must be [B, N], got {tuple(key_index.shape)}")
        return key_index.long(), None
    rows = [torch.as_tensor(k, dtype=torch.long).reshape(-1) for k in key_index]
    if not rows:
        raise ValueError("key_index has no rows")
    counts = [len(r) for r in rows]
    if len(set(counts)) == 1:
        return torch.stack(rows), None
    index = torch.zeros(len(rows), max(counts), dtype=torch.long)
    valid = torch.zeros(len(rows), max(counts), dtype=torch.bool)
    for b, row in enumerate(rows):
        index[b, : len(row)] = row
        valid[b, : len(row)] = True
    return index, valid


def _expand(index: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` key positions → a gather index for ``[B, H, r, kv]`` probabilities (a view)."""
    return index[:, None, None, :].expand(*probs.shape[:3], -1)


def row_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    rows: slice,
    softcap: float | None = None,
    filled: int | None = None,
) -> torch.Tensor:
    """Attention probabilities of some query rows over all keys, in float32.

    Args:
        query: ``[B, H, q, D]``; key: ``[B, H_kv, kv, D]`` (before ``repeat_kv``; ``H`` must be a
            multiple of ``H_kv``, head h reading kv head ``h // (H / H_kv)``).
        attention_mask: ``[B, 1, q, kv]`` boolean (True = attend) or additive float, or None for
            plain causal attention with the queries at the last ``q`` of the ``filled`` keys.
        rows: which of the ``q`` query rows.
        filled: keys holding tokens (default all ``kv``); with a None mask, later keys (empty
            static-cache slots) are masked.

    Returns:
        ``[B, H, r, kv]`` float32 probabilities (rows sum to 1).
    """
    q = query[:, :, rows]
    batch, heads, n_rows, dim = q.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    # one batched matrix product per kv head (its query heads' rows stacked): few ops on the
    # decode hot path, where every op's dispatch counts
    q3 = q.reshape(batch * kv_heads, (heads // kv_heads) * n_rows, dim).float()
    k3 = key.reshape(batch * kv_heads, kv_len, key.shape[3]).float()
    logits = torch.bmm(q3, k3.transpose(1, 2)).mul_(dim**-0.5 if scaling is None else scaling)
    logits = logits.view(batch, heads, n_rows, kv_len)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    lowest = torch.finfo(torch.float32).min
    q_len = query.shape[2]
    filled = kv_len if filled is None else filled
    if attention_mask is None:
        if rows.start >= q_len - 1 and filled == kv_len:  # the last row sees every key
            return torch.softmax(logits, dim=-1)
        positions = torch.arange(q_len, device=q.device)[rows] + (filled - q_len)
        allowed = torch.arange(kv_len, device=q.device)[None, :] <= positions[:, None]
        logits = logits.masked_fill(~allowed, lowest)
    elif attention_mask.dtype == torch.bool:
        logits = logits.masked_fill(~attention_mask[:, :, rows, :kv_len], lowest)
    else:
        logits = logits + attention_mask[:, :, rows, :kv_len].float()
    return torch.softmax(logits, dim=-1)


def attention_output(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The attention output from probabilities, as eager attention computes it.

    Args:
        probs: ``[B, H, q, kv]`` float32 probabilities; value: ``[B, H_kv, kv, D]`` (before
            ``repeat_kv``; head h reads kv head ``h // (H / H_kv)``).

    Returns:
        ``[B, q, H, D]`` in ``value``'s dtype: ``probs`` cast to that dtype, times the values
        (eager's order of operations), laid out as attention functions return it.
    """
    batch, heads, q_len, kv_len = probs.shape
    kv_heads = value.shape[1]
    grouped = probs.to(value.dtype).view(batch * kv_heads, (heads // kv_heads) * q_len, kv_len)
    out = torch.bmm(grouped, value.reshape(batch * kv_heads, kv_len, value.shape[3]))  # [B·H_kv, g·q, D]
    return out.view(batch, heads, q_len, -1).transpose(1, 2).contiguous()


def capturing(wrapped: Callable) -> Callable:
    """An ``AttentionInterface`` function: ``wrapped``'s output, plus recording when a Recorder
    is active.

    When every query row of the call is recorded (each decode step of generation), the
    probabilities are computed once, in float32, and serve both the record and the layer's output
    (:func:`attention_output`, eager's math); otherwise (prefill, teacher forcing) the output
    comes from ``wrapped`` and only the recorded rows are recomputed. Arguments that change the
    math beyond q, k, v, mask, scaling and soft-capping (``position_bias``, attention-sink
    logits ``s_aux`` / ``sinks``) also leave the output to ``wrapped``.
    """

    def capture_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                                  **kwargs):
        recorder = _ACTIVE.get()
        if recorder is not None and recorder.wants(getattr(module, "layer_idx", None)):
            probs = recorder.record(module, query, key, attention_mask, scaling, kwargs.get("softcap"))
            if (probs.shape[2] == query.shape[2] and (dropout == 0.0 or not module.training)
                    and kwargs.get("position_bias") is None and kwargs.get("s_aux") is None
                    and kwargs.get("sinks") is None):
                return attention_output(probs, value), None
        return wrapped(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return capture_attention_forward


def register(wrapped: str = WRAPPED, function: Callable | None = None) -> str:
    """Register the capture function around the attention implementation ``wrapped`` (looked up
    in transformers' registry, ``"sdpa"`` by default, or the given ``function``) and its mask
    function; idempotent.

    Returns the registered name: :data:`ATTENTION_NAME` for sdpa, ``"attendseg_<wrapped>"``
    otherwise (``"attendseg_eager_<module>"`` for a modeling module's own eager function).
    """
    name = ATTENTION_NAME if wrapped == WRAPPED else f"{ATTENTION_NAME}_{wrapped}"
    if function is not None:
        name = f"{name}_{function.__module__}"
    if name not in AttentionInterface._global_mapping:
        function = function or AttentionInterface._global_mapping.get(wrapped)
        if function is None:
            raise ValueError(f"unknown attention implementation {wrapped!r}")
        AttentionInterface.register(name, capturing(function))
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[wrapped])
    return name


def enable(language_model: torch.nn.Module, wrapped: str | None = None) -> None:
    """Route a loaded language model's attention through the capture function.

    ``language_model`` is the text decoder (a ``PreTrainedModel`` such as ``LlamaModel``), so
    vision towers keep their own attention implementation. ``wrapped`` defaults to sdpa; a
    decoder that cannot run sdpa (Gemma 2's logit soft-capping: PaliGemma 2) keeps its modeling
    module's own ``eager_attention_forward``.
    """
    if wrapped is None and not getattr(language_model, "_supports_sdpa", True):
        eager = sys.modules[type(language_model).__module__].eager_attention_forward
        language_model.set_attn_implementation(register("eager", eager))
        return
    language_model.set_attn_implementation(register(wrapped or WRAPPED))


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Activate ``recorder`` for the model calls inside the block."""
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)
