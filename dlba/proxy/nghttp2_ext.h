/* The session object of dlba.proxy._nghttp2 (nghttp2_ext.c: the Python type and its methods;
 * nghttp2_callbacks.c: the nghttp2 callbacks that turn frames into events; nghttp2_request.c:
 * a request's header block read for HTTP/1.1; nghttp2_response.c: a response head's fields). */
#ifndef DLBA_NGHTTP2_EXT_H
#define DLBA_NGHTTP2_EXT_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>

#define DN_HIDDEN __attribute__((visibility("hidden")))  /* only PyInit__nghttp2 is exported */

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
    /* The request header block being received (blocks never interleave): per field u32
     * length, name, u32 length, value; made a field list only when Python takes it. */
    char *hdr;
    size_t hdr_len, hdr_cap, hdr_size, hdr_limit;
    int hdr_over;
    int hdr_bad;      /* a field HTTP/1.1 would read differently (h2_headers' checks) */
    uint32_t control, resets, updates, data_frames;  /* flood counters of the window */
    uint32_t reset_limit, control_limit, update_limit;
    stream_out *waiting;
    stream_out *all;
    char *out;            /* what send gathered */
    size_t out_len, out_cap;
} Session;

DN_HIDDEN int dn_grow(char **buf, size_t *cap, size_t need);
/* Appends an event (kind, sid, arg, payload); steals payload (NULL: None). 0, or -1 with an
 * error set. */
DN_HIDDEN int dn_emit(Session *s, long kind, int32_t sid, unsigned long arg, PyObject *payload);
DN_HIDDEN void dn_out_free(Session *s, stream_out *o);
DN_HIDDEN ssize_t dn_read_body(nghttp2_session *session, int32_t sid, uint8_t *buf,
                               size_t length, uint32_t *data_flags,
                               nghttp2_data_source *source, void *user);
/* The nghttp2 server session with every callback set, our SETTINGS queued. 0, or -1. */
DN_HIDDEN int dn_open(Session *s, uint32_t max_streams, uint32_t header_list,
                      uint32_t conn_window, int raw);
/* A stream id argument (0, or -1 with ValueError set); a call's argument count (0, or -1
 * with TypeError set). */
DN_HIDDEN int dn_arg_sid(PyObject *o, int32_t *sid);
DN_HIDDEN int dn_nargs(Py_ssize_t n, Py_ssize_t want, const char *name);
/* A lower-case name that describes one hop only (http_head.HOP_BY_HOP): nghttp2_response.c */
DN_HIDDEN int dn_hop_by_hop(const char *p, size_t n);
/* Submits a head; final 0: informational; end: no body follows. 0, or -1 (nghttp2 refused). */
DN_HIDDEN int dn_submit_head(Session *s, int32_t sid, nghttp2_nv *nva, size_t n, int end);
/* request(block, max_headers, max_line): nghttp2_request.c */
DN_HIDDEN PyObject *dn_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* response_fields(...) and Session.response(sid, ...): nghttp2_response.c */
DN_HIDDEN PyObject *dn_response_fields(PyObject *module, PyObject *const *args,
                                       Py_ssize_t nargs);
DN_HIDDEN PyObject *dn_session_response(Session *s, PyObject *const *args, Py_ssize_t nargs);

#endif
