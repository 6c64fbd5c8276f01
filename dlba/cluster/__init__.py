"""What the nodes of the array share with each other: learned session ids (`session_sync`)."""

from dlba import use_native

use_native(__path__, __name__)
