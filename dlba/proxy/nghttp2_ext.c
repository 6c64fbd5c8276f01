/* dlba.proxy._nghttp2: a server-side HTTP/2 session on libnghttp2, as a CPython extension.
 *
 * Driven sans-I/O by h2_session.H2Session: feed the client's bytes (receive), take the bytes
 * to send (send). Every nghttp2 callback stays in C (no C code calls into Python) and appends
 * an event (four items: kind, stream, arg, payload) to a flat list the call returns: a
 * request's header block is handed over whole at END_HEADERS (bytes that fields() makes a list
 * of (name, value) tuples), a DATA chunk as bytes (arg: its length), the others with payload
 * None (the callbacks: nghttp2_callbacks.c). Python objects cross directly, so nothing is encoded,
 * copied or parsed in Python, and every call is a plain method call (no libffi). Response bodies wait in a per-stream buffer read by the data
 * provider (deferred while empty), so nghttp2's own flow control paces them; DRAINED tells
 * Python when a stream it paused has sent all. Flood counters (resets, control frames,
 * WINDOW_UPDATEs beyond DATA frames sent) are kept here and checked against the limits given
 * at construction: receive's rc names the limit crossed.
 */
#include "nghttp2_ext.h"

#include <string.h>

static PyObject *take_events(Session *s) {
    PyObject *e = s->events;
    s->events = NULL;
    return e ? e : PyList_New(0);
}

/* --- the type ------------------------------------------------------------------------------ */

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    unsigned int max_streams, header_list, conn_window, reset_limit, control_limit, update_limit;
    int raw = 0;  /* tests only: nghttp2's own field checks off, to reach the second line's */
    if (kw && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Session takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "IIIIII|p:Session", &max_streams, &header_list, &conn_window,
                          &reset_limit, &control_limit, &update_limit, &raw))
        return NULL;
    Session *s = (Session *)type->tp_alloc(type, 0);
    if (!s) return NULL;
    s->hdr_limit = header_list;
    s->reset_limit = reset_limit;
    s->control_limit = control_limit;
    s->update_limit = update_limit;
    if (dn_open(s, max_streams, header_list, conn_window, raw)) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    return (PyObject *)s;
}

static void Session_dealloc(Session *s) {
    if (s->session) nghttp2_session_del(s->session);
    while (s->all) dn_out_free(s, s->all);  /* streams still open: no close callback for them */
    Py_XDECREF(s->events);
    PyMem_Free(s->hdr);
    PyMem_Free(s->out);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* receive(data) -> (rc, events): rc 0 read, -1 a fatal error (nghttp2 has queued its GOAWAY
 * when it can), 1/2/3 a flood limit crossed (resets, control frames, WINDOW_UPDATEs). */
static PyObject *Session_receive(Session *s, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)) return NULL;
    ssize_t n = nghttp2_session_mem_recv(s->session, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (PyErr_Occurred()) {  /* a callback could not make its event */
        Py_CLEAR(s->events);
        return NULL;
    }
    long rc = n < 0 ? -1 : 0;
    if (s->resets > s->reset_limit) rc = FLOOD_RESETS;
    else if (s->control > s->control_limit) rc = FLOOD_CONTROL;
    else if (s->updates > s->update_limit + s->data_frames) rc = FLOOD_UPDATES;
    PyObject *evs = take_events(s);
    if (!evs) return NULL;
    PyObject *r = PyTuple_New(2), *code = PyLong_FromLong(rc);
    if (!r || !code) {
        Py_XDECREF(r); Py_XDECREF(code); Py_DECREF(evs);
        return NULL;
    }
    PyTuple_SET_ITEM(r, 0, code);
    PyTuple_SET_ITEM(r, 1, evs);
    return r;
}

/* send() -> (data, done, events): all the bytes there are to send now; done: nothing more
 * will be read or sent. */
