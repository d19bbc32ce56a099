"""WSGI entry point for production servers: ``gunicorn 'keyserver.wsgi:app'`` with KEYSERVER_CONFIG set.

With PostgreSQL, run ``keyserver db upgrade`` before starting (SQLite upgrades itself at start).
"""

from keyserver.app import create_app
from keyserver.config import load_config

app = create_app(load_config())
