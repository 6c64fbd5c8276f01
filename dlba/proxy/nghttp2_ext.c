/* dlba.proxy._nghttp2: a server-side HTTP/2 session on libnghttp2, as a CPython extension.
 *
 * Driven sans-I/O by h2_session.H2Session: feed the client's bytes (receive), take the bytes
 * to send (send). Every nghttp2 callback stays in C (no C code calls into Python) and appends
 * an event (four items: kind, stream, arg, payload) to a flat list the call returns: a
 * request's header block is handed over whole at END_HEADERS as a list of (name, value) bytes
 * tuples, a DATA chunk as bytes (arg: its length), the others with payload None. Python objects cross
 * directly, so nothing is encoded, copied or parsed in Python, and every call is a plain
 * method call (no libffi). Response bodies wait in a per-stream buffer read by the data
 * provider (deferred while empty), so nghttp2's own flow control paces them; DRAINED tells
 * Python when a stream it paused has sent all. Flood counters (resets, control frames,
 * WINDOW_UPDATEs beyond DATA frames sent) are kept here and checked against the limits given
 * at construction: receive's rc names the limit crossed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <string.h>

enum { EV_REQUEST = 1, EV_DATA = 2, EV_END = 3, EV_RESET = 4, EV_CLOSE = 5, EV_DRAINED = 6,
       EV_GOAWAY_RECV = 7, EV_GOAWAY_SENT = 8, EV_BLOCKED = 9, EV_PROGRESS = 10 };
/* receive's rc: 0 read, -1 nghttp2 read no further, > 0 a flood limit crossed */
enum { FLOOD_RESETS = 1, FLOOD_CONTROL = 2, FLOOD_UPDATES = 3 };

typedef struct stream_out {
    char *buf;
    size_t off, len, cap;
    int end;          /* END_STREAM after buf */
    int blocked;      /* reported as waiting for a window: DRAINED when buf is sent */
    int32_t sid;
    struct stream_out *next;  /* on the session's list of streams with bytes waiting */
    int listed;
    /* on the session's list of every buffer: nghttp2_session_del calls no on_stream_close */
    struct stream_out *all_prev, *all_next;
} stream_out;

