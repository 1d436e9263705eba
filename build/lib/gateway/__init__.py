"""The register disclosure gateway: HMCI's secure request-and-disclosure mail gateway."""

__version__ = "0.1.0"
