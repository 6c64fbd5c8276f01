/* A server-side HTTP/2 session on libnghttp2, driven without callbacks into Python.
 *
 * dlba/proxy/nghttp2_engine.py loads this (cffi, ABI mode) and drives it sans-I/O: feed the
 * client's bytes (dn_recv), take the bytes to send (dn_send). Every nghttp2 callback stays in
 * C and appends a record to the session's event buffer, which Python reads once per call: a
 * request's header block is handed over whole at END_HEADERS ("name\0value\0..."), so a
 * request costs a few crossings, not one per header or frame. Response bodies wait in a
 * per-stream buffer read by the data provider (deferred while empty), so nghttp2's own flow
 * control paces them; a DRAINED record tells Python when a stream it paused has sent all.
 * Flood counters (resets, control frames, WINDOW_UPDATEs beyond DATA frames sent) are kept
 * here and reported by dn_recv's return value.
 */
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { EV_REQUEST = 1, EV_DATA = 2, EV_END = 3, EV_RESET = 4, EV_CLOSE = 5, EV_DRAINED = 6,
       EV_GOAWAY_RECV = 7, EV_GOAWAY_SENT = 8, EV_BLOCKED = 9, EV_PROGRESS = 10 };

typedef struct {
    char *ev;       /* event records: u32 type, u32 stream, u32 arg, u32 len, then len bytes */
    size_t ev_len;
    uint32_t control, resets, updates, data_frames;  /* flood counters of the window */
} dn_public;

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
    dn_public pub;    /* first: Python reads it through the same pointer */
    nghttp2_session *session;
    size_t ev_cap;
    char *hdr;        /* the header block being received (blocks never interleave) */
    size_t hdr_len, hdr_cap, hdr_limit;
    int hdr_over;
    stream_out *waiting;
    stream_out *all;
    char *out;        /* what dn_send gathered */
    size_t out_len, out_cap;
} dn_session;

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 256;
    while (n < need) n *= 2;
    char *p = realloc(*buf, n);
    if (!p) return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static int emit(dn_session *s, uint32_t type, int32_t sid, uint32_t arg, const void *data,
                size_t len) {
    if (grow(&s->pub.ev, &s->ev_cap, s->pub.ev_len + 16 + len)) return -1;
    uint32_t head[4] = {type, (uint32_t)sid, arg, (uint32_t)len};
    memcpy(s->pub.ev + s->pub.ev_len, head, 16);
    if (len) memcpy(s->pub.ev + s->pub.ev_len + 16, data, len);
    s->pub.ev_len += 16 + len;
    return 0;
}

static int on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *user) {
    dn_session *s = user;
    (void)session;
    switch (hd->type) {
    case NGHTTP2_DATA:  /* an empty DATA frame that ends nothing is work for nothing */
        if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM)) s->pub.control++;
        break;
    case NGHTTP2_RST_STREAM: s->pub.resets++; break;
    case NGHTTP2_WINDOW_UPDATE: s->pub.updates++; break;
    case NGHTTP2_SETTINGS: case NGHTTP2_PING: case NGHTTP2_PRIORITY: s->pub.control++; break;
    default:
        if (hd->type > NGHTTP2_CONTINUATION) s->pub.control++;  /* unknown types */
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    dn_session *s = user;
    (void)session; (void)frame;
    s->hdr_len = 0;
    s->hdr_over = 0;
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
    dn_session *s = user;
    (void)session; (void)frame; (void)flags;
    size_t need = s->hdr_len + namelen + valuelen + 2;
    /* Over the header list limit we advertise: the rest is decoded (HPACK state) but not
     * kept, and Python answers 431 without a back end. */
    if (s->hdr_over || need > s->hdr_limit) {
        s->hdr_over = 1;
        return 0;
    }
    if (grow(&s->hdr, &s->hdr_cap, need)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(s->hdr + s->hdr_len, name, namelen);
    s->hdr[s->hdr_len + namelen] = 0;
    memcpy(s->hdr + s->hdr_len + namelen + 1, value, valuelen);
    s->hdr[need - 1] = 0;
    s->hdr_len = need;
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    dn_session *s = user;
    (void)session;
    int32_t sid = frame->hd.stream_id;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            /* arg: 1 no body follows, 2 the header list was over the limit */
            if (emit(s, EV_REQUEST, sid, (uint32_t)(end | (s->hdr_over << 1)), s->hdr,
                     s->hdr_len)
                || (end && emit(s, EV_END, sid, 0, NULL, 0)))
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            return 0;
        }
        if (end && emit(s, EV_END, sid, 0, NULL, 0)) return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    case NGHTTP2_DATA:
        if (end && emit(s, EV_END, sid, 0, NULL, 0)) return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    case NGHTTP2_RST_STREAM:
        return emit(s, EV_RESET, sid, frame->rst_stream.error_code, NULL, 0)
               ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    case NGHTTP2_GOAWAY:
        return emit(s, EV_GOAWAY_RECV, 0, frame->goaway.error_code, NULL, 0)
               ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid,
                         const uint8_t *data, size_t len, void *user) {
    (void)session; (void)flags;
    return emit(user, EV_DATA, sid, 0, data, len) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    dn_session *s = user;
    if (frame->hd.type == NGHTTP2_DATA) s->pub.data_frames++;
    /* A complete response while the client still sends: RST_STREAM NO_ERROR (RFC 9113
     * 8.1), after the last DATA, so the client keeps the response. */
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS)
        && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        && nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0)
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_NO_ERROR);
    if (frame->hd.type == NGHTTP2_GOAWAY)
        return emit(s, EV_GOAWAY_SENT, 0, frame->goaway.error_code, NULL, 0)
               ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    return 0;
}

