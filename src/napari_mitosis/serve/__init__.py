"""Serving models over HTTP (FastAPI, the ``serve`` extra): the application and its page.

May import every core stage; only the CLI imports it.
"""
