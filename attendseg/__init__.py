"""attendseg: training-free pixel grounding from the attention of large multimodal models.

Public API (imported lazily, so ``import attendseg`` and the CLI's ``--help`` are instant):

* :func:`load` → :class:`Attender` (``attend``, ``attend_text``) → :class:`Trace`
* :class:`Grounder` (``from_pretrained``, ``ground``, ``ground_text``) → :class:`Grounding`
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AttendsegError": "errors",
    "Attender": "attender",
    "BUNDLED_MODELS": "bundled",
    "load": "attender",
    "DEFAULT_PROMPT": "grounder",
    "Grounder": "grounder",
    "Settings": "grounder",
    "Phrase": "phrases",
    "make_phrase_extractor": "phrases",
    "make_refiner": "refiners",
    "GroundedPhrase": "results",
    "Grounding": "results",
    "Trace": "trace",
    "View": "views",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attendseg' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
