"""Self-healing core (spec 5): work heartbeats, incidents, remediation plans, crash
recovery. Pure and persisted (upstream kept all of it in memory: quirk 13.9)."""
