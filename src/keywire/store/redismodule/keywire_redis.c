/* keywire-redis: a Redis module whose KEYWIRE.PUT stores a store-stream frame only if it
 * carries a valid signature for its address, once.
 *
 * Why a module: Redis's Lua has no Ed25519 (and no SHA-512), so a script can keep an
 * address write-once but cannot refuse an unsigned or forged put; anyone with access to
 * Redis could then take a future frame's address first. Here the server verifies.
 *
 *   KEYWIRE.PUT key body ttl_ms max_value [PUBLISH|SPUBLISH channel]
 *
 * key      the Redis key: its hash tag ("kw:{<hex>}:v", Redis Cluster) or else its last 64
 *          characters ("kw:v:<hex>") are the 32-byte address in hex, which is the frame's
 *          blinded Ed25519 public key (docs/store.md "Write capabilities")
 * body     signature (64 bytes) || payload (at least one byte); the signature must verify
 *          under the address over address || payload (libsodium crypto_sign_verify_detached)
 * ttl_ms   expiry of a stored value, > 0
 * max_value the largest body accepted (the client's limit, as keywire's put script takes it)
 * channel  published to ("1") when the put stored something: PUBLISH on one Redis,
 *          SPUBLISH on a cluster (the channel shares the key's hash tag, so its slot)
 *
 * Reply: 1 stored; 0 the same bytes were there (a retransmission); -1 other bytes hold the
 * address (write-once: nothing changed). Errors: TOOLARGE <n>, KWADDR (the key names no
 * address), KWSIG (short body, invalid point, or the signature does not verify).
 * Everything is one command, so it is atomic like the Lua script it replaces.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "kw_redismodule.h"

#define ADDRESS_BYTES 32
#define ADDRESS_HEX (2 * ADDRESS_BYTES)
#define SIGNATURE_BYTES 64

static struct kw_rm_api rm;

/* The address a key names: its hash tag if it has one, else its last 64 characters. */
static int key_address(const char *key, size_t len, unsigned char out[ADDRESS_BYTES]) {
    const char *hex = NULL;
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t rest = len - (size_t)(open + 1 - key);
        const char *close = memchr(open + 1, '}', rest);
        if (close != NULL && close > open + 1) { /* a hash tag, as Redis Cluster reads it */
            if (close - open - 1 != ADDRESS_HEX) return -1;
            hex = open + 1;
        }
    }
    if (hex == NULL) {
        if (len < ADDRESS_HEX) return -1;
        hex = key + len - ADDRESS_HEX;
    }
    size_t decoded = 0;
    const char *end = NULL;
    if (sodium_hex2bin(out, ADDRESS_BYTES, hex, ADDRESS_HEX, NULL, &decoded, &end) != 0)
        return -1;
    return decoded == ADDRESS_BYTES && end == hex + ADDRESS_HEX ? 0 : -1;
}

/* 0 if body = signature || payload verifies under address over address || payload. */
static int verify(const unsigned char address[ADDRESS_BYTES], const unsigned char *body,
                  size_t len, const char **why) {
    if (len <= SIGNATURE_BYTES) {
        *why = "KWSIG a signed put is a 64-byte signature and at least one byte of payload";
        return -1;
    }
    if (!crypto_core_ed25519_is_valid_point(address)) {
        *why = "KWSIG the key's address is not a valid Ed25519 public key";
        return -1;
    }
    size_t payload = len - SIGNATURE_BYTES;
    unsigned char *message = rm.Alloc(ADDRESS_BYTES + payload);
    memcpy(message, address, ADDRESS_BYTES);
    memcpy(message + ADDRESS_BYTES, body + SIGNATURE_BYTES, payload);
    int bad = crypto_sign_verify_detached(body, message, ADDRESS_BYTES + payload, address);
    rm.Free(message);
    if (bad != 0) *why = "KWSIG the signature does not verify under the key's address";
    return bad != 0 ? -1 : 0;
}

