"""Turning records and events into bytes and back: type serializers, record framing, events."""
