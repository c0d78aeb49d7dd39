/* The part of the Redis module ABI that keywire_redis.c uses, declared by hand.
 *
 * Why by hand: Debian ships no redismodule.h. The ABI is small and documented (redis.io,
 * "Modules API reference"): a module exports RedisModule_OnLoad; the context Redis passes
 * there carries, in its first pointer-sized field, a lookup function that returns any API
 * function by its name ("RedisModule_<Name>"). Everything below is that lookup, the
 * function types keywire calls, and the few constants those functions take or return.
 */
#ifndef KW_REDISMODULE_H
#define KW_REDISMODULE_H

#include <stddef.h>

#define KW_RM_OK 0
#define KW_RM_ERR 1
#define KW_RM_APIVER_1 1

/* RedisModule_CallReplyType results */
#define KW_RM_REPLY_STRING 0
#define KW_RM_REPLY_ERROR 1
#define KW_RM_REPLY_INTEGER 2
#define KW_RM_REPLY_ARRAY 3
#define KW_RM_REPLY_NULL 4

typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleString RedisModuleString;
typedef struct RedisModuleCallReply RedisModuleCallReply;
typedef int (*kw_rm_command)(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);

/* The API functions keywire uses, fetched by name when the module loads. */
struct kw_rm_api {
    int (*IsModuleNameBusy)(const char *name); /* optional: older servers lack it */
    void (*SetModuleAttribs)(RedisModuleCtx *ctx, const char *name, int ver, int apiver);
    int (*CreateCommand)(RedisModuleCtx *ctx, const char *name, kw_rm_command func,
                         const char *flags, int firstkey, int lastkey, int keystep);
    const char *(*StringPtrLen)(const RedisModuleString *str, size_t *len);
    int (*StringToLongLong)(const RedisModuleString *str, long long *out);
    int (*WrongArity)(RedisModuleCtx *ctx);
    int (*ReplyWithError)(RedisModuleCtx *ctx, const char *err);
    int (*ReplyWithLongLong)(RedisModuleCtx *ctx, long long value);
    RedisModuleCallReply *(*Call)(RedisModuleCtx *ctx, const char *cmd, const char *fmt, ...);
    int (*CallReplyType)(RedisModuleCallReply *reply);
    const char *(*CallReplyStringPtr)(RedisModuleCallReply *reply, size_t *len);
    void (*FreeCallReply)(RedisModuleCallReply *reply);
    void *(*Alloc)(size_t bytes);
    void (*Free)(void *ptr);
    void (*Log)(RedisModuleCtx *ctx, const char *level, const char *fmt, ...);
};

/* Fill *api from the lookup function in ctx's first field and register the module's name;
 * KW_RM_ERR if a required function is missing or the name is taken. */
static inline int kw_rm_init(RedisModuleCtx *ctx, struct kw_rm_api *api, const char *name,
                             int version) {
    int (*lookup)(const char *, void *) = (int (*)(const char *, void *))((void **)ctx)[0];
    int missing = 0;
#define KW_RM_FETCH(field) missing |= lookup("RedisModule_" #field, (void *)&api->field)
    KW_RM_FETCH(SetModuleAttribs);
    KW_RM_FETCH(CreateCommand);
    KW_RM_FETCH(StringPtrLen);
    KW_RM_FETCH(StringToLongLong);
    KW_RM_FETCH(WrongArity);
    KW_RM_FETCH(ReplyWithError);
    KW_RM_FETCH(ReplyWithLongLong);
    KW_RM_FETCH(Call);
    KW_RM_FETCH(CallReplyType);
    KW_RM_FETCH(CallReplyStringPtr);
    KW_RM_FETCH(FreeCallReply);
    KW_RM_FETCH(Alloc);
    KW_RM_FETCH(Free);
    KW_RM_FETCH(Log);
#undef KW_RM_FETCH
    if (missing != KW_RM_OK) return KW_RM_ERR;
    if (lookup("RedisModule_IsModuleNameBusy", (void *)&api->IsModuleNameBusy) != KW_RM_OK)
        api->IsModuleNameBusy = NULL;
    if (api->IsModuleNameBusy != NULL && api->IsModuleNameBusy(name)) return KW_RM_ERR;
    api->SetModuleAttribs(ctx, name, version, KW_RM_APIVER_1);
    return KW_RM_OK;
}

#endif
