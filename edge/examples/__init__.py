"""Commented example configurations, one per protocol and one for the simulated plant.

`tagway init` writes the starter; these show each protocol's options in full. Each is validated
by the test suite, so none of them rots.
"""
