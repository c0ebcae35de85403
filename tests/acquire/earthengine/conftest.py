"""Offline Earth Engine: the real ``ee`` client initialised against the test data its wheel ships."""

from __future__ import annotations

from unittest import mock

import ee
import pytest
from ee import apitestcase


@pytest.fixture
def ee_offline():
    """An initialised ``ee`` that cannot reach a server.

    ``ApiTestCase`` serves the algorithm list from ``ee/tests/algorithms.json`` and skips the
    discovery fetch; any remote evaluation (``getInfo``, ``size()``…) fails the test loudly instead
    of returning ApiTestCase's fake value. ee's state is global, so it is reset afterwards.
    """
    case = apitestcase.ApiTestCase()
    # ApiTestCase replaces _install_cloud_api_resource and does not put it back: patch.object does.
    with mock.patch.object(ee.data, "_install_cloud_api_resource"):
        case.setUp()
        try:
            with mock.patch.object(
                ee.data, "computeValue", side_effect=AssertionError("a test tried to evaluate on Earth Engine")
            ):
                yield
        finally:
            case.tearDown()
            ee.Reset()
