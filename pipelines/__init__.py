"""micromoment: predict the micro-moment intent of sessions and feed touchpoint optimisation."""

__version__ = "0.1.0"
