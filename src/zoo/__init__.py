"""zoo."""

from . import sparse as sparse
from ._embedding import Embedding as Embedding
