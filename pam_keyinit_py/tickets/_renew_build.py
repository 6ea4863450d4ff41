"""cffi (API, out-of-line) build of the libkrb5 calls the service makes without the GIL, or that
pykrb5 lacks.

pykrb5 0.10 calls krb5_get_renewed_creds while holding the GIL.  libkrb5 offers no
timeout (MIT has no kdc_timeout), so a KDC that accepts the connection and never answers
froze every thread of keyinit-ticketd — logins, session opens and closes included —
for as long as libkrb5 waited.  cffi releases the GIL around API-mode calls, so this
small C function does the TGS renewal exchange and hands the new credential back
marshalled (krb5_marshal_credentials, the FILE/KCM format); the caller turns it into a
pykrb5 Creds with krb5.unmarshal_credentials and writes it with pykrb5 as before.

pykrb5 0.10 has no krb5_verify_init_creds either: ``pk_verify_marshalled`` takes a TGT
marshalled by krb5.marshal_credentials and validates it against the host keytab (a TGS
exchange for the host principal, then krb5_rd_req with the keytab key), also without the GIL.

``pk_set_password``: an initial ticket for kadmin/changepw with the old password, then
krb5_set_password (the kpasswd exchange).  pykrb5 0.10's set_password holds the GIL for the
whole kpasswd exchange (measured: a kpasswd server that accepts and never answers froze every
thread for 24 s); here the GIL is released.

``pk_kuserok``: krb5_kuserok (~/.k5login, else auth_to_local), which pykrb5 0.10 does not
bind; the account check of a login (``pam_sm_acct_mgmt``) asks it whether a principal may
log in to a local account.

``pk_init_creds_answered``: krb5_get_init_creds_password with a prompter that answers the KDC's
preauth questions (OTP) from a list, in order.  pykrb5 0.10's prompter cannot: it points each
reply's krb5_data at the Python bytes instead of filling libkrb5's buffer, and MIT's OTP client
reads its own buffer (preauth_otp.c doprompt/prompt_for_token), so the KDC got an empty token
(measured: "preauth (otp) verify failure").  A question the list does not cover is recorded and
the exchange stops before anything is sent for it (KRB5_LIBOS_CANTREADPWD).
"""

from cffi import FFI

CDEF = """
#define PK_KEPT_SECONDS ...
int pk_renew_marshalled(const char *ccname, const char *profile_path,
                        unsigned char **out, size_t *outlen, char *err, size_t errlen);
void pk_free(void *p, size_t len);
int pk_verify_marshalled(const unsigned char *data, size_t len, const char *server,
                         const char *keytab, const char *profile_path, char *server_out,
                         size_t server_outlen, char *err, size_t errlen);
int pk_host_principal(const char *profile_path, char *out, size_t outlen);
int pk_set_password(const char *profile_path, const char *principal, int enterprise, const char *oldpw,
                    const char *newpw, const char *armor_ccache, int fast_required,
                    int *result_code, char *msg, size_t msglen, char *err, size_t errlen);
int pk_kuserok(const char *profile_path, const char *principal, int enterprise, const char *luser,
               char *err, size_t errlen);
int pk_init_creds_answered(const char *profile_path, const char *principal, int enterprise,
                           int tkt_life, int renew_life, int forwardable, int canonicalize,
                           const char *armor_ccache, int fast_required, const char *password,
                           const char *const *answers, int n_answers, int *used, int *restarted,
                           char *asked, size_t asked_len, int *asked_count,
                           unsigned char **out, size_t *outlen, char *err, size_t errlen);
"""

