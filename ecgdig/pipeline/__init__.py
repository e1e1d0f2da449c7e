"""Digitization pipeline stages."""
