/* A back end's HTTP/1.1 response head as HTTP/2 fields, in C: h2_headers.response_fields'
 * rules (names lower-cased, hop-by-hop fields and those Connection names dropped, Content-
 * Length dropped when the body is re-framed, HSTS added unless the back end sent its own),
 * made straight into nghttp2's name/value array instead of a list of new tuples per response.
 *
 * Session.response(sid, status, headers, extra, hsts, framed, tokens) submits the head (0, or
 * -1 when nghttp2 refused it); response_fields(...) gives the same fields as a list (tests
 * hold it to the Python twin). */
#include "nghttp2_ext.h"

#include <string.h>

typedef struct {
    nghttp2_nv *nva;
    Py_ssize_t n, cap;
    char *names;  /* lower-cased names and the status, pointed to by nva until submitted */
    size_t used, size;
    nghttp2_nv stack_nv[48];
    char stack_names[2048];
} fields_t;

int dn_hop_by_hop(const char *p, size_t n) {
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(p, lit, n) == 0)
    switch (n) {
    case 2: return IS("te");
    case 7: return IS("upgrade") || IS("trailer");
    case 10: return IS("connection") || IS("keep-alive");
    case 16: return IS("proxy-connection");
    case 17: return IS("transfer-encoding");
    case 18: return IS("proxy-authenticate");
    case 19: return IS("proxy-authorization");
    default: return 0;
    }
#undef IS
}

static void fields_free(fields_t *f) {
    if (f->nva != f->stack_nv) PyMem_Free(f->nva);
    if (f->names != f->stack_names) PyMem_Free(f->names);
}

/* Room for `count` more fields and `bytes` more name bytes; 0, or -1 with an error set. The
 * names buffer never moves once a field points into it: it is sized for all up front. */
static int fields_init(fields_t *f, Py_ssize_t count, size_t bytes) {
    f->nva = f->stack_nv;
    f->cap = (Py_ssize_t)(sizeof f->stack_nv / sizeof f->stack_nv[0]);
    f->names = f->stack_names;
    f->size = sizeof f->stack_names;
    f->n = 0;
    f->used = 0;
    if (count > f->cap) {
        if (!(f->nva = PyMem_Malloc((size_t)count * sizeof *f->nva))) goto fail;
        f->cap = count;
    }
    if (bytes > f->size) {
        if (!(f->names = PyMem_Malloc(bytes))) goto fail;
        f->size = bytes;
    }
    return 0;
fail:
    fields_free(f);
    PyErr_NoMemory();
    return -1;
}

static void add(fields_t *f, const char *name, size_t nl, const char *value, size_t vl) {
    /* (a field holding NUL is dropped, as make_nva drops it: HTTP/2 forbids it) */
    if (memchr(name, 0, nl) || memchr(value, 0, vl)) return;
    nghttp2_nv *nv = &f->nva[f->n++];
    nv->name = (uint8_t *)name;
    nv->namelen = nl;
    nv->value = (uint8_t *)value;
    nv->valuelen = vl;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

static const char *lower(fields_t *f, PyObject *name) {
    const char *p = PyBytes_AS_STRING(name);
    size_t n = (size_t)PyBytes_GET_SIZE(name);
    char *out = f->names + f->used;
    for (size_t i = 0; i < n; i++) out[i] = (char)Py_TOLOWER((unsigned char)p[i]);
    f->used += n;
    return out;
}

static int pair_of(PyObject *item, PyObject **name, PyObject **value) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2
        || !PyBytes_Check(*name = PyTuple_GET_ITEM(item, 0))
        || !PyBytes_Check(*value = PyTuple_GET_ITEM(item, 1))) {
        PyErr_SetString(PyExc_TypeError, "a field is a (bytes, bytes) tuple");
        return -1;
    }
    return 0;
}

/* The fields of one response into f; 0, or -1 with an error set. args: status, headers,
 * extra, hsts, framed, tokens (a set of lower-case names; empty: none). */