typedef struct {
    PyObject_HEAD
    nghttp2_session *session;
    PyObject *events;     /* the events since the last call (flat: 4 items each), or NULL */
    PyObject *fields;     /* the request header list being received (blocks never interleave) */
    size_t hdr_len, hdr_limit;
    int hdr_over;
    uint32_t control, resets, updates, data_frames;  /* flood counters of the window */
    uint32_t reset_limit, control_limit, update_limit;
    stream_out *waiting;
    stream_out *all;
    char *out;            /* what send gathered */
    size_t out_len, out_cap;
} Session;

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 256;
    while (n < need) n *= 2;
    char *p = PyMem_Realloc(*buf, n);
    if (!p) return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static int append_new(PyObject *list, PyObject *item) {  /* steals item */
    if (!item) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* Appends kind, sid, arg, payload to the flat event list (no tuple per event: with 100
 * requests in one read, hundreds of young container objects made the cyclic GC run longer);
 * steals payload (NULL: None). 0, or -1 with an error set. */
static int emit(Session *s, long kind, int32_t sid, unsigned long arg, PyObject *payload) {
    if (!payload) payload = Py_NewRef(Py_None);
    if (!s->events && !(s->events = PyList_New(0))) {
        Py_DECREF(payload);
        return -1;
    }
    PyObject *e = s->events;
    if (append_new(e, PyLong_FromLong(kind)) || append_new(e, PyLong_FromLong(sid))
        || append_new(e, PyLong_FromUnsignedLong(arg))) {
        Py_DECREF(payload);
        return -1;
    }
    return append_new(e, payload);
}

static PyObject *take_events(Session *s) {
    PyObject *e = s->events;
    s->events = NULL;
    return e ? e : PyList_New(0);
}

#define CHECK(x) ((x) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0)

static int on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *user) {
    Session *s = user;
    (void)session;
    switch (hd->type) {
    case NGHTTP2_DATA:  /* an empty DATA frame that ends nothing is work for nothing */
        if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM)) s->control++;
        break;
    case NGHTTP2_RST_STREAM: s->resets++; break;
    case NGHTTP2_WINDOW_UPDATE: s->updates++; break;
    case NGHTTP2_SETTINGS: case NGHTTP2_PING: case NGHTTP2_PRIORITY: s->control++; break;
    default:
        if (hd->type > NGHTTP2_CONTINUATION) s->control++;  /* unknown types */
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    Session *s = user;
    (void)session;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;  /* trailers are not kept */
    s->hdr_len = 0;
    s->hdr_over = 0;
    Py_XSETREF(s->fields, PyList_New(0));
    return CHECK(!s->fields);
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
    Session *s = user;
    (void)session; (void)flags;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST || !s->fields) return 0;
    size_t need = s->hdr_len + namelen + valuelen + 2;
    /* Over the header list limit we advertise: the rest is decoded (HPACK state) but not
     * kept, and Python answers 431 without a back end. */
    if (s->hdr_over || need > s->hdr_limit) {
        s->hdr_over = 1;
        return 0;
    }
    s->hdr_len = need;
    PyObject *f = PyTuple_New(2);
    if (!f) return NGHTTP2_ERR_CALLBACK_FAILURE;
    PyObject *n = PyBytes_FromStringAndSize((const char *)name, (Py_ssize_t)namelen);
    PyObject *v = PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)valuelen);
    if (n) PyTuple_SET_ITEM(f, 0, n);
    if (v) PyTuple_SET_ITEM(f, 1, v);
    if (!n || !v) {
        Py_DECREF(f);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    PyObject_GC_UnTrack(f);  /* two bytes: never in a cycle, nothing for the GC to visit */
    return CHECK(append_new(s->fields, f));
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    Session *s = user;
    (void)session;
    int32_t sid = frame->hd.stream_id;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            PyObject *fields = s->fields ? s->fields : PyList_New(0);
            s->fields = NULL;
            if (!fields) return NGHTTP2_ERR_CALLBACK_FAILURE;
            /* arg: 1 no body follows, 2 the header list was over the limit */
            return CHECK(emit(s, EV_REQUEST, sid, (unsigned long)(end | (s->hdr_over << 1)),
                              fields)
                         || (end && emit(s, EV_END, sid, 0, NULL)));
        }
        return CHECK(end && emit(s, EV_END, sid, 0, NULL));
    case NGHTTP2_DATA:
        return CHECK(end && emit(s, EV_END, sid, 0, NULL));
    case NGHTTP2_RST_STREAM:
        return CHECK(emit(s, EV_RESET, sid, frame->rst_stream.error_code, NULL));
    case NGHTTP2_GOAWAY:
        return CHECK(emit(s, EV_GOAWAY_RECV, 0, frame->goaway.error_code, NULL));
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid,
                         const uint8_t *data, size_t len, void *user) {
    (void)session; (void)flags;
    PyObject *b = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    return CHECK(!b || emit(user, EV_DATA, sid, len, b));
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    Session *s = user;
    if (frame->hd.type == NGHTTP2_DATA) s->data_frames++;
    /* A complete response while the client still sends: RST_STREAM NO_ERROR (RFC 9113
     * 8.1), after the last DATA, so the client keeps the response. */
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS)
        && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        && nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0)
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_NO_ERROR);
    if (frame->hd.type == NGHTTP2_GOAWAY)
        return CHECK(emit(s, EV_GOAWAY_SENT, 0, frame->goaway.error_code, NULL));
    return 0;
}

