"""Adapters to the providers' SDKs (optional extras)."""