static void out_free(dn_session *s, stream_out *o) {
    if (o->all_prev) o->all_prev->all_next = o->all_next;
    else s->all = o->all_next;
    if (o->all_next) o->all_next->all_prev = o->all_prev;
    free(o->buf);
    free(o);
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t code, void *user) {
    dn_session *s = user;
    stream_out *o = nghttp2_session_get_stream_user_data(session, sid);
    if (o) {
        nghttp2_session_set_stream_user_data(session, sid, NULL);
        for (stream_out **q = &s->waiting; *q; q = &(*q)->next)
            if (*q == o) { *q = o->next; break; }
        out_free(s, o);
    }
    return emit(user, EV_CLOSE, sid, code, NULL, 0) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
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
            if (emit(user, EV_DRAINED, sid, 0, NULL, 0)) return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (n == 0 && !o->end) return NGHTTP2_ERR_DEFERRED;
    } else if (o->blocked && n
               && emit(user, EV_PROGRESS, sid, 0, NULL, 0)) {  /* a slow reader, not stalled */
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

dn_public *dn_new(uint32_t max_streams, uint32_t header_list, uint32_t conn_window) {
    dn_session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->hdr_limit = header_list;
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb)) { free(s); return NULL; }
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option_new(&opt);
    /* Request body windows reopen only as the back end takes the bytes (dn_consume). */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    int rv = nghttp2_session_server_new2(&s->session, cb, s, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv) { free(s); return NULL; }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, header_list},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 4096},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
    };
    nghttp2_submit_settings(s->session, NGHTTP2_FLAG_NONE, iv, 4);
    /* A stream held by a slow back end does not stall the others' bodies. */
    nghttp2_session_set_local_window_size(s->session, NGHTTP2_FLAG_NONE, 0, (int32_t)conn_window);
    return &s->pub;
}

void dn_free(dn_public *p) {
    dn_session *s = (dn_session *)p;
    if (!s) return;
    nghttp2_session_del(s->session);
    while (s->all) out_free(s, s->all);  /* streams still open: no close callback for them */
    free(s->pub.ev);
    free(s->hdr);
    free(s->out);
    free(s);
}

/* 0: read; -1: a fatal error (nghttp2 has queued its GOAWAY when it can); events in pub.ev. */
int dn_recv(dn_public *p, const uint8_t *data, size_t len) {
    dn_session *s = (dn_session *)p;
    ssize_t n = nghttp2_session_mem_recv(s->session, data, len);
    return n < 0 ? -1 : 0;
}

/* All the bytes there are to send now, gathered in one buffer valid until the next call;
 * *done: nothing more will be read or sent. */
size_t dn_send(dn_public *p, const char **out, int *done) {
    dn_session *s = (dn_session *)p;
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
            emit(s, EV_BLOCKED, o->sid, 0, NULL, 0);
        }
        q = &o->next;
    }
    *done = !nghttp2_session_want_read(s->session) && !nghttp2_session_want_write(s->session);
    *out = s->out;
    return s->out_len;
}

void dn_events_taken(dn_public *p) { p->ev_len = 0; }

