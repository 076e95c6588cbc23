"""A payments API in Flask that never charges a customer twice: gunicorn's sync workers, a
SQLite ledger, ``surefoot.flask``.

Run it with ``gunicorn --workers 4 examples.flask_payments.app:app`` (see README.md).
"""
