"""A tiny Django shop protected by surefoot (``settings.SUREFOOT``): see README.md."""

from __future__ import annotations
