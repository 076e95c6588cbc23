"""Runnable examples of surefoot in small but real applications."""

from __future__ import annotations
