"""Reusable test helpers (local fake servers, fixtures)."""
