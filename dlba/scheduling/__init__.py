"""Choosing a back end: the web server status table, selection rules and policies, the hash
ring, cookies and learned session ids, back-end health and agent checks."""

from dlba import use_native

use_native(__path__, __name__)
