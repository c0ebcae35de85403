"""Where the pixels come from: AOIs, Earth Engine, local files, the synthetic scene."""

import datetime as dt

#: The compositing window of an export unless told otherwise: the northern summer of 2023 (start
#: inclusive, end exclusive).
WINDOW = (dt.date(2023, 6, 1), dt.date(2023, 9, 1))
#: Earth Engine's endpoints by ``--endpoint`` name (their URLs: :data:`rsgee.acquire.earthengine.session.ENDPOINTS`).
ENDPOINT_NAMES = ("standard", "highvolume")
