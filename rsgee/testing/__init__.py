"""Test doubles shipped with rsgee, for its own tests and for users' tests of code built on it.

:mod:`rsgee.testing.earthengine` is the offline Earth Engine (a loopback REST server for the real ``ee``
client). Nothing in rsgee's own code imports this package.
"""
