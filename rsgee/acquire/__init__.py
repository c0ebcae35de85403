"""Where the pixels come from: AOIs, Earth Engine, local files, the synthetic scene."""
