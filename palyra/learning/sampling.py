"""Post-run reflection scheduling (spec 6): sampling, cooldown, the reflection task.

Sampling fixes quirk 13.5: the bucket is ``hash % 100`` (uniform over 0..99), so
``sampling_percent=100`` always reflects and ``p`` reflects on ~p % of runs (upstream
compared the first hash byte, 0..255, with the percent: 100 % sampled ~39 %).
Scheduling belongs in run finalisation, once the run is ``done`` (quirk 13.6):
:func:`plan_reflection` refuses any other state.
"""

from __future__ import annotations

import hashlib

from palyra.background import tasks as bg
from palyra.errors import InvalidInput
from palyra.ids import new_ulid
from palyra.learning.config import DEFAULT_CONFIG, LearningConfig
from palyra.validation import is_int

TRIGGER_POLICY = "post_run_learning_v1"
NOT_BEFORE_DELAY_MS = 250
EXPIRES_AFTER_MS = 30 * 60 * 1000
REFLECTION_INPUT = "Post-run reflection"


def sample_key(run_id: str, principal: str | None = None, device_id: str | None = None,
               channel: str | None = None) -> str:
    """Upstream's key ``principal:device:channel:run_id``; just the run id without identity."""
    if principal is None:
        return run_id
    return f"{principal}:{device_id or ''}:{channel or ''}:{run_id}"


def sample_bucket(key: str) -> int:
    """0..99, uniform: the first 8 bytes of SHA-256(key) modulo 100."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def should_reflect(
    run_id: str,
    sampling_percent: int,
    last_reflection_ms: int | None,
    cooldown_ms: int,
    now_ms: int,
    *,
    key: str | None = None,
) -> bool:
    """Whether this run is sampled and outside the cooldown of the last reflection.

    ``key`` overrides the sample key (see :func:`sample_key`); default: the run id.
    """
    if not is_int(sampling_percent) or not 0 <= sampling_percent <= 100:
        raise InvalidInput("sampling_percent must be an integer 0..100",
                           details={"field": "sampling_percent"})
    if sampling_percent == 0:
        return False
    if last_reflection_ms is not None and now_ms - last_reflection_ms < cooldown_ms:
        return False
    return sample_bucket(key if key is not None else run_id) < sampling_percent


def reflection_task(
    *,
    run_id: str,
    session_id: str,
    owner_principal: str,
    device_id: str,
    channel: str | None,
    now_ms: int,
    config: LearningConfig = DEFAULT_CONFIG,
    task_id: str | None = None,
) -> bg.BackgroundTask:
    """The ``post_run_reflection`` task of spec 6 (priority 25, one attempt, due in 250 ms,
    expiring after 30 min)."""
    return bg.BackgroundTask(
        task_id=task_id or new_ulid(now_ms),
        task_kind=bg.POST_RUN_REFLECTION,
        session_id=session_id,
        owner_principal=owner_principal,
        device_id=device_id,
        channel=channel,
        created_at_unix_ms=now_ms,
        updated_at_unix_ms=now_ms,
        state=bg.QUEUED,
        priority=bg.REFLECTION_PRIORITY,
        max_attempts=1,
        budget_tokens=config.budget_tokens,
        parent_run_id=run_id,
        not_before_unix_ms=now_ms + NOT_BEFORE_DELAY_MS,
        expires_at_unix_ms=now_ms + EXPIRES_AFTER_MS,
        input_text=REFLECTION_INPUT,
        payload={
            "trigger_policy": TRIGGER_POLICY,
            "sampling_percent": config.sampling_percent,
            "cooldown_ms": config.cooldown_ms,
            "run_id": run_id,
        },
    )


def plan_reflection(
    *,
    run_id: str,
    run_state: str,
    session_id: str,
    owner_principal: str,
    device_id: str,
    channel: str | None,
    now_ms: int,
    already_scheduled: bool,
    last_reflection_ms: int | None,
    config: LearningConfig = DEFAULT_CONFIG,
) -> bg.BackgroundTask | None:
    """The reflection task to insert for a finished run, or None to skip.

    Skips unless learning is enabled, the run is ``done``, no reflection exists for it
    (``already_scheduled``, see ``TaskQueries.reflection_for_run``), the identity+session
    is out of cooldown (``TaskQueries.last_reflection_ms``) and the run is sampled.
    """
    if not config.enabled or run_state != "done" or already_scheduled:
        return None
    key = sample_key(run_id, owner_principal, device_id, channel)
    if not should_reflect(run_id, config.sampling_percent, last_reflection_ms,
                          config.cooldown_ms, now_ms, key=key):
        return None
    return reflection_task(run_id=run_id, session_id=session_id, owner_principal=owner_principal,
                           device_id=device_id, channel=channel, now_ms=now_ms, config=config)
