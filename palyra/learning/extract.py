"""Candidate extraction from one finished run (spec 6).

Rules (confidences in basis points; a candidate below its kind's review threshold is
``suppressed`` with risk ``low_confidence``):

* **Preferences** (user text): "I prefer …", "I like …", "please use …", "my preference
  is …" ⇒ key ``interaction.style``; "always …"/"never …" as an instruction ("please
  always …", "you should never …", a sentence starting with always/never) ⇒
  ``workflow.rule``. Confidence 8300 (queued at ≥ ``preference_review_min_confidence_bps``
  = 8000). Scope ``profile/<principal>``.
* **Durable facts** (user text): explicit "remember (that) …", "note that …", "keep in
  mind …", "for future reference …" ⇒ 9200 (eligible for auto-write at ≥
  ``durable_fact_auto_write_threshold_bps`` = 9000); self/team statements ("my name is …",
  "I work at …", "our project uses …") ⇒ 8500. From the reply, only the assistant's own
  acknowledgement "I'll remember that …" ⇒ 7800 (never auto-written). Hedges ("I think",
  "maybe", "probably", …) cost 1500. Review threshold ``durable_fact_review_min_
  confidence_bps`` = 7500. A fact that reads like a preference (prefer/always/never/avoid/
  style/tone) becomes a preference, as upstream does for compaction "decisions". Target
  path ``MEMORY.md``. Scope ``workspace/<session_id>``.
* **Procedures**: the run's successful, untainted tool sequence (≥ 2 steps) seen in ≥
  ``procedure_min_occurrences`` runs (this one included) ⇒ 8800 (queued at ≥ 8500).

Every candidate text is scanned: prompt-injection phrasing ⇒ risk ``poisoned``, secrets
⇒ ``sensitive``; both are ``suppressed`` and never auto-applied. Questions are ignored.
Dedupe key ``<kind>:<sha256(owner|scope|normalised content)>``; duplicates within a run
keep the most confident; at most ``max_candidates_per_run`` are returned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from palyra.ids import new_ulid
from palyra.learning import candidates as c
from palyra.learning.candidates import Candidate
from palyra.learning.config import DEFAULT_CONFIG, LearningConfig

PREFERENCE_BPS = 8300
EXPLICIT_FACT_BPS = 9200
STATEMENT_FACT_BPS = 8500
REPLY_FACT_BPS = 7800
HEDGE_PENALTY_BPS = 1500
PROCEDURE_BPS = 8800
MIN_PROCEDURE_STEPS = 2
DEFAULT_TARGET_PATH = "MEMORY.md"
MAX_SUMMARY_CHARS = 280


@dataclasses.dataclass(frozen=True, slots=True)
class RunLearningInput:
    """What reflection sees of a run: its user messages, reply and tool sequence.

    ``prior_sequence_occurrences`` counts *other* runs that completed the same tool
    sequence successfully and untainted.
    """

    run_id: str
    session_id: str
    owner_principal: str
    device_id: str
    user_texts: Sequence[str]
    reply_text: str = ""
    channel: str | None = None
    run_succeeded: bool = True
    tool_sequence: Sequence[str] = ()
    tool_sequence_tainted: bool = False
    prior_sequence_occurrences: int = 0
    source_task_id: str | None = None


# --------------------------------------------------------------------------- text rules

_I = re.IGNORECASE
_STYLE = re.compile(
    r"\bI\s+(?:really\s+|usually\s+|generally\s+|also\s+)?(?:prefer|like)\b"
    r"|\bI(?:'d|\s+would)\s+prefer\b|^prefer\b|\bplease\s+use\b|\bmy\s+preference\s+is\b", _I)
_RULE = re.compile(
    r"^(?:(?:please|also|and|so|from\s+now\s+on|going\s+forward|in\s+(?:the\s+)?future)"
    r"[,\s]+)*(?:always|never)\b"
    r"|\b(?:please|you\s+should|you\s+must|make\s+sure\s+to|be\s+sure\s+to)\s+(?:always|never)\b",
    _I)
_REMEMBER = re.compile(
    r"^(?:please\s+)?(?:remember|note|keep\s+in\s+mind|for\s+future\s+reference)"
    r"(?:\s*[:,]\s*|\s+that\s+|\s+)(?P<fact>\S.*)$", _I)
_STATEMENT = re.compile(
    r"\bmy\s+(?:name|email|e-mail|timezone|time\s+zone|role|job\s+title|team|company|employer|"
    r"birthday|pronouns|location|home\s+town)\s+(?:is|are)\b"
    r"|\bI\s+(?:work|live)\s+(?:at|for|in|on|as)\b"
    r"|\bour\s+(?:project|team|repo|repository|codebase|stack|company|product|deadline|release)"
    r"\b.*\b(?:is|are|uses|runs|targets|ships)\b", _I)
_REPLY_REMEMBER = re.compile(r"\bI(?:'ll|\s+will)\s+remember\s+(?:that\s+)?(?P<fact>\S.*)$", _I)
_HEDGE = re.compile(
    r"\b(?:I\s+think|I\s+guess|I\s+believe|maybe|perhaps|probably|might|not\s+sure)\b", _I)
_HEDGE_PREFIX = re.compile(
    r"^(?:(?:I\s+think|I\s+guess|I\s+believe|maybe|perhaps|probably)(?:\s+that)?[,\s]+)+", _I)
_PREFERENCE_WORDS = re.compile(r"\b(?:prefer|prefers|always|never|avoid|style|tone)\b", _I)
_RULE_WORDS = re.compile(r"\b(?:always|never)\b", _I)

_POISON = re.compile(
    r"\b(?:ignore|disregard|forget)\s+(?:all\s+|any\s+|the\s+|your\s+)*(?:previous|prior|above|"
    r"earlier)\s+(?:instructions|rules|messages|prompts?)\b"
    r"|\bsystem\s+prompt\b|\byou\s+are\s+now\b|\bjailbreak|\bdeveloper\s+mode\b"
    r"|\boverride\s+(?:your|the|all)\s+(?:rules|instructions|polic(?:y|ies)|safety)\b"
    r"|\bexfiltrate\b|<\s*/?\s*(?:system|instructions?)\s*>", _I)
_SECRET = re.compile(
    r"\b(?:password|passwd|passphrase|api[\s_-]?key|secret|access[\s_-]?token|auth[\s_-]?token|"
    r"private\s+key|credit\s+card|ssn|social\s+security)\b"
    r"|\bsk-[A-Za-z0-9_-]{8,}|\bbearer\s+\S{8,}|\b(?:\d[ -]?){13,19}\b|<redacted>", _I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text or "") if s.strip()]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".!;: ")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SUMMARY_CHARS else text[: MAX_SUMMARY_CHARS - 1] + "…"


def injection_suspected(text: str) -> bool:
    """The prompt-injection scan used before anything is written to memory."""
    return _POISON.search(text) is not None


def looks_sensitive(text: str) -> bool:
    return _SECRET.search(text) is not None


def risk_of(text: str) -> str:
    if injection_suspected(text):
        return c.RISK_POISONED
    if looks_sensitive(text):
        return c.RISK_SENSITIVE
    return c.RISK_LOW


def dedupe_key(kind: str, owner: str, scope_kind: str, scope_id: str, content: str) -> str:
    raw = f"{owner}|{scope_kind}|{scope_id}|{_normalise(content)}"
    return f"{kind}:{hashlib.sha256(raw.encode()).hexdigest()}"


def review_threshold_bps(kind: str, config: LearningConfig = DEFAULT_CONFIG) -> int:
    return {
        c.DURABLE_FACT: config.durable_fact_review_min_confidence_bps,
        c.PREFERENCE: config.preference_review_min_confidence_bps,
        c.PROCEDURE: config.procedure_review_min_confidence_bps,
    }.get(kind, config.durable_fact_review_min_confidence_bps)


# --------------------------------------------------------------------------- drafts


@dataclasses.dataclass(frozen=True, slots=True)
class _Draft:
    kind: str
    confidence_bps: int
    text: str  # scanned, summarised and (normalised) deduped
    title: str
    content: dict[str, Any]
    source: str
    rule: str
    excerpt: str


def _preference_key(sentence: str) -> str | None:
    if _STYLE.search(sentence):
        return c.INTERACTION_STYLE
    if _RULE.search(sentence):
        return c.WORKFLOW_RULE
    return None


def _preference(sentence: str, key: str, rule: str) -> _Draft:
    value = sentence.rstrip(".! ")
    return _Draft(c.PREFERENCE, PREFERENCE_BPS, value, f"Preference ({key})",
                  {"key": key, "value": value}, "user_message", rule, sentence)


def _fact(fact: str, bps_value: int, source: str, rule: str, sentence: str) -> _Draft:
    fact = _HEDGE_PREFIX.sub("", fact.strip()).rstrip(".! ")
    if _PREFERENCE_WORDS.search(fact):
        key = c.WORKFLOW_RULE if _RULE_WORDS.search(fact) else c.INTERACTION_STYLE
        draft = _preference(fact, key, f"{rule}_as_preference")
        return dataclasses.replace(draft, source=source, excerpt=sentence)
    if _HEDGE.search(sentence):
        bps_value -= HEDGE_PENALTY_BPS
    title = f"Fact: {fact[:60]}"
    return _Draft(c.DURABLE_FACT, bps_value, fact, title, {"fact": fact, "source": source},
                  source, rule, sentence)


def _user_drafts(text: str) -> list[_Draft]:
    out: list[_Draft] = []
    for sentence in _sentences(text):
        if sentence.endswith("?"):
            continue
        remember = _REMEMBER.match(sentence)
        if remember:
            out.append(_fact(remember.group("fact"), EXPLICIT_FACT_BPS, "user_message",
                             "explicit_remember", sentence))
            continue
        key = _preference_key(sentence)
        if key is not None:
            out.append(_preference(sentence, key, "stated_preference"))
            continue
        if _STATEMENT.search(sentence):
            out.append(_fact(sentence, STATEMENT_FACT_BPS, "user_message", "self_statement",
                             sentence))
    return out


def _reply_drafts(text: str) -> list[_Draft]:
    out: list[_Draft] = []
    for sentence in _sentences(text):
        found = _REPLY_REMEMBER.search(sentence)
        if found and not sentence.endswith("?"):
            out.append(_fact(found.group("fact"), REPLY_FACT_BPS, "assistant_reply",
                             "acknowledged_memory", sentence))
    return out


def _procedure_draft(run: RunLearningInput, config: LearningConfig) -> _Draft | None:
    steps = [s for s in run.tool_sequence if s]
    occurrences = run.prior_sequence_occurrences + 1
    if (not run.run_succeeded or run.tool_sequence_tainted or len(steps) < MIN_PROCEDURE_STEPS
            or occurrences < config.procedure_min_occurrences):
        return None
    text = " -> ".join(steps)
    return _Draft(c.PROCEDURE, PROCEDURE_BPS, text, f"Procedure: {text}"[:120],
                  {"steps": steps, "occurrences": occurrences}, "tool_sequence",
                  "repeated_tool_sequence", text)


# --------------------------------------------------------------------------- public


def extract_candidates(
    run: RunLearningInput,
    *,
    now_ms: int,
    config: LearningConfig = DEFAULT_CONFIG,
) -> list[Candidate]:
    """The candidates of one run, in the order they were found."""
    drafts = [d for text in run.user_texts for d in _user_drafts(text)]
    drafts += _reply_drafts(run.reply_text)
    procedure = _procedure_draft(run, config)
    if procedure is not None:
        drafts.append(procedure)

    chosen: dict[str, Candidate] = {}
    for draft in drafts:
        candidate = _candidate(run, draft, now_ms, config)
        previous = chosen.get(candidate.dedupe_key)
        if previous is None or candidate.confidence > previous.confidence:
            chosen[candidate.dedupe_key] = candidate
    return list(chosen.values())[: config.max_candidates_per_run]


def _candidate(run: RunLearningInput, draft: _Draft, now_ms: int,
               config: LearningConfig) -> Candidate:
    if draft.kind == c.PREFERENCE:
        scope_kind, scope_id = c.SCOPE_PROFILE, run.owner_principal
    else:
        scope_kind, scope_id = c.SCOPE_WORKSPACE, run.session_id
    confidence_bps = max(0, min(10_000, draft.confidence_bps))
    risk = risk_of(draft.excerpt + "\n" + draft.text)
    if risk == c.RISK_LOW and confidence_bps < review_threshold_bps(draft.kind, config):
        risk = c.RISK_LOW_CONFIDENCE
    status = c.QUEUED if risk == c.RISK_LOW else c.SUPPRESSED
    disposition = {
        c.RISK_POISONED: "blocked_poisoned",
        c.RISK_SENSITIVE: "blocked_sensitive",
        c.RISK_LOW_CONFIDENCE: "below_review_threshold",
    }.get(risk, "accepted_for_review")
    blocked = risk in c.BLOCKING_RISKS
    summary = f"{draft.kind} withheld ({risk})" if blocked else _clip(draft.text)
    return Candidate(
        candidate_id=new_ulid(now_ms),
        candidate_kind=draft.kind,
        session_id=run.session_id,
        owner_principal=run.owner_principal,
        device_id=run.device_id,
        channel=run.channel,
        run_id=run.run_id,
        scope_kind=scope_kind,
        scope_id=scope_id,
        status=status,
        confidence=confidence_bps / 10_000,
        risk_level=risk,
        title=f"{draft.kind} ({risk})" if blocked else draft.title,
        summary=summary,
        target_path=DEFAULT_TARGET_PATH if draft.kind == c.DURABLE_FACT else None,
        dedupe_key=dedupe_key(draft.kind, run.owner_principal, scope_kind, scope_id, draft.text),
        content={"withheld": risk} if blocked else draft.content,
        provenance={
            "run_id": run.run_id, "session_id": run.session_id, "source": draft.source,
            "rule": draft.rule, "disposition": disposition,
            "excerpt": None if blocked else _clip(draft.excerpt),
        },
        source_task_id=run.source_task_id,
        created_at_unix_ms=now_ms,
        updated_at_unix_ms=now_ms,
    )
