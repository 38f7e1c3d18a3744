"""The ops console: server-rendered pages at `/ui` (Jinja2 templates, htmx vendored in
`static/`) over the gateway's own services, behind its API keys."""
