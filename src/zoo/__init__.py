"""zoo."""

from . import data as data
