"""Gin parsing and the one list of configurable modules."""