static void out_free(Session *s, stream_out *o) {
    if (o->all_prev) o->all_prev->all_next = o->all_next;
    else s->all = o->all_next;
    if (o->all_next) o->all_next->all_prev = o->all_prev;
    PyMem_Free(o->buf);
    PyMem_Free(o);
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t code, void *user) {
    Session *s = user;
    stream_out *o = nghttp2_session_get_stream_user_data(session, sid);
    if (o) {
        nghttp2_session_set_stream_user_data(session, sid, NULL);
        for (stream_out **q = &s->waiting; *q; q = &(*q)->next)
            if (*q == o) { *q = o->next; break; }
        out_free(s, o);
    }
    return CHECK(emit(s, EV_CLOSE, sid, code, NULL));
}

static ssize_t read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user) {
    stream_out *o = source->ptr;
    (void)session;
    size_t n = o->len - o->off;
    if (n > length) n = length;
    memcpy(buf, o->buf + o->off, n);
    o->off += n;
    if (o->off == o->len) {
        o->off = o->len = 0;
        if (o->end) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (o->blocked) {
            o->blocked = 0;
            if (emit(user, EV_DRAINED, sid, 0, NULL)) return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (n == 0 && !o->end) return NGHTTP2_ERR_DEFERRED;
    } else if (o->blocked && n && emit(user, EV_PROGRESS, sid, 0, NULL)) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;  /* (PROGRESS: a slow reader, not stalled) */
    }
    return (ssize_t)n;
}

/* --- the type ------------------------------------------------------------------------------ */

static int session_open(Session *s, uint32_t max_streams, uint32_t header_list,
                        uint32_t conn_window) {
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb)) return -1;
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    if (nghttp2_option_new(&opt)) { nghttp2_session_callbacks_del(cb); return -1; }
    /* Request body windows reopen only as the back end takes the bytes (consume). */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    int rv = nghttp2_session_server_new2(&s->session, cb, s, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv) return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, header_list},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 4096},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
    };
    nghttp2_submit_settings(s->session, NGHTTP2_FLAG_NONE, iv, 4);
    /* A stream held by a slow back end does not stall the others' bodies. */
    nghttp2_session_set_local_window_size(s->session, NGHTTP2_FLAG_NONE, 0, (int32_t)conn_window);
    return 0;
}

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    unsigned int max_streams, header_list, conn_window, reset_limit, control_limit, update_limit;
    if (kw && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Session takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "IIIIII:Session", &max_streams, &header_list, &conn_window,
                          &reset_limit, &control_limit, &update_limit))
        return NULL;
    Session *s = (Session *)type->tp_alloc(type, 0);
    if (!s) return NULL;
    s->hdr_limit = header_list;
    s->reset_limit = reset_limit;
    s->control_limit = control_limit;
    s->update_limit = update_limit;
    if (session_open(s, max_streams, header_list, conn_window)) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    return (PyObject *)s;
}

static void Session_dealloc(Session *s) {
    if (s->session) nghttp2_session_del(s->session);
    while (s->all) out_free(s, s->all);  /* streams still open: no close callback for them */
    Py_XDECREF(s->events);
    Py_XDECREF(s->fields);
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
        if (grow(&s->out, &s->out_cap, s->out_len + (size_t)n)) break;
        memcpy(s->out + s->out_len, chunk, (size_t)n);
        s->out_len += (size_t)n;
    }
    /* All that the windows admit is sent: what is left waits for a WINDOW_UPDATE. */
    for (stream_out **q = &s->waiting; *q;) {
        stream_out *o = *q;
        if (o->len == o->off) { *q = o->next; o->listed = 0; continue; }
        if (!o->blocked) {
            o->blocked = 1;
            if (emit(s, EV_BLOCKED, o->sid, 0, NULL)) break;
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

static int arg_sid(PyObject *o, int32_t *sid) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "stream id out of range");
        return -1;
    }
    *sid = (int32_t)v;
    return 0;
}

