"""stage-bridge: STAGE stem generation (drums, bass) for musicians, inside the DAW."""

__version__ = "0.1.0"