SOURCE = r"""
#include <krb5/krb5.h>
#include <profile.h>
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Free a marshalled credential (it holds the session key): zeroed first. */
static void pk_free(void *p, size_t len)
{
    if (p != NULL && len)
        explicit_bzero(p, len);
    free(p);
}

static krb5_error_code pk_context(const char *profile_path, krb5_context *ctx)
{
    const_profile_filespec_t files[2] = { profile_path, NULL };
    profile_t profile = NULL;
    krb5_error_code ret;

    if (profile_path == NULL)
        return krb5_init_context(ctx);
    ret = profile_init(files, &profile);
    if (ret)
        return ret;
    ret = krb5_init_context_profile(profile, 0, ctx);
    profile_release(profile);
    return ret;
}

/* This thread's context for `profile_path`, kept for the thread's next call (the service's KDC
 * helper and worker threads are reused) for at most PK_KEPT_SECONDS, and freed when the thread
 * ends.  Making one costs a profile parse and libkrb5's plugin set-up on every call, which a
 * burst of logins now pays once per thread.  What a kept context sees of an edited krb5.conf:
 * libkrb5 shares one parsed profile among all the contexts of a process and parses it again
 * when the top file's mtime changes (looked at most once a second), so an edit there is seen at
 * once, by kept and fresh contexts alike (an edit of a file it includes is seen only then:
 * `touch /etc/krb5.conf`).  But a context also caches values itself on first use (the default
 * realm, which krb5_kuserok's auth_to_local compares with); the age bound puts such an edit
 * into effect within PK_KEPT_SECONDS.  Free it with pk_release, never krb5_free_context. */
#define PK_KEPT_SECONDS 5
struct pk_kept { krb5_context ctx; char *path; struct timespec made; };
static pthread_key_t pk_kept_key;
static pthread_once_t pk_kept_once = PTHREAD_ONCE_INIT;
static int pk_kept_ok;

static void pk_kept_free(void *p)
{
    struct pk_kept *kept = p;

    if (kept == NULL)
        return;
    if (kept->ctx != NULL)
        krb5_free_context(kept->ctx);
    free(kept->path);
    free(kept);
}

static void pk_kept_key_make(void)
{
    pk_kept_ok = pthread_key_create(&pk_kept_key, pk_kept_free) == 0;
}

static struct pk_kept *pk_kept_get(void)
{
    if (pthread_once(&pk_kept_once, pk_kept_key_make) != 0 || !pk_kept_ok)
        return NULL;
    return pthread_getspecific(pk_kept_key);
}

static int pk_same_path(const char *a, const char *b)
{
    return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

static krb5_error_code pk_thread_context(const char *profile_path, krb5_context *ctx)
{
    struct pk_kept *kept = pk_kept_get(), *old;
    struct timespec now;
    krb5_error_code ret;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (kept != NULL && pk_same_path(kept->path, profile_path) &&
        now.tv_sec - kept->made.tv_sec < PK_KEPT_SECONDS) {
        *ctx = kept->ctx;
        krb5_clear_error_message(*ctx);
        return 0;
    }
    ret = pk_context(profile_path, ctx);
    if (ret || !pk_kept_ok)
        return ret;
    /* Keep the new one in place of the old (another profile path: tests use several). */
    kept = calloc(1, sizeof(*kept));
    if (kept == NULL || (profile_path != NULL && (kept->path = strdup(profile_path)) == NULL)) {
        if (kept != NULL)
            free(kept->path);
        free(kept);
        return 0;  /* not kept: pk_release frees it */
    }
    kept->ctx = *ctx;
    kept->made = now;
    old = pthread_getspecific(pk_kept_key);
    if (pthread_setspecific(pk_kept_key, kept) != 0) {
        kept->ctx = NULL;  /* not kept: pk_release frees it; the old one stays kept */
        pk_kept_free(kept);
        return 0;
    }
    pk_kept_free(old);  /* only once the key no longer names it */
    return 0;
}

/* Free a context from pk_thread_context unless it is the one this thread keeps. */
static void pk_release(krb5_context ctx)
{
    struct pk_kept *kept = pk_kept_ok ? pthread_getspecific(pk_kept_key) : NULL;

    if (ctx != NULL && (kept == NULL || kept->ctx != ctx))
        krb5_free_context(ctx);
}

/* krb5_marshal_credentials of `creds` into a malloc'd copy (*out, freed with pk_free). */
static krb5_error_code pk_marshal(krb5_context ctx, krb5_creds *creds, unsigned char **out, size_t *outlen)
{
    krb5_data *data = NULL;
    krb5_error_code ret = krb5_marshal_credentials(ctx, creds, &data);

    if (ret)
        return ret;
    *out = malloc(data->length ? data->length : 1);
    if (*out == NULL) {
        ret = ENOMEM;
    } else {
        memcpy(*out, data->data, data->length);
        *outlen = data->length;
    }
    if (data->length)
        explicit_bzero(data->data, data->length);
    krb5_free_data(ctx, data);
    return ret;
}

/* The message of a failed call into err (never a secret: MIT's messages hold none). */
static void pk_error(krb5_context ctx, krb5_error_code ret, char *err, size_t errlen)
{
    const char *msg;

    if (!ret || !errlen)
        return;
    msg = krb5_get_error_message(ctx, ret);
    snprintf(err, errlen, "%s", msg);
    krb5_free_error_message(ctx, msg);
}

/* FAST: armor the AS exchange with the TGT in `armor_ccache` (a MEMORY cache, which every
 * context of this process sees); `required` refuses a KDC without FAST. */
static krb5_error_code pk_fast(krb5_context ctx, krb5_get_init_creds_opt *opt, const char *armor_ccache,
                               int required)
{
    krb5_error_code ret;

    if (armor_ccache == NULL)
        return 0;
    ret = krb5_get_init_creds_opt_set_fast_ccache_name(ctx, opt, armor_ccache);
    if (ret || !required)
        return ret;
    return krb5_get_init_creds_opt_set_fast_flags(ctx, opt, KRB5_FAST_REQUIRED);
}

/* The prompter of pk_init_creds_answered (a krb5_prompter_fct): answers each prompt from the
 * list, in order, into libkrb5's own reply buffer.  A batch the list does not cover is recorded
 * in `asked` (the banner, NUL, then per prompt '1' hidden / '0' echoed, its text, NUL; each
 * text clipped to PK_PROMPT_MAX) and refused, so nothing is sent for it.  When the first
 * question answered comes again, libkrb5 is starting over after the KDC refused the answers
 * (gic_pwd.c's retry on the primary KDC): `restarted`, refused too.  A message without prompts
 * (the password-expiry warning) is accepted and dropped. */
#define PK_PROMPT_MAX 256
struct pk_answers {
    const char *const *answers;
    int n, used, restarted, asked_count;
    char first[PK_PROMPT_MAX];
    char *asked;
    size_t asked_len, asked_pos;
};

static void pk_record(struct pk_answers *a, const char *lead, const char *text)
{
    size_t len = text ? strnlen(text, PK_PROMPT_MAX - 1) : 0, need = strlen(lead) + len + 1;

    if (a->asked_pos + need > a->asked_len)
        return;
    memcpy(a->asked + a->asked_pos, lead, strlen(lead));
    a->asked_pos += strlen(lead);
    if (len)
        memcpy(a->asked + a->asked_pos, text, len);
    a->asked_pos += len;
    a->asked[a->asked_pos++] = '\0';
}

static krb5_error_code pk_prompter(krb5_context ctx, void *data, const char *name,
                                   const char *banner, int num, krb5_prompt prompts[])
{
    struct pk_answers *a = data;
    int i;

    if (num <= 0)
        return 0;
    if (num > a->n - a->used) {
        if (a->first[0] && prompts[0].prompt != NULL &&
            strncmp(prompts[0].prompt, a->first, PK_PROMPT_MAX - 1) == 0) {
            a->restarted = 1;
            return KRB5_LIBOS_CANTREADPWD;
        }
        a->asked_pos = 0;
        a->asked_count = 0;
        pk_record(a, "", banner ? banner : (name ? name : ""));
        for (i = 0; i < num; i++) {
            size_t before = a->asked_pos;
            pk_record(a, prompts[i].hidden ? "1" : "0", prompts[i].prompt);
            if (a->asked_pos != before)
                a->asked_count++;
        }
        return KRB5_LIBOS_CANTREADPWD;
    }
    for (i = 0; i < num; i++) {
        const char *answer = a->answers[a->used];
        size_t len = strlen(answer);

        if (len >= prompts[i].reply->length)
            return KRB5_LIBOS_CANTREADPWD;  /* longer than libkrb5's buffer: never truncated */
        if (a->used == 0)
            snprintf(a->first, sizeof(a->first), "%s", prompts[i].prompt ? prompts[i].prompt : "");
        memcpy(prompts[i].reply->data, answer, len);
        prompts[i].reply->data[len] = '\0';
        prompts[i].reply->length = len;
        a->used++;
    }
    return 0;
}

/* krb5_get_init_creds_password(old password, in_tkt_service kadmin/changepw, FAST armor from
 * armor_ccache when given), then
 * krb5_set_password(new password) for the same principal.  Returns a krb5 code (err gets its
 * message); on 0, *result_code is the kpasswd result and msg its text (result string and
 * krb5_chpw_message of the server's answer).  No password is ever copied into msg or err. */
static int pk_set_password(const char *profile_path, const char *principal, int enterprise,
                           const char *oldpw, const char *newpw, const char *armor_ccache,
                           int fast_required, int *result_code, char *msg, size_t msglen, char *err,
                           size_t errlen)
{
    krb5_context ctx = NULL;
    krb5_principal princ = NULL;
    krb5_get_init_creds_opt *opt = NULL;
    krb5_creds creds;
    krb5_data code_string, result_string;
    char *server_msg = NULL;
    krb5_error_code ret;
    int have_creds = 0, have_result = 0;
    struct pk_answers none;

    memset(&creds, 0, sizeof(creds));
    memset(&code_string, 0, sizeof(code_string));
    memset(&result_string, 0, sizeof(result_string));
    *result_code = -1;
    if (msglen)
        msg[0] = '\0';
    if (errlen)
        err[0] = '\0';
    ret = pk_context(profile_path, &ctx);
    if (ret)
        return ret;
    /* A UPN (enterprise) is resolved by the KDC: the ticket, and so the change, are for the
     * account it names (creds.client), as the login's TGT is. */
    ret = krb5_parse_name_flags(ctx, principal, enterprise ? KRB5_PRINCIPAL_PARSE_ENTERPRISE : 0,
                                &princ);
    if (ret)
        goto out;
    ret = krb5_get_init_creds_opt_alloc(ctx, &opt);
    if (ret)
        goto out;
    /* A kadmin/changepw ticket is used once, here: nothing to forward, proxy or renew. */
    krb5_get_init_creds_opt_set_forwardable(opt, 0);
    krb5_get_init_creds_opt_set_proxiable(opt, 0);
    krb5_get_init_creds_opt_set_renew_life(opt, 0);
    if (enterprise)
        krb5_get_init_creds_opt_set_canonicalize(opt, 1);
    /* FAST: the old password travels inside the armor of the host's TGT. */
    ret = pk_fast(ctx, opt, armor_ccache, fast_required);
    if (ret)
        goto out;
    /* A prompter that answers nothing: krb5 1.20 calls a NULL one when the KDC offers OTP. */
    memset(&none, 0, sizeof(none));
    ret = krb5_get_init_creds_password(ctx, &creds, princ, oldpw, pk_prompter, &none, 0,
                                       "kadmin/changepw", opt);
    if (ret)
        goto out;
    have_creds = 1;
    ret = krb5_set_password(ctx, &creds, (char *)newpw, NULL, result_code, &code_string,
                            &result_string);
    if (ret)
        goto out;
    have_result = 1;
    if (*result_code != 0 && msglen) {
        if (result_string.length > 0 &&
            krb5_chpw_message(ctx, &result_string, &server_msg) != 0)
            server_msg = NULL;
        snprintf(msg, msglen, "%.*s%s%s", (int)code_string.length,
                 code_string.data ? code_string.data : "", server_msg ? ": " : "",
                 server_msg ? server_msg : "");
    }
out:
    pk_error(ctx, ret, err, errlen);
    if (server_msg != NULL)
        krb5_free_string(ctx, server_msg);
    if (have_result) {
        krb5_free_data_contents(ctx, &code_string);
        krb5_free_data_contents(ctx, &result_string);
    }
    if (have_creds)
        krb5_free_cred_contents(ctx, &creds);
    if (opt != NULL)
        krb5_get_init_creds_opt_free(ctx, opt);
    if (princ != NULL)
        krb5_free_principal(ctx, princ);
    krb5_free_context(ctx);
    return ret;
}

/* krb5_kuserok(principal, luser), the principal parsed as an enterprise name (a UPN) with
 * `enterprise`: 1 allowed, 0 refused, -1 when the principal does not parse or no context could
 * be made (err says why). */
int pk_kuserok(const char *profile_path, const char *principal, int enterprise, const char *luser,
               char *err, size_t errlen)
{
    krb5_context ctx = NULL;
    krb5_principal princ = NULL;
    krb5_error_code ret;
    int ok;

    if (errlen)
        err[0] = '\0';
    ret = pk_thread_context(profile_path, &ctx);
    if (ret) {
        if (errlen)
            snprintf(err, errlen, "cannot initialise krb5 (code %ld)", (long)ret);
        return -1;
    }
    ret = krb5_parse_name_flags(ctx, principal, enterprise ? KRB5_PRINCIPAL_PARSE_ENTERPRISE : 0,
                                &princ);
    if (ret) {
        if (errlen) {
            const char *msg = krb5_get_error_message(ctx, ret);
            snprintf(err, errlen, "%s", msg);
            krb5_free_error_message(ctx, msg);
        }
        pk_release(ctx);
        return -1;
    }
    ok = krb5_kuserok(ctx, princ, luser) ? 1 : 0;
    krb5_free_principal(ctx, princ);
    pk_release(ctx);
    return ok;
}

/* krb5_sname_to_principal(NULL, "host", KRB5_NT_SRV_HST): this host's host/ principal, as
 * kinit -k chooses it, in the default realm when no domain_realm entry names one (pykrb5 0.10
 * lacks sname_to_principal). */
static int pk_host_principal(const char *profile_path, char *out, size_t outlen)
{
    krb5_context ctx = NULL;
    krb5_principal princ = NULL;
    char *name = NULL;
    krb5_error_code ret;

    if (outlen)
        out[0] = '\0';
    ret = pk_context(profile_path, &ctx);
    if (ret)
        return ret;
    ret = krb5_sname_to_principal(ctx, NULL, "host", KRB5_NT_SRV_HST, &princ);
    if (ret == 0 && krb5_is_referral_realm(&princ->realm)) {
        /* No domain_realm mapping: the host is in the default realm (what kinit -k needs). */
        char *realm = NULL;
        ret = krb5_get_default_realm(ctx, &realm);
        if (ret == 0) {
            ret = krb5_set_principal_realm(ctx, princ, realm);
            krb5_free_default_realm(ctx, realm);
        }
    }
    if (ret == 0)
        ret = krb5_unparse_name(ctx, princ, &name);
    if (ret == 0 && outlen)
        snprintf(out, outlen, "%s", name);
    if (name != NULL)
        krb5_free_unparsed_name(ctx, name);
    if (princ != NULL)
        krb5_free_principal(ctx, princ);
    krb5_free_context(ctx);
    return ret;
}

/* krb5_verify_init_creds with ap_req_nofail: the TGT in ``data`` (krb5_marshal_credentials
 * format) must get a ticket for ``server`` (NULL or "": host/<canonical hostname>, as
 * krb5_sname_to_principal gives) that decrypts with that principal's key in ``keytab``
 * (NULL or "": the default keytab).  A TGT from a KDC that does not hold the host key fails.
 * server_out gets the principal tried.  Returns a krb5/com_err code; err gets its message. */
static int pk_verify_marshalled(const unsigned char *data, size_t len, const char *server,
                                const char *keytab, const char *profile_path, char *server_out,
                                size_t server_outlen, char *err, size_t errlen)
{
    krb5_context ctx = NULL;
    krb5_creds *creds = NULL;
    krb5_principal sprinc = NULL;
    krb5_keytab kt = NULL;
    krb5_verify_init_creds_opt vopt;
    krb5_data in;
    char *unparsed = NULL;
    krb5_error_code ret;

    if (errlen)
        err[0] = '\0';
    if (server_outlen)
        server_out[0] = '\0';
    ret = pk_thread_context(profile_path, &ctx);
    if (ret)
        return ret;
    in.magic = KV5M_DATA;
    in.length = (unsigned int)len;
    in.data = (char *)data;
    ret = krb5_unmarshal_credentials(ctx, &in, &creds);
    if (ret)
        goto out;
    if (server != NULL && server[0] != '\0')
        ret = krb5_parse_name(ctx, server, &sprinc);
    else
        ret = krb5_sname_to_principal(ctx, NULL, "host", KRB5_NT_SRV_HST, &sprinc);
    if (ret)
        goto out;
    if (krb5_unparse_name(ctx, sprinc, &unparsed) == 0 && server_outlen) {
        snprintf(server_out, server_outlen, "%s", unparsed);
        krb5_free_unparsed_name(ctx, unparsed);
    }
    if (keytab != NULL && keytab[0] != '\0')
        ret = krb5_kt_resolve(ctx, keytab, &kt);
    else
        ret = krb5_kt_default(ctx, &kt);
    if (ret)
        goto out;
    krb5_verify_init_creds_opt_init(&vopt);
    krb5_verify_init_creds_opt_set_ap_req_nofail(&vopt, 1);
    ret = krb5_verify_init_creds(ctx, creds, sprinc, kt, NULL, &vopt);
out:
    if (ret && errlen) {
        const char *msg = krb5_get_error_message(ctx, ret);
        snprintf(err, errlen, "%s", msg);
        krb5_free_error_message(ctx, msg);
    }
    if (kt != NULL)
        krb5_kt_close(ctx, kt);
    if (sprinc != NULL)
        krb5_free_principal(ctx, sprinc);
    if (creds != NULL)
        krb5_free_creds(ctx, creds);
    pk_release(ctx);
    return ret;
}

/* krb5_get_renewed_creds for the cache's principal; the result marshalled into *out
 * (malloc'd, freed with pk_free).  Returns a krb5/com_err code; err gets its message. */
static int pk_renew_marshalled(const char *ccname, const char *profile_path,
                               unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
    krb5_context ctx = NULL;
    krb5_ccache cc = NULL;
    krb5_principal princ = NULL;
    krb5_creds creds;
    krb5_error_code ret;
    int have_creds = 0;

    memset(&creds, 0, sizeof(creds));
    *out = NULL;
    *outlen = 0;
    if (errlen)
        err[0] = '\0';
    ret = pk_thread_context(profile_path, &ctx);
    if (ret)
        return ret;
    ret = krb5_cc_resolve(ctx, ccname, &cc);
    if (ret)
        goto out;
    ret = krb5_cc_get_principal(ctx, cc, &princ);
    if (ret)
        goto out;
    ret = krb5_get_renewed_creds(ctx, &creds, princ, cc, NULL);
    if (ret)
        goto out;
    have_creds = 1;
    ret = pk_marshal(ctx, &creds, out, outlen);
out:
    pk_error(ctx, ret, err, errlen);
    if (have_creds)
        krb5_free_cred_contents(ctx, &creds);
    if (princ != NULL)
        krb5_free_principal(ctx, princ);
    if (cc != NULL)
        krb5_cc_close(ctx, cc);
    pk_release(ctx);
    return ret;
}
/* krb5_get_init_creds_password for `principal` (parsed as an enterprise name with `enterprise`),
 * with the options the service's gic_options sets (tkt_life 0: default; renew_life -1: default,
 * 0: not renewable; forwardable -1: default), canonicalize, FAST armor from `armor_ccache` (a
 * MEMORY cache of this process) and pk_prompter answering from `answers`.  libkrb5's own
 * password change on KRB5KDC_ERR_KEY_EXP is turned off: the service's chpass does that.  The
 * TGT comes back marshalled in *out (pk_free).  Returns a krb5 code (err gets its message);
 * *used answers were given, *asked_count prompts recorded.  No answer or password is ever
 * copied into asked or err. */
int pk_init_creds_answered(const char *profile_path, const char *principal, int enterprise,
                           int tkt_life, int renew_life, int forwardable, int canonicalize,
                           const char *armor_ccache, int fast_required, const char *password,
                           const char *const *answers, int n_answers, int *used, int *restarted,
                           char *asked, size_t asked_len, int *asked_count,
                           unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
    krb5_context ctx = NULL;
    krb5_principal princ = NULL;
    krb5_get_init_creds_opt *opt = NULL;
    krb5_creds creds;
    krb5_error_code ret;
    int have_creds = 0;
    struct pk_answers a;

    memset(&creds, 0, sizeof(creds));
    memset(&a, 0, sizeof(a));
    a.answers = answers;
    a.n = n_answers;
    a.asked = asked;
    a.asked_len = asked_len;
    *out = NULL;
    *outlen = 0;
    *used = *restarted = *asked_count = 0;
    if (errlen)
        err[0] = '\0';
    ret = pk_thread_context(profile_path, &ctx);
    if (ret)
        return ret;
    ret = krb5_parse_name_flags(ctx, principal, enterprise ? KRB5_PRINCIPAL_PARSE_ENTERPRISE : 0,
                                &princ);
    if (ret)
        goto out;
    ret = krb5_get_init_creds_opt_alloc(ctx, &opt);
    if (ret)
        goto out;
    krb5_get_init_creds_opt_set_change_password_prompt(opt, 0);
    if (tkt_life > 0)
        krb5_get_init_creds_opt_set_tkt_life(opt, tkt_life);
    if (renew_life >= 0)
        krb5_get_init_creds_opt_set_renew_life(opt, renew_life);
    if (forwardable >= 0)
        krb5_get_init_creds_opt_set_forwardable(opt, forwardable);
    if (canonicalize)
        krb5_get_init_creds_opt_set_canonicalize(opt, 1);
    ret = pk_fast(ctx, opt, armor_ccache, fast_required);
    if (ret)
        goto out;
    ret = krb5_get_init_creds_password(ctx, &creds, princ, password, pk_prompter, &a, 0, NULL, opt);
    *used = a.used;
    *restarted = a.restarted;
    *asked_count = a.asked_count;
    if (ret)
        goto out;
    have_creds = 1;
    ret = pk_marshal(ctx, &creds, out, outlen);
out:
    pk_error(ctx, ret, err, errlen);
    if (have_creds)
        krb5_free_cred_contents(ctx, &creds);
    if (opt != NULL)
        krb5_get_init_creds_opt_free(ctx, opt);
    if (princ != NULL)
        krb5_free_principal(ctx, princ);
    pk_release(ctx);
    return ret;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("pam_keyinit_py.tickets._krb5_renew", SOURCE, libraries=["krb5"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
