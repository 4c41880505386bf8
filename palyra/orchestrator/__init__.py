"""The orchestrator's pure core: run states, session resolution, run/tape/approval storage."""
