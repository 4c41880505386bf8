"""Learning / reflection core (spec 6): sampling, candidate extraction, review.

Pure: the reflection worker (wired by an actor) schedules with
:mod:`palyra.learning.sampling`, extracts with :mod:`palyra.learning.extract`, reviews with
:mod:`palyra.learning.review` and persists with :mod:`palyra.learning.store`.
"""
