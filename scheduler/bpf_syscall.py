"""A small ctypes binding to libbpf (libbpf1, Debian's libbpf-dev): just what the data plane needs.

libbpf loads the ELF object (BTF-defined maps, relocations) and wraps the bpf() syscall; map
updates are plain syscalls from this process, never a spawned tool. tc attachment goes through
libbpf's own netlink code (bpf_tc_hook_create / bpf_tc_attach: clsact + cls_bpf direct-action),
in the network namespace of the calling thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

BPF_MAP_TYPE_ARRAY = 2
BPF_ANY = 0
BPF_TC_INGRESS = 1
BPF_TC_F_REPLACE = 1


class BpfError(OSError):
    """A libbpf call failed; errno and the call name are kept."""


def _load_libbpf() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError as exc:  # pragma: no cover - depends on the machine
        raise BpfError(f"libbpf not found ({name}): install libbpf1 / libbpf-dev") from exc


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """libbpf, loaded once with argument types declared (so pointers are not truncated)."""
    global _lib
    if _lib is None:
        _lib = _load_libbpf()
        _declare(_lib)
    return _lib


def _declare(b: ctypes.CDLL) -> None:
    vp, cp, u32, i32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_int
    sigs: dict[str, tuple[list[type], type | None]] = {
        "bpf_object__open_file": ([cp, vp], vp),
        "bpf_object__load": ([vp], i32),
        "bpf_object__close": ([vp], None),
        "bpf_object__find_map_by_name": ([vp, cp], vp),
        "bpf_object__find_program_by_name": ([vp, cp], vp),
        "bpf_program__fd": ([vp], i32),
        "bpf_map__fd": ([vp], i32),
        "bpf_map__set_max_entries": ([vp, u32], i32),
        "bpf_map__set_inner_map_fd": ([vp, i32], i32),
        "bpf_map_create": ([i32, cp, u32, u32, u32, vp], i32),
        "bpf_map_update_elem": ([i32, vp, vp, ctypes.c_uint64], i32),
        "bpf_map_lookup_elem": ([i32, vp, vp], i32),
        "bpf_map_delete_elem": ([i32, vp], i32),
        "bpf_map_get_next_key": ([i32, vp, vp], i32),
        "bpf_map_update_batch": ([i32, vp, vp, ctypes.POINTER(u32), vp], i32),
        "bpf_map_lookup_batch": ([i32, vp, vp, vp, vp, ctypes.POINTER(u32), vp], i32),
        "bpf_prog_test_run_opts": ([i32, vp], i32),
        "bpf_tc_hook_create": ([vp], i32),
        "bpf_tc_hook_destroy": ([vp], i32),
        "bpf_tc_attach": ([vp, vp], i32),
        "bpf_tc_detach": ([vp, vp], i32),
    }
    for fname, (args, res) in sigs.items():
        fn = getattr(b, fname)
        fn.argtypes = args
        fn.restype = res


def _check(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno; turn that into an exception naming the call."""
    if ret < 0:
        err = -ret
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def _buf(data: bytes) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(data, len(data))


