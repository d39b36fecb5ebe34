"""Helpers under Ray's `ray.util` names."""
