"""One module per stage, each exposing ``run(cfg, io) -> dict``.

A stage reads its inputs and writes its outputs only through ``io``
(``pipeline.catalogue.StageIO``: the artifacts it declared in the catalogue), never
imports another stage module, and returns what its manifest should record beyond the
common fields. The stage table itself is ``pipeline.catalogue.STAGES``.
"""
