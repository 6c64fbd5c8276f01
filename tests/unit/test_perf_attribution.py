"""bench/perf_attribution.py's reading of `perf script` output (pure parsing, no perf run)."""

from __future__ import annotations

from bench.perf_attribution import owner, read_stacks, report

NATIVE = "/w/build/native/dlba/native__mypyc.cpython-311-x86_64-linux-gnu.so"
UVLOOP = "/v/uvloop/loop.cpython-311-x86_64-linux-gnu.so"
PERF_SCRIPT = f"""dlba
\t          1b3168 set_merge (inlined)
\t          1b3168 set_update_internal (/py/lib/libpython3.11.so.1.0)
\t           94439 CPyDef_http_head___request_head ({NATIVE})
\t           964b5 CPyDef_exchange___Exchange____use ({NATIVE})

dlba
\t          230ce5 [unknown] (/usr/lib/x86_64-linux-gnu/libcrypto.so.3)
\t           7c3e5 CPyDef_tls_transport___TLSTransport____handshake ({NATIVE})

dlba
\t          11638b __pyx_f_6uvloop_4loop_4Loop__track_transport ({UVLOOP})

dlba
\t          ffffffff81000000 tcp_sendmsg ([kernel.kallsyms])
"""


def test_stacks_drop_inlined_frames_and_keep_the_library_file_name() -> None:
    stacks = read_stacks(PERF_SCRIPT)
    assert len(stacks) == 4
    assert stacks[0][0] == ("set_update_internal", "libpython3.11.so.1.0")
    assert stacks[1][0][1] == "libcrypto.so.3"


def test_owner_is_the_innermost_compiled_function_else_uvloop() -> None:
    stacks = read_stacks(PERF_SCRIPT)
    assert owner(stacks[0]) == "http_head.request_head"
    assert owner(stacks[2]) == "loop: Loop__track_transport"
    assert owner(stacks[3]) == "([kernel.kallsyms]) tcp_sendmsg"


def test_report_leaves_openssl_and_the_kernel_out_of_the_overhead() -> None:
    text = report(read_stacks(PERF_SCRIPT), conns=100, cpu_s=0.04, top=10)
    assert "4 samples, 100 connections, 400 µs CPU per connection" in text
    overhead, inclusive = text.split("outside OpenSSL and the kernel")[1].split(
        "compiled functions, inclusive")
    assert "(50.0 %)" in overhead  # 2 of the 4 samples
    assert "http_head.request_head" in overhead and "TLSTransport" not in overhead
    # inclusive: a compiled function counts for every sample it is on the stack of
    assert "TLSTransport._handshake" in inclusive
    assert "100.0 µs  libcrypto.so.3" in text
