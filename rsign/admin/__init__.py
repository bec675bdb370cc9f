"""Administration: user lifecycle, search, and the role/agency policy for every admin operation."""
