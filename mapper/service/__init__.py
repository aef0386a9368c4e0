"""The HTTP service around the engine: the Flask app, logging, and what serving needs."""
