"""attendseg: training-free pixel grounding from the attention of large multimodal models.

Public API:

* :func:`load` → :class:`Attender` (``attend``, ``attend_text``) → :class:`Trace`
* :class:`Grounder` (``from_pretrained``, ``ground``, ``ground_text``) → :class:`Grounding`
"""

from .attender import Attender, load
from .errors import AttendsegError
from .grounder import DEFAULT_PROMPT, Grounder, Settings
from .phrases import Phrase, make_phrase_extractor
from .refiners import make_refiner
from .results import GroundedPhrase, Grounding
from .trace import Trace
from .views import View

__all__ = [
    "AttendsegError", "Attender", "DEFAULT_PROMPT", "GroundedPhrase", "Grounder", "Grounding",
    "Phrase", "Settings", "Trace", "View", "load", "make_phrase_extractor", "make_refiner",
]
__version__ = "0.1.0"