static int build(fields_t *f, PyObject *const *args) {
    long status = PyLong_AsLong(args[0]);
    if (status == -1 && PyErr_Occurred()) return -1;
    if (!(PyList_Check(args[1]) || PyTuple_Check(args[1]))
        || !(PyList_Check(args[2]) || PyTuple_Check(args[2])) || !PyBytes_Check(args[3])
        || !PyAnySet_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "(status, headers: list, extra: list, hsts: bytes, "
                                         "framed, tokens: set)");
        return -1;
    }
    int framed = PyObject_IsTrue(args[4]);
    if (framed < 0) return -1;
    PyObject *headers = args[1], *extra = args[2], *tokens = args[5];
    Py_ssize_t nh = PySequence_Fast_GET_SIZE(headers), ne = PySequence_Fast_GET_SIZE(extra);
    PyObject **hitems = PySequence_Fast_ITEMS(headers), **eitems = PySequence_Fast_ITEMS(extra);
    size_t bytes = 24;  /* the status's digits */
    for (Py_ssize_t i = 0; i < nh + ne; i++) {
        PyObject *item = i < nh ? hitems[i] : eitems[i - nh], *name, *value;
        if (pair_of(item, &name, &value)) return -1;
        bytes += (size_t)PyBytes_GET_SIZE(name);
    }
    if (fields_init(f, nh + ne + 2, bytes)) return -1;
    char *digits = f->names;
    f->used = (size_t)snprintf(digits, 24, "%ld", status);
    add(f, ":status", 7, digits, f->used);
    const char *hsts = PyBytes_AS_STRING(args[3]);
    size_t hsts_len = (size_t)PyBytes_GET_SIZE(args[3]);
    int some_tokens = PySet_GET_SIZE(tokens) > 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *name, *value;
        pair_of(hitems[i], &name, &value);
        size_t nl = (size_t)PyBytes_GET_SIZE(name);
        size_t mark = f->used;
        const char *low = lower(f, name);
        int drop = dn_hop_by_hop(low, nl)
                   || (!framed && nl == 14 && !memcmp(low, "content-length", 14));
        if (!drop && some_tokens) {
            PyObject *key = PyBytes_FromStringAndSize(low, (Py_ssize_t)nl);
            if (!key || (drop = PySet_Contains(tokens, key)) < 0) {
                Py_XDECREF(key);
                fields_free(f);
                return -1;
            }
            Py_DECREF(key);
        }
        if (drop) {
            f->used = mark;  /* its lower-cased name is not needed */
            continue;
        }
        if (hsts_len && nl == 25 && !memcmp(low, "strict-transport-security", 25))
            hsts_len = 0;  /* the back end's own policy wins, never two */
        add(f, low, nl, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
    }
    for (Py_ssize_t i = 0; i < ne; i++) {
        PyObject *name = PyTuple_GET_ITEM(eitems[i], 0), *value = PyTuple_GET_ITEM(eitems[i], 1);
        add(f, lower(f, name), (size_t)PyBytes_GET_SIZE(name), PyBytes_AS_STRING(value),
            (size_t)PyBytes_GET_SIZE(value));
    }
    if (hsts_len) add(f, "strict-transport-security", 25, hsts, hsts_len);
    return 0;
}

PyObject *dn_response_fields(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    fields_t f;
    if (dn_nargs(nargs, 6, "response_fields") || build(&f, args)) return NULL;
    PyObject *out = PyList_New(f.n);
    for (Py_ssize_t i = 0; out && i < f.n; i++) {
        PyObject *t = Py_BuildValue("(y#y#)", f.nva[i].name, (Py_ssize_t)f.nva[i].namelen,
                                    f.nva[i].value, (Py_ssize_t)f.nva[i].valuelen);
        if (!t) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, t);
    }
    fields_free(&f);
    return out;
}

PyObject *dn_session_response(Session *s, PyObject *const *args, Py_ssize_t nargs) {
    fields_t f;
    int32_t sid;
    if (dn_nargs(nargs, 7, "response") || dn_arg_sid(args[0], &sid) || build(&f, args + 1))
        return NULL;
    int rc = dn_submit_head(s, sid, f.nva, (size_t)f.n, 0);
    fields_free(&f);
    return PyLong_FromLong(rc);
}
