"""Files from outside the supervisor's control, read and written defensively: the inputs a
config names, atomic writes, and the state folder with its lock.

May import: `exitcodes` only. Everything else builds on this.
"""
