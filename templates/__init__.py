"""The shipped Jinja2 templates of the gateway's mail (installed as the package gateway.templates)."""
