"""Integrations with servers and frameworks; none imports a framework.

- :mod:`langfuse_dq.integrations.health`: a WSGI and an ASGI app (and a plain function) that
  serve ``stats()`` as JSON with HTTP 200 or 503, to mount in Flask, Django, FastAPI...
- :mod:`langfuse_dq.integrations.gunicorn`: optional server hooks for ``gunicorn.conf.py``.

See the integrations documentation for recipes (Flask, Django, FastAPI, Celery, cron, systemd,
Kubernetes).
"""
