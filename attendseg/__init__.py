"""attendseg: training-free pixel grounding from the attention of large multimodal models."""

from .errors import AttendsegError
from .trace import Trace
from .views import View

__all__ = ["AttendsegError", "Trace", "View"]
__version__ = "0.1.0"

from .attender import Attender, load  # noqa: E402

__all__ += ["Attender", "load"]
