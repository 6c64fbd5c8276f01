/* The session-ticket key callback of dlba/tls/tickets.py, in C.
 *
 * OpenSSL calls it in every full handshake (to encrypt the new ticket) and in every resumption
 * (to find the key of the offered one). The same logic in Python, through ctypes, cost ~30 us
 * of a ~900 us handshake (perf, bench/README "Python frames in perf"); here it is a few
 * hundred nanoseconds plus the HMAC/AES set-up OpenSSL needs anyway.
 *
 * OpenSSL's callback has no user-data argument, and each SSL_CTX may have its own key ring,
 * so there are SLOTS callbacks, one per slot; tls_tickets.py gives each context a free slot
 * and keeps the slot's ring in step with its TicketKeyRing (dlba_ticket_set). Each slot is
 * double-buffered: a set writes the idle copy, then flips the index, so a handshake running
 * while the ring is replaced reads one whole ring, old or new.
 *
 * A ticket that decrypts is renewed (return 2, a fresh ticket under the current key, as nginx
 * does) in TLS 1.3 always: clients use a TLS 1.3 ticket once and many keep a session only when
 * a ticket arrives (curl, s_client -sess_out), so without a fresh ticket after each resumption
 * their next connection is a full handshake. In TLS 1.2 only when its key is an older one: a
 * TLS 1.2 client keeps resuming with its ticket. Same rule as tls_tickets.decrypt_result.
 * The library links libcrypto only, so SSL_version comes as a pointer from the loader (the
 * libssl Python's ssl uses); until it is given, every resumption is renewed.
 *
 * Build: clang -O2 -Wall -Wextra -Werror -shared -fPIC -o dlba/tls/_ticket_cb.so dlba/tls/ticket_cb.c -lcrypto
 */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#define SLOTS 16
#define RING 8
#define NAME_LEN 16
#define HMAC_LEN 32
#define AES_LEN 32
#define IV_LEN 16

struct key {
    unsigned char name[NAME_LEN], hmac[HMAC_LEN], aes[AES_LEN];
};

struct ring {
    int n;
    struct key keys[RING];
};

static struct ring rings[SLOTS][2];
static int current[SLOTS];
static int (*ssl_version)(const SSL *);

static int ticket(int slot, const SSL *s, unsigned char *name, unsigned char *iv,
                  EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    const struct ring *r = &rings[slot][__atomic_load_n(&current[slot], __ATOMIC_ACQUIRE)];
    const struct key *k = NULL;
    int older = 0;

    if (enc) {
        if (r->n < 1)
            return 0; /* no key: no ticket */
        k = &r->keys[0];
        if (RAND_bytes(iv, IV_LEN) != 1)
            return 0;
        memcpy(name, k->name, NAME_LEN);
    } else {
        for (int i = 0; i < r->n; i++) {
            if (memcmp(name, r->keys[i].name, NAME_LEN) == 0) {
                k = &r->keys[i];
                older = i != 0;
                break;
            }
        }
        if (k == NULL)
            return 0; /* unknown or rotated off: full handshake */
    }
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, HMAC_LEN);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return 0;
    if (enc)
        return EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1 ? 1 : 0;
    if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
        return 0;
    /* 2: resume and send a fresh ticket; 1: resume (see the top of this file) */
    int (*version)(const SSL *) = __atomic_load_n(&ssl_version, __ATOMIC_ACQUIRE);
    return older || version == NULL || version(s) == TLS1_3_VERSION ? 2 : 1;
}

typedef int (*ticket_cb)(SSL *, unsigned char *, unsigned char *, EVP_CIPHER_CTX *,
                         EVP_MAC_CTX *, int);

#define CB(i)                                                                                  \
    static int cb##i(SSL *s, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,    \
                     EVP_MAC_CTX *hctx, int enc)                                              \
    {                                                                                          \
        return ticket(i, s, name, iv, cctx, hctx, enc);                                        \
    }
CB(0) CB(1) CB(2) CB(3) CB(4) CB(5) CB(6) CB(7)
CB(8) CB(9) CB(10) CB(11) CB(12) CB(13) CB(14) CB(15)

static const ticket_cb callbacks[SLOTS] = {
    cb0, cb1, cb2, cb3, cb4, cb5, cb6, cb7, cb8, cb9, cb10, cb11, cb12, cb13, cb14, cb15,
};

int dlba_ticket_slots(void) { return SLOTS; }

int dlba_ticket_ring_max(void) { return RING; }

int dlba_ticket_key_size(void) { return (int)sizeof(struct key); }

/* The callback of a slot, for SSL_CTX_set_tlsext_ticket_key_evp_cb. */
void *dlba_ticket_callback(int slot)
{
    return slot >= 0 && slot < SLOTS ? (void *)callbacks[slot] : NULL;
}

/* OpenSSL's SSL_version, for telling TLS 1.3 resumptions from TLS 1.2 ones. */
void dlba_ticket_use_ssl_version(int (*fn)(const SSL *))
{
    __atomic_store_n(&ssl_version, fn, __ATOMIC_RELEASE);
}

/* Replace a slot's ring: n keys of name|hmac|aes (80 bytes each), the current one first. */
int dlba_ticket_set(int slot, const unsigned char *keys, int n)
{
    if (slot < 0 || slot >= SLOTS || n < 0 || n > RING)
        return 0;
    int idle = 1 - __atomic_load_n(&current[slot], __ATOMIC_ACQUIRE);
    struct ring *r = &rings[slot][idle];
    memcpy(r->keys, keys, (size_t)n * sizeof(struct key));
    r->n = n;
    __atomic_store_n(&current[slot], idle, __ATOMIC_RELEASE);
    return 1;
}

/* Forget a slot's keys (its context is gone). */
void dlba_ticket_clear(int slot)
{
    if (slot < 0 || slot >= SLOTS)
        return;
    OPENSSL_cleanse(rings[slot], sizeof(rings[slot]));
    __atomic_store_n(&current[slot], 0, __ATOMIC_RELEASE);
}
