"""The local array (`dlba up` / `dlba down`): the whole Pentaflow array on one machine.

`topology` describes the contract's namespaces and addresses, `netns_builder` makes and
removes them, `processes` starts and stops what runs inside, `config_gen` writes the state
folder, `up` ties them together.
"""

from dlba.local_array.up import down_main, up_main

__all__ = ["down_main", "up_main"]
