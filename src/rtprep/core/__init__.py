"""The foundation every layer uses: atomic artifacts and sidecars, row identity and hashing, frame
helpers, errors, logging, thread limits, file names, the config schema and row accounting."""