def possible_cpus() -> int:
    """Per-CPU map values hold one slot per *possible* CPU (not online): read the kernel's list."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class Map:
    """A map fd with byte-level operations; callers pack keys and values with struct."""

    def __init__(self, fd: int, key_size: int, value_size: int, owned: bool = False) -> None:
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size
        self._owned = owned

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        _check(lib().bpf_map_update_elem(self.fd, _buf(key), _buf(value), flags), "map update")

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        size = value_size or self.value_size
        out = ctypes.create_string_buffer(size)
        ret = lib().bpf_map_lookup_elem(self.fd, _buf(key), out)
        if ret == -2:  # ENOENT
            return None
        _check(ret, "map lookup")
        return out.raw

    def delete(self, key: bytes) -> bool:
        ret = lib().bpf_map_delete_elem(self.fd, _buf(key))
        if ret == -2:
            return False
        _check(ret, "map delete")
        return True

    def keys(self, limit: int = 1 << 20) -> list[bytes]:
        """All keys (bounded): used for the small deny trie."""
        out: list[bytes] = []
        prev: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while len(out) < limit:
            ret = lib().bpf_map_get_next_key(self.fd, prev, nxt)
            if ret == -2:
                break
            _check(ret, "map get_next_key")
            out.append(nxt.raw)
            prev = ctypes.create_string_buffer(nxt.raw, self.key_size)
        return out

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        """One syscall for many elements (not atomic as a whole; see dlba_tc.c)."""
        n = ctypes.c_uint32(count)
        _check(
            lib().bpf_map_update_batch(self.fd, _buf(keys), _buf(values), ctypes.byref(n), None),
            "map update_batch",
        )

    def lookup_batch(self, count: int, value_size: int) -> bytes:
        """Values of keys 0..count-1 of an array map, in one or a few syscalls."""
        keys = ctypes.create_string_buffer(self.key_size * count)
        values = ctypes.create_string_buffer(value_size * count)
        out_batch = ctypes.c_uint32(0)
        n = ctypes.c_uint32(count)
        ret = lib().bpf_map_lookup_batch(
            self.fd, None, ctypes.byref(out_batch), keys, values, ctypes.byref(n), None
        )
        if ret < 0 and ret != -2:  # ENOENT: the whole map fitted in this batch
            _check(ret, "map lookup_batch")
        if n.value != count:
            raise BpfError(5, f"map lookup_batch returned {n.value} of {count} elements")
        return values.raw

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def create_array(name: str, value_size: int, max_entries: int) -> Map:
    """A fresh BPF array map owned by this process (u32 keys)."""
    fd = _check(
        lib().bpf_map_create(BPF_MAP_TYPE_ARRAY, name.encode(), 4, value_size, max_entries, None),
        f"bpf_map_create({name})",
    )
    return Map(fd, 4, value_size, owned=True)


class BpfObject:
    """An opened ELF object: size maps, then load(), then fetch program and map fds."""

    def __init__(self, path: str) -> None:
        ctypes.set_errno(0)
        ptr = lib().bpf_object__open_file(path.encode(), None)
        if not ptr:
            err = ctypes.get_errno() or 22
            raise BpfError(err, f"bpf_object__open_file({path}): {os.strerror(err)}")
        self._obj: int | None = ptr
        self.loaded = False

    def _map_ptr(self, name: str) -> int:
        ptr = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not ptr:
            raise BpfError(2, f"map {name} not in object")
        return int(ptr)

    def set_max_entries(self, name: str, n: int) -> None:
        _check(lib().bpf_map__set_max_entries(self._map_ptr(name), n), f"set_max_entries({name})")

    def set_inner_map_fd(self, name: str, fd: int) -> None:
        _check(lib().bpf_map__set_inner_map_fd(self._map_ptr(name), fd), f"inner map of {name}")

    def load(self) -> None:
        _check(lib().bpf_object__load(self._obj), "bpf_object__load (verifier log on stderr)")
        self.loaded = True

    def map_fd(self, name: str) -> int:
        return _check(lib().bpf_map__fd(self._map_ptr(name)), f"map fd {name}")

    def prog_fd(self, name: str) -> int:
        ptr = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not ptr:
            raise BpfError(2, f"program {name} not in object")
        return _check(lib().bpf_program__fd(ptr), f"program fd {name}")

    def close(self) -> None:
        """Closes every fd libbpf holds; maps live on while a tc filter still uses them."""
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data_out: bytes
    duration_ns: int  # average per repetition, as the kernel measured it


def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> TestRunResult:
    """BPF_PROG_TEST_RUN: run the program on `frame` (an skb built by the kernel) `repeat` times."""
    inbuf = _buf(frame)
    outbuf = ctypes.create_string_buffer(len(frame) + 256)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.cast(inbuf, ctypes.c_void_p),
        data_out=ctypes.cast(outbuf, ctypes.c_void_p),
        data_size_in=len(frame),
        data_size_out=len(outbuf),
        repeat=repeat,
    )
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "bpf_prog_test_run")
    return TestRunResult(opts.retval, outbuf.raw[: opts.data_size_out], opts.duration)


class _TcHook(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
    ]


class _TcOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


def _hook(ifindex: int) -> _TcHook:
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=BPF_TC_INGRESS)


def tc_attach_ingress(ifindex: int, prog_fd: int, handle: int, priority: int) -> bool:
    """clsact on ifindex (if missing) + a cls_bpf direct-action filter on ingress.

    Returns whether this call created the clsact qdisc (then detach may remove it)."""
    hook = _hook(ifindex)
    ret: int = lib().bpf_tc_hook_create(ctypes.byref(hook))
    created = ret == 0
    if ret not in (0, -17):  # EEXIST: clsact already there (another filter, or a crashed run)
        _check(ret, "bpf_tc_hook_create")
    opts = _TcOpts(
        sz=ctypes.sizeof(_TcOpts),
        prog_fd=prog_fd,
        flags=BPF_TC_F_REPLACE,
        handle=handle,
        priority=priority,
    )
    _check(lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)), "bpf_tc_attach")
    return created


def tc_detach_ingress(ifindex: int, handle: int, priority: int, destroy_hook: bool) -> None:
    hook = _hook(ifindex)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    ret = lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if ret not in (0, -2, -19):  # already gone, or the interface went away
        _check(ret, "bpf_tc_detach")
    if destroy_hook:
        # BPF_TC_INGRESS|BPF_TC_EGRESS is what destroys the whole clsact qdisc.
        hook.attach_point = 3
        ret = lib().bpf_tc_hook_destroy(ctypes.byref(hook))
        if ret not in (0, -2, -19, -22):
            _check(ret, "bpf_tc_hook_destroy")