static PyObject *Session_send(Session *s, PyObject *unused) {
    (void)unused;
    const uint8_t *chunk;
    ssize_t n;
    s->out_len = 0;
    while ((n = nghttp2_session_mem_send(s->session, &chunk)) > 0) {
        if (dn_grow(&s->out, &s->out_cap, s->out_len + (size_t)n)) break;
        memcpy(s->out + s->out_len, chunk, (size_t)n);
        s->out_len += (size_t)n;
    }
    /* All that the windows admit is sent: what is left waits for a WINDOW_UPDATE. */
    for (stream_out **q = &s->waiting; *q;) {
        stream_out *o = *q;
        if (o->len == o->off) { *q = o->next; o->listed = 0; continue; }
        if (!o->blocked) {
            o->blocked = 1;
            if (dn_emit(s, EV_BLOCKED, o->sid, 0, NULL)) break;
        }
        q = &o->next;
    }
    if (PyErr_Occurred()) {
        Py_CLEAR(s->events);
        return NULL;
    }
    int done = !nghttp2_session_want_read(s->session) && !nghttp2_session_want_write(s->session);
    PyObject *evs = take_events(s);
    PyObject *out = PyBytes_FromStringAndSize(s->out, (Py_ssize_t)s->out_len);
    PyObject *r = PyTuple_New(3);
    if (!evs || !out || !r) {
        Py_XDECREF(evs); Py_XDECREF(out); Py_XDECREF(r);
        return NULL;
    }
    PyTuple_SET_ITEM(r, 0, out);
    PyTuple_SET_ITEM(r, 1, PyBool_FromLong(done));
    PyTuple_SET_ITEM(r, 2, evs);
    return r;
}

int dn_arg_sid(PyObject *o, int32_t *sid) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "stream id out of range");
        return -1;
    }
    *sid = (int32_t)v;
    return 0;
}

int dn_nargs(Py_ssize_t n, Py_ssize_t want, const char *name) {
    if (n == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", name, want, n);
    return -1;
}

/* Fills nva from a sequence of (name, value) bytes tuples; a field holding NUL is dropped
 * (HTTP/2 forbids it). nghttp2 copies them (flags NONE). The count, or -1 with an error set. */
static Py_ssize_t make_nva(PyObject *seq, nghttp2_nv *nva) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), k = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = items[i];
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(f, 0))
            || !PyBytes_Check(PyTuple_GET_ITEM(f, 1))) {
            PyErr_SetString(PyExc_TypeError, "a field is a (bytes, bytes) tuple");
            return -1;
        }
        PyObject *name = PyTuple_GET_ITEM(f, 0), *value = PyTuple_GET_ITEM(f, 1);
        size_t nl = (size_t)PyBytes_GET_SIZE(name), vl = (size_t)PyBytes_GET_SIZE(value);
        if (memchr(PyBytes_AS_STRING(name), 0, nl) || memchr(PyBytes_AS_STRING(value), 0, vl))
            continue;
        nva[k].name = (uint8_t *)PyBytes_AS_STRING(name);
        nva[k].namelen = nl;
        nva[k].value = (uint8_t *)PyBytes_AS_STRING(value);
        nva[k].valuelen = vl;
        nva[k].flags = NGHTTP2_NV_FLAG_NONE;
        k++;
    }
    return k;
}

/* Submits a head; final 0: informational; end: no body follows. 0, or -1 (nghttp2 refused). */
int dn_submit_head(Session *s, int32_t sid, nghttp2_nv *nva, size_t n, int end) {
    int final = !(nva[0].valuelen && nva[0].value[0] == '1');  /* :status comes first */
    if (!final) return nghttp2_submit_headers(s->session, NGHTTP2_FLAG_NONE, sid, NULL, nva, n,
                                              NULL) ? -1 : 0;
    if (end) return nghttp2_submit_response(s->session, sid, nva, n, NULL) ? -1 : 0;
    if (nghttp2_session_get_stream_user_data(s->session, sid)) return -1;  /* a second head */
    stream_out *o = PyMem_Calloc(1, sizeof *o);
    if (!o) return -1;
    o->sid = sid;
    if (nghttp2_session_set_stream_user_data(s->session, sid, o)) {
        PyMem_Free(o);
        return -1;
    }
    o->all_next = s->all;
    if (s->all) s->all->all_prev = o;
    s->all = o;
    nghttp2_data_provider prd = {.source = {.ptr = o}, .read_callback = dn_read_body};
    if (nghttp2_submit_response(s->session, sid, nva, n, &prd)) {
        nghttp2_session_set_stream_user_data(s->session, sid, NULL);
        dn_out_free(s, o);
        return -1;
    }
    return 0;
}

