/* request(block, max_headers, max_line): an HTTP/2 request's header block (as the session
 * gathered it) read for the HTTP/1.1 request a back end gets, in C: the per-field work of
 * h2_headers.request_from_h2 (its Python twin, which the unit tests hold this to), done while
 * the bytes are at hand instead of on a list of tuples made for it (a browser's request has
 * 10-20 fields; the Python loop cost ~1 µs of a ~40 µs request).
 *
 * Returns (status, reason, method, target, protocol, fields, cookie, length, plain, method_ok,
 * target_ok, host_ok): status 0, or the 4xx the request gets with its reason; fields: Host first (from
 * :authority, else a Host field; b"" if neither), then every field passed on; cookie: the
 * Cookie fields joined with "; " (b"" for none); length: Content-Length or -1; plain: no
 * forwarding field of the client's; method_ok, target_ok, host_ok: RFC 9110/9112/9113 shapes
 * (http_head's rules for the Host: a non-empty one of HOST_CHARS). The field
 * characters were checked as the block was gathered (the session's flag). */
#include "nghttp2_ext.h"

#include <string.h>

typedef struct {
    const char *p;
    size_t n;
} span;

#define OR_EMPTY(p) ((p) ? (const char *)(p) : "")

static int is(span s, const char *lit) {
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

/* Dropped on the way to the back end (h2_headers._REQUEST_DROP): this hop's fields, and the
 * three the request is rebuilt with. 1 dropped, 2 Host, 3 Cookie, 4 Content-Length. */
static int dropped(span name) {
    if (is(name, "host")) return 2;
    if (is(name, "cookie")) return 3;
    if (is(name, "content-length")) return 4;
    return dn_hop_by_hop(name.p, name.n);
}

static int forwarding(span name) {
    return is(name, "x-forwarded-for") || is(name, "x-forwarded-proto") || is(name, "forwarded");
}

/* RFC 9110 5.6.2 token characters (the method). */
static int token_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
           || (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int method_ok(span m) {
    if (m.n == 0) return 0;
    for (size_t i = 0; i < m.n; i++)
        if (!token_char((unsigned char)m.p[i])) return 0;
    return 1;
}

static int target_ok(span t, span method) {
    if (!(t.n && t.p[0] == '/') && !(is(t, "*") && is(method, "OPTIONS"))) return 0;
    for (size_t i = 0; i < t.n; i++) {
        unsigned char c = (unsigned char)t.p[i];
        if (c <= 0x20 || c == 0x7f) return 0;
    }
    return 1;
}

/* http_head.HOST_CHARS: reg-name, an IP literal, a port. */
static int host_ok(span h) {
    if (h.n == 0) return 0;
    for (size_t i = 0; i < h.n; i++) {
        unsigned char c = (unsigned char)h.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || (c && strchr("-._~!$&'()*+,;=%:[]", c) != NULL)))
            return 0;
    }
    return 1;
}

/* A Content-Length value: digits only, at most 18 (beyond any body we would take). -1 if
 * not one. */
static long long length_of(span v) {
    if (v.n == 0 || v.n > 18) return -1;
    long long n = 0;
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9') return -1;
        n = n * 10 + (v.p[i] - '0');
    }
    return n;
}

static PyObject *pair(span name, span value) {
    PyObject *t = PyTuple_New(2);
    PyObject *n = PyBytes_FromStringAndSize(name.p, (Py_ssize_t)name.n);
    PyObject *v = PyBytes_FromStringAndSize(value.p, (Py_ssize_t)value.n);
    if (!t || !n || !v) {
        Py_XDECREF(t); Py_XDECREF(n); Py_XDECREF(v);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, n);
    PyTuple_SET_ITEM(t, 1, v);
    PyObject_GC_UnTrack(t);  /* two bytes: never in a cycle */
    return t;
}

static PyObject *refused(int status, PyObject *reason, PyObject *fields, char *cookie) {
    Py_XDECREF(fields);
    PyMem_Free(cookie);
    if (!reason) return NULL;
    /* every item of its declared type, as compiled callers check (fields: an empty list) */
    return Py_BuildValue("(iNyyy[]yiOOOO)", status, reason, "", "", "", "", -1, Py_False,
                         Py_False, Py_False, Py_False);
}

typedef struct {
    span method, target, authority, protocol, host;
    char *cookie;
    size_t cookie_len, cookie_cap, cookies;
    long long length;
    Py_ssize_t counted;  /* fields passed on, each Cookie field included */
    int forwarded;
} request_t;

