"""Background task queue core (spec 4): records, state machine, due ordering, storage ops.

Pure: nothing here runs a loop or a thread. An actor polls ``TaskQueries``, asks
:func:`palyra.background.tasks.poll_step` what to do with each task and writes the result
with the ops of :mod:`palyra.background.store`.
"""