/* Does the stored value equal body? (-1: the read failed) */
static int holds(RedisModuleCtx *ctx, RedisModuleString *key, const char *body, size_t len) {
    RedisModuleCallReply *reply = rm.Call(ctx, "GET", "s", key);
    if (reply == NULL) return -1;
    int same = -1;
    if (rm.CallReplyType(reply) == KW_RM_REPLY_STRING) {
        size_t have = 0;
        const char *stored = rm.CallReplyStringPtr(reply, &have);
        same = have == len && memcmp(stored, body, len) == 0;
    } else if (rm.CallReplyType(reply) == KW_RM_REPLY_NULL) {
        same = 0; /* gone (cannot happen inside one command): not ours, so refused */
    }
    rm.FreeCallReply(reply);
    return same;
}

static int put_command(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 5 && argc != 7) return rm.WrongArity(ctx);
    long long ttl = 0, max_value = 0;
    if (rm.StringToLongLong(argv[3], &ttl) != KW_RM_OK || ttl <= 0)
        return rm.ReplyWithError(ctx, "ERR ttl_ms must be a positive integer");
    if (rm.StringToLongLong(argv[4], &max_value) != KW_RM_OK || max_value < 0)
        return rm.ReplyWithError(ctx, "ERR max_value must be a non-negative integer");
    const char *publish = NULL;
    if (argc == 7) {
        size_t n = 0;
        const char *how = rm.StringPtrLen(argv[5], &n);
        if (n == 7 && strncasecmp(how, "PUBLISH", 7) == 0) {
            publish = "PUBLISH";
        } else if (n == 8 && strncasecmp(how, "SPUBLISH", 8) == 0) {
            publish = "SPUBLISH";
        } else {
            return rm.ReplyWithError(ctx, "ERR expected PUBLISH or SPUBLISH before the channel");
        }
    }
    size_t key_len = 0, body_len = 0;
    const char *key = rm.StringPtrLen(argv[1], &key_len);
    const char *body = rm.StringPtrLen(argv[2], &body_len);
    if ((long long)body_len > max_value) {
        char error[48];
        snprintf(error, sizeof error, "TOOLARGE %zu", body_len);
        return rm.ReplyWithError(ctx, error);
    }
    unsigned char address[ADDRESS_BYTES];
    if (key_address(key, key_len, address) != 0)
        return rm.ReplyWithError(ctx, "KWADDR the key's hash tag or its last 64 characters "
                                      "must be the address in hex");
    const char *why = NULL;
    if (verify(address, (const unsigned char *)body, body_len, &why) != 0)
        return rm.ReplyWithError(ctx, why);

    RedisModuleCallReply *set = rm.Call(ctx, "SET", "!ssccl", argv[1], argv[2], "NX", "PX", ttl);
    if (set == NULL) return rm.ReplyWithError(ctx, "ERR keywire.put: SET failed");
    int kind = rm.CallReplyType(set);
    rm.FreeCallReply(set);
    if (kind == KW_RM_REPLY_ERROR) return rm.ReplyWithError(ctx, "ERR keywire.put: SET refused");
    if (kind == KW_RM_REPLY_NULL) { /* taken: a retransmission, or other bytes */
        int same = holds(ctx, argv[1], body, body_len);
        if (same < 0) return rm.ReplyWithError(ctx, "ERR keywire.put: GET failed");
        return rm.ReplyWithLongLong(ctx, same ? 0 : -1);
    }
    if (publish != NULL) {
        RedisModuleCallReply *sent = rm.Call(ctx, publish, "!sc", argv[6], "1");
        if (sent != NULL) rm.FreeCallReply(sent); /* a lost wake-up costs a 2 s recheck */
    }
    return rm.ReplyWithLongLong(ctx, 1);
}

/* the one symbol Redis looks for; everything else stays hidden (-fvisibility=hidden) */
__attribute__((visibility("default"))) int RedisModule_OnLoad(RedisModuleCtx *ctx,
                                                              RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    if (kw_rm_init(ctx, &rm, "keywire", 1) != KW_RM_OK) return KW_RM_ERR;
    if (sodium_init() < 0) {
        rm.Log(ctx, "warning", "keywire: libsodium failed to initialise");
        return KW_RM_ERR;
    }
    /* a write command whose one key is argument 1, so Redis Cluster routes it by that key;
     * deny-oom: at maxmemory it is refused before it runs, as a SET would be */
    if (rm.CreateCommand(ctx, "keywire.put", put_command, "write deny-oom", 1, 1, 1) != KW_RM_OK)
        return KW_RM_ERR;
    return KW_RM_OK;
}
