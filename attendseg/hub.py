"""Hub ids without a hub: fail in seconds with what is true, or use the local cache.

Every piece attendseg loads by name (the model, SAM, DiffLMM's base LLM, Stable Diffusion and
CLIP) goes through :func:`resolve` first. A local folder is returned as it is. For a hub id:

- hub reachable (a short probe of ``huggingface_hub``'s endpoint, ``HF_ENDPOINT``, answers):
  the id is returned unchanged and transformers downloads or updates as it always does;
- ``HF_HUB_OFFLINE=1``, or no answer from the hub within :data:`PROBE_SECONDS`: the cached
  snapshot folder is returned when the repo's key file is in the local cache (so nothing waits
  on network retries), else :class:`AttendsegError` with one line naming the piece and the fix.

Without this, an unreachable hub costs about a minute of retry messages per file before
transformers gives up.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .errors import AttendsegError

__all__ = ["PROBE_SECONDS", "hub_reachable", "looks_local", "resolve"]

logger = logging.getLogger(__name__)

#: Longest wait for the hub's answer before it counts as unreachable.
PROBE_SECONDS = 3.0
#: How long a probe's answer is reused (per endpoint).
PROBE_TTL = 60.0
_probes: dict[str, tuple[float, bool]] = {}


def looks_local(source: str) -> bool:
    """Whether ``source`` names a local path rather than a hub id (``org/name`` or ``name``):
    it exists, starts with ``.``, ``/`` or ``~``, or has more than one ``/``."""
    source = str(source)
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") > 1


def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether the hub endpoint answers an HTTP request (any status) within :data:`PROBE_SECONDS`.

    Uses ``huggingface_hub``'s own HTTP session (its proxies and headers). The answer is reused
    for :data:`PROBE_TTL` seconds. Always False in offline mode.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    endpoint = endpoint or constants.ENDPOINT
    now = time.monotonic()
    cached = _probes.get(endpoint)
    if cached is not None and now - cached[0] < PROBE_TTL:
        return cached[1]
    answer: list[bool] = []

    def probe():
        from huggingface_hub.utils import get_session

        try:
            get_session().head(endpoint, timeout=PROBE_SECONDS, follow_redirects=False)
            answer.append(True)
        except Exception:  # no connection, timeout, proxy refusal: not reachable
            answer.append(False)

    # a thread bounds the wait even where name resolution ignores the timeout
    thread = threading.Thread(target=probe, name="attendseg-hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS + 0.5)
    reachable = bool(answer and answer[0])
    _probes[endpoint] = (now, reachable)
    return reachable


def _cached_snapshot(repo_id: str, filename: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (revision ``main``) holding ``filename``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # a malformed repo id
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found)
    for _ in Path(filename).parts:
        folder = folder.parent
    return folder


def unavailable(what: str, source: str, reason: str | None = None) -> AttendsegError:
    """The one-line error for a hub id that is neither local, cached, nor downloadable now."""
    from huggingface_hub import constants

    if reason is None:
        reason = ("HF_HUB_OFFLINE=1 is set" if constants.is_offline_mode()
                  else f"no answer from {constants.ENDPOINT}")
    return AttendsegError(
        f"{what} {source!r} is neither a local folder nor in the local cache ({constants.HF_HUB_CACHE}), "
        f"and the hub cannot be reached ({reason}): pass a local folder, or download it where the hub "
        "is reachable and run with HF_HUB_OFFLINE=1 to use the cache"
    )


def resolve(source: str | Path, what: str, filename: str = "config.json") -> str:
    """What to load ``source`` from: itself, or its cached snapshot folder when the hub is out.

    Args:
        source: a local folder or a hub id.
        what: the piece, for the error message (``"model"``, ``"SAM"``, ``"SD"``, ``"CLIP"``,
            ``"base"``).
        filename: a file the repo must have (``"unet/config.json"`` for Stable Diffusion); its
            presence in the cache means the repo is cached.

    Returns:
        ``source`` unchanged for a local path, or for a hub id while the hub answers; else the
        cached snapshot folder.

    Raises:
        AttendsegError: a hub id that is not cached while the hub cannot be reached or
            ``HF_HUB_OFFLINE=1`` is set (within :data:`PROBE_SECONDS` seconds).
    """
    source = str(source)
    if looks_local(source):
        return source
    from huggingface_hub import constants

    if not constants.is_offline_mode() and hub_reachable():
        return source
    snapshot = _cached_snapshot(source, filename)
    if snapshot is None:
        raise unavailable(what, source)
    if not constants.is_offline_mode():
        logger.warning("the hub cannot be reached: loading %s %r from the cache (%s)", what, source, snapshot)
    return str(snapshot)
