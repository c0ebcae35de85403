"""Google Earth Engine: recipes, sessions, chunked download and batch export."""