static int make_nva(const char *fields, size_t len, nghttp2_nv *nva, size_t max) {
    size_t i = 0, off = 0;
    while (off < len && i < max) {
        const char *name = fields + off;
        size_t nl = strnlen(name, len - off);
        off += nl + 1;
        if (off > len) return -1;
        const char *value = fields + off;
        size_t vl = strnlen(value, len - off);
        off += vl + 1;
        nva[i].name = (uint8_t *)name;
        nva[i].namelen = nl;
        nva[i].value = (uint8_t *)value;
        nva[i].valuelen = vl;
        nva[i].flags = NGHTTP2_NV_FLAG_NONE;  /* copied: the fields are Python's, gone after */
        i++;
    }
    return off < len ? -1 : (int)i;  /* more fields than nva holds: refused, not cut */
}

/* A response head ("name\0value\0..."). final 0: informational; end: no body follows. */
int dn_head(dn_public *p, int32_t sid, const char *fields, size_t len, int final, int end) {
    dn_session *s = (dn_session *)p;
    nghttp2_nv nva[256];
    int n = make_nva(fields, len, nva, 256);
    if (n < 0) return -1;
    if (!final) return nghttp2_submit_headers(s->session, NGHTTP2_FLAG_NONE, sid, NULL, nva,
                                              (size_t)n, NULL) ? -1 : 0;
    if (end) return nghttp2_submit_response(s->session, sid, nva, (size_t)n, NULL) ? -1 : 0;
    if (nghttp2_session_get_stream_user_data(s->session, sid)) return -1;  /* a second head */
    stream_out *o = calloc(1, sizeof *o);
    if (!o) return -1;
    o->sid = sid;
    if (nghttp2_session_set_stream_user_data(s->session, sid, o)) {
        free(o);
        return -1;
    }
    o->all_next = s->all;
    if (s->all) s->all->all_prev = o;
    s->all = o;
    nghttp2_data_provider prd = {.source = {.ptr = o}, .read_callback = read_body};
    if (nghttp2_submit_response(s->session, sid, nva, (size_t)n, &prd)) {
        nghttp2_session_set_stream_user_data(s->session, sid, NULL);
        out_free(s, o);
        return -1;
    }
    return 0;
}

/* Body bytes for a stream whose head had a body; returns the bytes now waiting to be sent, or
 * -1 (the stream is gone). */
long dn_data(dn_public *p, int32_t sid, const char *data, size_t len, int end) {
    dn_session *s = (dn_session *)p;
    stream_out *o = nghttp2_session_get_stream_user_data(s->session, sid);
    if (!o) return -1;
    if (len) {
        if (o->off && o->off >= o->len / 2) {  /* what was sent makes room for what comes */
            memmove(o->buf, o->buf + o->off, o->len - o->off);
            o->len -= o->off;
            o->off = 0;
        }
        if (grow(&o->buf, &o->cap, o->len + len)) return -1;
        memcpy(o->buf + o->len, data, len);
        o->len += len;
        if (!o->listed) {
            o->listed = 1;
            o->next = s->waiting;
            s->waiting = o;
        }
    }
    if (end) o->end = 1;
    nghttp2_session_resume_data(s->session, sid);
    return (long)(o->len - o->off);
}

/* Bytes of a stream's response still waiting (-1: none buffered here, or the stream is gone). */
long dn_pending(dn_public *p, int32_t sid) {
    dn_session *s = (dn_session *)p;
    stream_out *o = nghttp2_session_get_stream_user_data(s->session, sid);
    return o ? (long)(o->len - o->off) : -1;
}

int dn_consume(dn_public *p, int32_t sid, size_t n) {
    dn_session *s = (dn_session *)p;
    if (sid && nghttp2_session_consume(s->session, sid, n) == 0) return 0;
    return nghttp2_session_consume_connection(s->session, n);
}

int dn_reset(dn_public *p, int32_t sid, uint32_t code) {
    dn_session *s = (dn_session *)p;
    return nghttp2_submit_rst_stream(s->session, NGHTTP2_FLAG_NONE, sid, code);
}

/* GOAWAY that ends the session (nghttp2 sends nothing after it). */
int dn_terminate(dn_public *p, uint32_t code) {
    dn_session *s = (dn_session *)p;
    return nghttp2_session_terminate_session(s->session, code);
}

int32_t dn_last_stream(dn_public *p) {
    dn_session *s = (dn_session *)p;
    return nghttp2_session_get_last_proc_stream_id(s->session);
}