/* head(sid, fields, end) -> 0 or -1: a response head, informational when :status (the first
 * field) is 1xx; end: no body follows (else body bytes come by data()). */
static PyObject *Session_head(Session *s, PyObject *const *args, Py_ssize_t n) {
    int32_t sid;
    if (dn_nargs(n, 3, "head") || dn_arg_sid(args[0], &sid)) return NULL;
    int end = PyObject_IsTrue(args[2]);
    if (end < 0) return NULL;
    PyObject *seq = PySequence_Fast(args[1], "fields: a sequence");
    if (!seq) return NULL;
    nghttp2_nv stack[64], *nva = stack;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > 64 && !(nva = PyMem_Malloc((size_t)count * sizeof *nva))) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    Py_ssize_t k = make_nva(seq, nva);
    int rc = k <= 0 ? -1 : dn_submit_head(s, sid, nva, (size_t)k, end);
    if (nva != stack) PyMem_Free(nva);
    Py_DECREF(seq);
    if (k < 0) return NULL;
    return PyLong_FromLong(rc);
}

/* data(sid, bytes, end) -> the bytes of the stream now waiting to be sent, or -1 (the stream
 * is gone, or its head had no body). */
static PyObject *Session_data(Session *s, PyObject *const *args, Py_ssize_t n) {
    int32_t sid;
    if (dn_nargs(n, 3, "data") || dn_arg_sid(args[0], &sid)) return NULL;
    int end = PyObject_IsTrue(args[2]);
    if (end < 0) return NULL;
    stream_out *o = nghttp2_session_get_stream_user_data(s->session, sid);
    if (!o) return PyLong_FromLong(-1);
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE)) return NULL;
    size_t len = (size_t)view.len;
    if (len) {
        if (o->off && o->off >= o->len / 2) {  /* what was sent makes room for what comes */
            memmove(o->buf, o->buf + o->off, o->len - o->off);
            o->len -= o->off;
            o->off = 0;
        }
        if (dn_grow(&o->buf, &o->cap, o->len + len)) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        memcpy(o->buf + o->len, view.buf, len);
        o->len += len;
        if (!o->listed) {
            o->listed = 1;
            o->next = s->waiting;
            s->waiting = o;
        }
    }
    PyBuffer_Release(&view);
    if (end) o->end = 1;
    nghttp2_session_resume_data(s->session, sid);
    return PyLong_FromSsize_t((Py_ssize_t)(o->len - o->off));
}

/* pending(sid): bytes of a stream's response still waiting (-1: none buffered here). */
static PyObject *Session_pending(Session *s, PyObject *arg) {
    int32_t sid;
    if (dn_arg_sid(arg, &sid)) return NULL;
    stream_out *o = nghttp2_session_get_stream_user_data(s->session, sid);
    return PyLong_FromSsize_t(o ? (Py_ssize_t)(o->len - o->off) : -1);
}

/* consume(sid, n): n request body bytes taken (the stream's and connection's windows). */
static PyObject *Session_consume(Session *s, PyObject *const *args, Py_ssize_t n) {
    int32_t sid;
    if (dn_nargs(n, 2, "consume") || dn_arg_sid(args[0], &sid)) return NULL;
    size_t k = PyLong_AsSize_t(args[1]);
    if (k == (size_t)-1 && PyErr_Occurred()) return NULL;
    if (!sid || nghttp2_session_consume(s->session, sid, k))  /* a stream gone: the connection */
        nghttp2_session_consume_connection(s->session, k);
    Py_RETURN_NONE;
}

