"""Benchmark evaluations: shared run machinery, and one module per benchmark family.

What every benchmark reuses (import from here):

* :class:`SampleLog` (:mod:`.records`): the per-sample JSONL file of a run. Its first line
  records the run's settings; each later line is one finished sample (``{"id": ..., ...}``),
  appended atomically (one ``write`` of a whole line on an ``O_APPEND`` file, then ``fsync``).
  Reopening skips finished ids (resume); reopening with other settings is refused with an
  :class:`~attendseg.errors.AttendsegError` (start a new file or pass ``overwrite=True``).
* :func:`run_groups` (:mod:`.loop`): the common loop: samples come in groups that share
  expensive work (an image's encoding), done ids are skipped, ``limit`` caps the samples of this
  run, a progress bar counts samples/s, a missing input skips (and counts) its samples.
* :func:`format_table` / :func:`to_json` (:mod:`.report`): a markdown table of figures, and
  plain JSON (NaN → null) for ``--json``.
* Metric functions live in :mod:`attendseg.metrics` (IoU, cIoU / gIoU, box Acc@0.5, GCG).
* Grounding given texts: :meth:`attendseg.attender.Attender.attend_texts` teacher-forces many
  texts on one image from one encoding of image + prompt (equal to ``attend_text`` per text);
  :func:`.refcoco.expression_tokens` picks the tokens of a character span (its head noun, or all).
* Test data: :mod:`attendseg.shapes.export` writes shapes-world scenes in a benchmark's layout
  (one exporter per format in ``EXPORTERS``; ``attendseg shapes export FORMAT DIR``).

Benchmarks: :mod:`.refcoco` (RefCOCO / RefCOCO+ / RefCOCOg and JSONL manifests;
``attendseg eval refcoco``) with its data readers in :mod:`.refer`; :mod:`.gcg` (GLaMM's
GranD-f grounded conversation generation, ``attendseg eval gcg``) with GLaMM's BERT text gate
in :mod:`.textsim`; :mod:`.png` (Panoptic Narrative Grounding, ``attendseg eval png``).
:mod:`.baselines`: the untrained-model and random-point baselines of the gcg and png commands.
"""

from .loop import RunStats, SkipGroup, run_groups
from .records import SampleLog
from .report import format_table, to_json

__all__ = ["SampleLog", "RunStats", "SkipGroup", "run_groups", "format_table", "to_json"]
