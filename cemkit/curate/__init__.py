"""The curate stage (``cemkit curate``): raw EM images/volumes -> deduplicated, filtered corpus.

Modules, in pipeline order: :mod:`~cemkit.curate.sources` (RAW folder / sources YAML),
:mod:`~cemkit.curate.sections` (cross-sections, isotropy), :mod:`~cemkit.curate.patches` (tiling
rule), :mod:`~cemkit.curate.dhash` (batched dHash, bit-exact with imagehash),
:mod:`~cemkit.curate.dedup` (seeded leader clustering per source), :mod:`~cemkit.curate.filtering`
(heuristic scores), :mod:`~cemkit.curate.classifier` (trainable patch classifier),
:mod:`~cemkit.curate.source_work` (one source -> ``.work/``), :mod:`~cemkit.curate.assembly`
(filter, shards, manifest, metadata, export; the on-disk format is :mod:`cemkit.io.corpus`),
:mod:`~cemkit.curate.report` (``report.html``), :mod:`~cemkit.curate.pipeline`
(workers, resume, ``curate()``), :mod:`~cemkit.curate.command` (Hydra entry point).
"""
