"""One-off studies behind figures in the README; not installed with the package (see ``README.md`` here)."""
