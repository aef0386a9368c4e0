"""The integrator's tools: the ``mapper`` command and what it drives."""
