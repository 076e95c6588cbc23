"""A legacy payments API without idempotency: the upstream that ``surefoot serve`` protects."""

from __future__ import annotations
