"""The studies: models trained on part of a labelled catalog, scored on the held-out songs.

- :mod:`recsys.studies.evaluate`         `recsys evaluate`: every vector and baseline on a split by song
- :mod:`recsys.studies.pair_policies`    `recsys experiment pair-policies`: one timbre encoder per pair policy
- :mod:`recsys.studies.melody_variants`  `recsys experiment melody-variants`: TCAE variants beside
  learning-free melody vectors
- :mod:`recsys.studies.catalog`          labelled songs from a manifest or the catalog, and the held-out split
- :mod:`recsys.studies.trainers`         the trainer interface the studies call (tests hand in tiny ones)

Metrics are the plain functions of recsys.evaluation; nothing here prints.
"""
