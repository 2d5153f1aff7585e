"""Durable persistence for long-running AI coding agents that work on a token budget."""

__version__ = "0.1.0"