static int nargs(Py_ssize_t n, Py_ssize_t want, const char *name) {
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
static int submit_head(Session *s, int32_t sid, nghttp2_nv *nva, size_t n, int end) {
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
    nghttp2_data_provider prd = {.source = {.ptr = o}, .read_callback = read_body};
    if (nghttp2_submit_response(s->session, sid, nva, n, &prd)) {
        nghttp2_session_set_stream_user_data(s->session, sid, NULL);
        out_free(s, o);
        return -1;
    }
    return 0;
}

/* head(sid, fields, end) -> 0 or -1: a response head, informational when :status (the first
 * field) is 1xx; end: no body follows (else body bytes come by data()). */
static PyObject *Session_head(Session *s, PyObject *const *args, Py_ssize_t n) {
    int32_t sid;
    if (nargs(n, 3, "head") || arg_sid(args[0], &sid)) return NULL;
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
    int rc = k <= 0 ? -1 : submit_head(s, sid, nva, (size_t)k, end);
    if (nva != stack) PyMem_Free(nva);
    Py_DECREF(seq);
    if (k < 0) return NULL;
    return PyLong_FromLong(rc);
}

/* data(sid, bytes, end) -> the bytes of the stream now waiting to be sent, or -1 (the stream
 * is gone, or its head had no body). */
static PyObject *Session_data(Session *s, PyObject *const *args, Py_ssize_t n) {
    int32_t sid;
    if (nargs(n, 3, "data") || arg_sid(args[0], &sid)) return NULL;
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
        if (grow(&o->buf, &o->cap, o->len + len)) {
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
    if (arg_sid(arg, &sid)) return NULL;
    stream_out *o = nghttp2_session_get_stream_user_data(s->session, sid);
    return PyLong_FromSsize_t(o ? (Py_ssize_t)(o->len - o->off) : -1);
}

/* consume(sid, n): n request body bytes taken (the stream's and connection's windows). */
static PyObject *Session_consume(Session *s, PyObject *const *args, Py_ssize_t n) {
    int32_t sid;
    if (nargs(n, 2, "consume") || arg_sid(args[0], &sid)) return NULL;
    size_t k = PyLong_AsSize_t(args[1]);
    if (k == (size_t)-1 && PyErr_Occurred()) return NULL;
    if (!sid || nghttp2_session_consume(s->session, sid, k))  /* a stream gone: the connection */
        nghttp2_session_consume_connection(s->session, k);
    Py_RETURN_NONE;
}

static PyObject *Session_reset(Session *s, PyObject *const *args, Py_ssize_t n) {
    int32_t sid;
    if (nargs(n, 2, "reset") || arg_sid(args[0], &sid)) return NULL;
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

static PyMethodDef Session_methods[] = {
    {"receive", (PyCFunction)Session_receive, METH_O, NULL},
    {"send", (PyCFunction)Session_send, METH_NOARGS, NULL},
    {"head", (PyCFunction)(void (*)(void))Session_head, METH_FASTCALL, NULL},
    {"data", (PyCFunction)(void (*)(void))Session_data, METH_FASTCALL, NULL},
    {"pending", (PyCFunction)Session_pending, METH_O, NULL},
    {"consume", (PyCFunction)(void (*)(void))Session_consume, METH_FASTCALL, NULL},
    {"reset", (PyCFunction)(void (*)(void))Session_reset, METH_FASTCALL, NULL},
    {"terminate", (PyCFunction)Session_terminate, METH_O, NULL},
    {"last_stream", (PyCFunction)Session_last_stream, METH_NOARGS, NULL},
    {"counters", (PyCFunction)Session_counters, METH_NOARGS, NULL},
    {"clear_counters", (PyCFunction)Session_clear_counters, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dlba.proxy._nghttp2.Session",
    .tp_doc = "Session(max_streams, header_list, conn_window, reset_limit, control_limit, "
              "update_limit): one HTTP/2 server session on libnghttp2.",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_nghttp2", "HTTP/2 server sessions on libnghttp2.", -1, NULL,
    NULL, NULL, NULL, NULL,
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
