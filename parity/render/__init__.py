"""Renderers: a report in, text or bytes out. No computation happens here."""