static PyObject *Session_reset(Session *s, PyObject *const *args, Py_ssize_t n) {
    int32_t sid;
    if (dn_nargs(n, 2, "reset") || dn_arg_sid(args[0], &sid)) return NULL;
    unsigned long code = PyLong_AsUnsignedLong(args[1]);
    if (code == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    nghttp2_submit_rst_stream(s->session, NGHTTP2_FLAG_NONE, sid, (uint32_t)code);
    Py_RETURN_NONE;
}

/* terminate(code): GOAWAY that ends the session (nghttp2 sends nothing after it). */
static PyObject *Session_terminate(Session *s, PyObject *arg) {
    unsigned long code = PyLong_AsUnsignedLong(arg);
    if (code == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    nghttp2_session_terminate_session(s->session, (uint32_t)code);
    Py_RETURN_NONE;
}

/* want_write(): frames are queued (send() would make bytes). */
static PyObject *Session_want_write(Session *s, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(nghttp2_session_want_write(s->session));
}

static PyObject *Session_last_stream(Session *s, PyObject *unused) {
    (void)unused;
    return PyLong_FromLong(nghttp2_session_get_last_proc_stream_id(s->session));
}

/* counters() -> (resets, control, updates, data_frames) of the current window. */
static PyObject *Session_counters(Session *s, PyObject *unused) {
    (void)unused;
    return Py_BuildValue("(IIII)", s->resets, s->control, s->updates, s->data_frames);
}

static PyObject *Session_clear_counters(Session *s, PyObject *unused) {
    (void)unused;
    s->resets = s->control = s->updates = s->data_frames = 0;
    Py_RETURN_NONE;
}

/* fields(block) -> [(name, value)]: a request's header block as the field list. */
static PyObject *fields(PyObject *module, PyObject *arg) {
    (void)module;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "fields: a header block (bytes)");
        return NULL;
    }
    const char *p = PyBytes_AS_STRING(arg);
    size_t len = (size_t)PyBytes_GET_SIZE(arg), off = 0;
    PyObject *out = PyList_New(0);
    while (out && off < len) {
        uint32_t n, v;
        if (len - off < 4 || (memcpy(&n, p + off, 4), len - off - 4 < (size_t)n + 4)
            || (memcpy(&v, p + off + 4 + n, 4), len - off - 8 - n < v)) {
            PyErr_SetString(PyExc_ValueError, "fields: not a header block");
            Py_CLEAR(out);
            break;
        }
        PyObject *f = PyTuple_New(2);
        PyObject *name = PyBytes_FromStringAndSize(p + off + 4, (Py_ssize_t)n);
        PyObject *value = PyBytes_FromStringAndSize(p + off + 8 + n, (Py_ssize_t)v);
        if (f && name) PyTuple_SET_ITEM(f, 0, name);
        else Py_XDECREF(name);
        if (f && value) PyTuple_SET_ITEM(f, 1, value);
        else Py_XDECREF(value);
        if (f) PyObject_GC_UnTrack(f);  /* two bytes: never in a cycle */
        if (!f || !name || !value || PyList_Append(out, f)) Py_CLEAR(out);
        Py_XDECREF(f);
        off += 8 + (size_t)n + v;
    }
    return out;
}

static PyMethodDef module_methods[] = {
    {"fields", fields, METH_O, NULL},
    {"request", (PyCFunction)(void (*)(void))dn_request, METH_FASTCALL, NULL},
    {"response_fields", (PyCFunction)(void (*)(void))dn_response_fields, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Session_methods[] = {
    {"receive", (PyCFunction)Session_receive, METH_O, NULL},
    {"send", (PyCFunction)Session_send, METH_NOARGS, NULL},
    {"head", (PyCFunction)(void (*)(void))Session_head, METH_FASTCALL, NULL},
    {"response", (PyCFunction)(void (*)(void))dn_session_response, METH_FASTCALL, NULL},
    {"data", (PyCFunction)(void (*)(void))Session_data, METH_FASTCALL, NULL},
    {"pending", (PyCFunction)Session_pending, METH_O, NULL},
    {"consume", (PyCFunction)(void (*)(void))Session_consume, METH_FASTCALL, NULL},
    {"reset", (PyCFunction)(void (*)(void))Session_reset, METH_FASTCALL, NULL},
    {"terminate", (PyCFunction)Session_terminate, METH_O, NULL},
    {"last_stream", (PyCFunction)Session_last_stream, METH_NOARGS, NULL},
    {"want_write", (PyCFunction)Session_want_write, METH_NOARGS, NULL},
    {"counters", (PyCFunction)Session_counters, METH_NOARGS, NULL},
    {"clear_counters", (PyCFunction)Session_clear_counters, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dlba.proxy._nghttp2.Session",
    .tp_doc = "Session(max_streams, header_list, conn_window, reset_limit, control_limit, "
              "update_limit, raw=False): one HTTP/2 server session on libnghttp2 (raw, for "
              "tests: nghttp2's own field checks off).",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_nghttp2", "HTTP/2 server sessions on libnghttp2.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__nghttp2(void) {
    if (PyType_Ready(&SessionType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
