"""The `niodoo-supervisor` command line: run, render, check, status, demo-model.

May import every other package; nothing imports it.
"""