/* One regular field: 0 taken, > 0 the status it is refused with (reason set), -1 error. */
static int take_field(request_t *r, PyObject *fields, span name, span value, long max_line,
                      PyObject **reason) {
    if ((long)(name.n + value.n + 2) > max_line) {
        *reason = PyUnicode_FromFormat("header line longer than %ld bytes", max_line);
        return 431;
    }
    if (is(name, "sec-websocket-key")) return 0;  /* HTTP/2 has none (RFC 8441 §5) */
    switch (dropped(name)) {
    case 0: break;
    case 2: r->host = value; return 0;
    case 3: {
        size_t need = r->cookie_len + (r->cookies ? 2 : 0) + value.n;
        if (dn_grow(&r->cookie, &r->cookie_cap, need + 1)) {
            PyErr_NoMemory();
            return -1;
        }
        if (r->cookies++) {
            memcpy(r->cookie + r->cookie_len, "; ", 2);
            r->cookie_len += 2;
        }
        memcpy(r->cookie + r->cookie_len, value.p, value.n);
        r->cookie_len += value.n;
        r->counted++;
        return 0;
    }
    case 4: {
        long long n = length_of(value);
        if (n < 0 || (r->length >= 0 && n != r->length)) {
            *reason = PyUnicode_FromString("bad content-length");
            return 400;
        }
        r->length = n;
        return 0;
    }
    default: return 0;
    }
    if (forwarding(name)) r->forwarded = 1;
    PyObject *f = pair(name, value);
    if (!f || PyList_Append(fields, f)) {
        Py_XDECREF(f);
        return -1;
    }
    Py_DECREF(f);
    r->counted++;
    return 0;
}

PyObject *dn_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    long max_headers, max_line;
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "request(block, max_headers, max_line)");
        return NULL;
    }
    if ((max_headers = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred()) return NULL;
    if ((max_line = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred()) return NULL;
    const char *p = PyBytes_AS_STRING(args[0]);
    size_t len = (size_t)PyBytes_GET_SIZE(args[0]), off = 0;
    request_t r = {.length = -1};
    PyObject *fields = PyList_New(1), *reason = NULL;  /* [0]: Host, set at the end */
    if (!fields) return NULL;
    while (off < len) {
        uint32_t n, v;
        if (len - off < 4 || (memcpy(&n, p + off, 4), len - off - 4 < (size_t)n + 4)
            || (memcpy(&v, p + off + 4 + n, 4), len - off - 8 - n < v)) {
            PyErr_SetString(PyExc_ValueError, "request: not a header block");
            return refused(0, NULL, fields, r.cookie);
        }
        span name = {p + off + 4, n}, value = {p + off + 8 + n, v};
        off += 8 + (size_t)n + v;
        if (n && name.p[0] == ':') {
            if (is(name, ":method")) r.method = value;
            else if (is(name, ":path")) r.target = value;
            else if (is(name, ":authority")) r.authority = value;
            else if (is(name, ":protocol")) r.protocol = value;
            else if (!is(name, ":scheme"))  /* the listener's is what X-Forwarded-Proto says */
                return refused(400, PyUnicode_FromString("unknown pseudo-header field"), fields,
                               r.cookie);
            continue;
        }
        int rc = take_field(&r, fields, name, value, max_line, &reason);
        if (rc) return refused(rc, rc > 0 ? reason : NULL, fields, r.cookie);
    }
    if (r.counted > max_headers)
        return refused(431, PyUnicode_FromFormat("more than %ld header fields", max_headers),
                       fields, r.cookie);
    span host = r.authority.n ? r.authority : r.host;
    PyObject *h = pair((span){"host", 4}, host);
    if (!h) return refused(0, NULL, fields, r.cookie);
    PyList_SET_ITEM(fields, 0, h);
    /* (y# of a NULL pointer would be None) */
    PyObject *out = Py_BuildValue(
        "(isy#y#y#Ny#LOOOO)", 0, "", OR_EMPTY(r.method.p), (Py_ssize_t)r.method.n,
        OR_EMPTY(r.target.p), (Py_ssize_t)r.target.n, OR_EMPTY(r.protocol.p),
        (Py_ssize_t)r.protocol.n, fields, OR_EMPTY(r.cookie), (Py_ssize_t)r.cookie_len, r.length,
        r.forwarded ? Py_False : Py_True, method_ok(r.method) ? Py_True : Py_False,
        target_ok(r.target, r.method) ? Py_True : Py_False, host_ok(host) ? Py_True : Py_False);
    PyMem_Free(r.cookie);
    return out;
}
