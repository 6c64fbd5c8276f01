/* The nghttp2 callbacks of dlba.proxy._nghttp2: each turns what nghttp2 parsed or sent into
 * events on the session's flat list (kind, stream, arg, payload), and keeps the flood
 * counters; none calls into Python code. */
#include "nghttp2_ext.h"

#include <string.h>

int dn_grow(char **buf, size_t *cap, size_t need) {
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

/* Four items on the flat event list, no tuple per event: with 100 requests in one read,
 * hundreds of young container objects made the cyclic GC run longer. */
int dn_emit(Session *s, long kind, int32_t sid, unsigned long arg, PyObject *payload) {
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
    s->hdr_len = s->hdr_size = 0;
    s->hdr_over = 0;
    s->hdr_bad = 0;
    return 0;
}

/* RFC 9113 8.2.1: a field name is lower-case token characters. */
static const char LOWER_TOKEN[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* What h2_headers.request_from_h2 refuses in a regular field (a name that is not a lower-case
 * token; CR, LF or NUL in a value: each would let one request smuggle a second into the back
 * end's HTTP/1.1), checked here while the bytes are at hand. nghttp2 refuses the same before
 * on_header; this is the second line, and it spares Python a scan of every field. */
static int bad_field(const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen) {
    if (namelen == 0) return 1;
    if (name[0] == ':') return 0;  /* pseudo-headers: request_from_h2 knows each by name */
    for (size_t i = 0; i < namelen; i++)
        if (!LOWER_TOKEN[name[i]]) return 1;
    for (size_t i = 0; i < valuelen; i++) {
        uint8_t c = value[i];
        if (c == '\r' || c == '\n' || c == 0) return 1;
    }
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
    Session *s = user;
    (void)session; (void)flags;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    size_t size = s->hdr_size + namelen + valuelen + 2;
    /* Over the header list limit we advertise: the rest is decoded (HPACK state) but not
     * kept, and Python answers 431 without a back end. */
    if (s->hdr_over || size > s->hdr_limit) {
        s->hdr_over = 1;
        return 0;
    }
    s->hdr_size = size;
    if (!s->hdr_bad && bad_field(name, namelen, value, valuelen)) s->hdr_bad = 1;
    if (dn_grow(&s->hdr, &s->hdr_cap, s->hdr_len + 8 + namelen + valuelen))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    char *p = s->hdr + s->hdr_len;
    uint32_t n = (uint32_t)namelen, v = (uint32_t)valuelen;
    memcpy(p, &n, 4);
    memcpy(p + 4, name, namelen);
    memcpy(p + 4 + namelen, &v, 4);
    memcpy(p + 8 + namelen, value, valuelen);
    s->hdr_len += 8 + namelen + valuelen;
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    Session *s = user;
    (void)session;
    int32_t sid = frame->hd.stream_id;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            /* The block as bytes: a list of tuples made here for every request of a read
             * would be hundreds of young GC objects at once (100 streams: the cyclic GC's
             * share doubled); fields() makes each list as the request is taken. */
            PyObject *block = PyBytes_FromStringAndSize(s->hdr, (Py_ssize_t)s->hdr_len);
            if (!block) return NGHTTP2_ERR_CALLBACK_FAILURE;
            /* arg: 1 no body follows, 2 the header list was over the limit */
            return CHECK(dn_emit(s, EV_REQUEST, sid, (unsigned long)(end | (s->hdr_over << 1) | (s->hdr_bad << 2)),
                                 block)
                         || (end && dn_emit(s, EV_END, sid, 0, NULL)));
        }
        return CHECK(end && dn_emit(s, EV_END, sid, 0, NULL));
    case NGHTTP2_DATA:
        return CHECK(end && dn_emit(s, EV_END, sid, 0, NULL));
    case NGHTTP2_RST_STREAM:
        return CHECK(dn_emit(s, EV_RESET, sid, frame->rst_stream.error_code, NULL));
    case NGHTTP2_GOAWAY:
        return CHECK(dn_emit(s, EV_GOAWAY_RECV, 0, frame->goaway.error_code, NULL));
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid,
                         const uint8_t *data, size_t len, void *user) {
    (void)session; (void)flags;
    PyObject *b = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    return CHECK(!b || dn_emit(user, EV_DATA, sid, len, b));
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
        return CHECK(dn_emit(s, EV_GOAWAY_SENT, 0, frame->goaway.error_code, NULL));
    return 0;
}

void dn_out_free(Session *s, stream_out *o) {
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
        dn_out_free(s, o);
    }
    return CHECK(dn_emit(s, EV_CLOSE, sid, code, NULL));
}

ssize_t dn_read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length,
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
            if (dn_emit(user, EV_DRAINED, sid, 0, NULL)) return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (n == 0 && !o->end) return NGHTTP2_ERR_DEFERRED;
    } else if (o->blocked && n && dn_emit(user, EV_PROGRESS, sid, 0, NULL)) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;  /* (PROGRESS: a slow reader, not stalled) */
    }
    return (ssize_t)n;
}

int dn_open(Session *s, uint32_t max_streams, uint32_t header_list, uint32_t conn_window,
            int raw) {
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
    if (raw) nghttp2_option_set_no_http_messaging(opt, 1);
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

