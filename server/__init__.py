"""The thin WSGI server around :func:`tevo_hold.app.create_app` (run it with gunicorn)."""
