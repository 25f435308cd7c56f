"""Pulse's Python SDK: ``from pulse.client import Pulse``. See docs/clients.md."""

from pulse.client.sdk import AsyncPulse, DeliveryError, Pulse

__all__ = ["AsyncPulse", "DeliveryError", "Pulse"]
