"""Access control: scoped, revocable API tokens stored hashed (spec 11).

:mod:`palyra.access.tokens` is the pure core (format, digest, scopes, checks),
:mod:`palyra.access.store` the table's ops and reads, :mod:`palyra.access.registry`
``rt.api_tokens`` (cache, revocation, last-use tracking). Only the pure core is
imported here: the journal's migrations import :mod:`palyra.access.schema`.
"""

from palyra.access.tokens import (
    CHAT_CREATE,
    DEFAULT_RATE_LIMIT_PER_MINUTE,
    MODELS_READ,
    SCOPE_GROUPS,
    SCOPES,
    ApiToken,
)

__all__ = ["CHAT_CREATE", "DEFAULT_RATE_LIMIT_PER_MINUTE", "MODELS_READ", "SCOPE_GROUPS",
           "SCOPES", "ApiToken"]
