"""Benchmarks: the DLBA node beside HAProxy and nginx (`make bench`), BPF ns/packet."""
