"""cffi (API, out-of-line) build of the libkeyutils binding.

Run by setuptools through ``cffi_modules`` in setup.py; it compiles
``pam_keyinit_py.keyutils._keyutils`` against <keyutils.h> and -lkeyutils.
The extension also carries the raw per-thread credential syscalls that
libkeyutils lacks: glibc's setresuid() and friends broadcast the change to
every thread of the process, the raw syscalls change only the caller.
"""

from cffi import FFI

CDEF = """
typedef int... uid_t;
typedef int... gid_t;
typedef int32_t key_serial_t;
typedef uint32_t key_perm_t;

extern const char keyutils_version_string[];

key_serial_t add_key(const char *type, const char *description,
                     const void *payload, size_t plen, key_serial_t ringid);
key_serial_t request_key(const char *type, const char *description,
                         const char *callout_info, key_serial_t destringid);
key_serial_t keyctl_get_keyring_ID(key_serial_t id, int create);
key_serial_t keyctl_join_session_keyring(const char *name);
long keyctl_update(key_serial_t id, const void *payload, size_t plen);
long keyctl_revoke(key_serial_t id);
long keyctl_chown(key_serial_t id, uid_t uid, gid_t gid);
long keyctl_setperm(key_serial_t id, key_perm_t perm);
long keyctl_clear(key_serial_t ringid);
long keyctl_link(key_serial_t id, key_serial_t ringid);
long keyctl_unlink(key_serial_t id, key_serial_t ringid);
long keyctl_search(key_serial_t ringid, const char *type,
                   const char *description, key_serial_t destringid);
long keyctl_instantiate(key_serial_t id, const void *payload, size_t plen,
                        key_serial_t ringid);
long keyctl_negate(key_serial_t id, unsigned timeout, key_serial_t ringid);
long keyctl_set_reqkey_keyring(int reqkey_defl);
long keyctl_set_timeout(key_serial_t key, unsigned timeout);
long keyctl_assume_authority(key_serial_t key);
long keyctl_session_to_parent(void);
long keyctl_reject(key_serial_t id, unsigned timeout, unsigned error,
                   key_serial_t ringid);
long keyctl_invalidate(key_serial_t id);
long keyctl_get_persistent(uid_t uid, key_serial_t id);
long keyctl_restrict_keyring(key_serial_t keyring, const char *type,
                             const char *restriction);
long keyctl_move(key_serial_t id, key_serial_t from_ringid,
                 key_serial_t to_ringid, unsigned int flags);
long keyctl_capabilities(unsigned char *buffer, size_t buflen);
long keyctl_describe(key_serial_t id, char *buffer, size_t buflen);
long keyctl_read(key_serial_t id, char *buffer, size_t buflen);
long keyctl_get_security(key_serial_t key, char *buffer, size_t buflen);
long keyctl_watch_key(key_serial_t id, int watch_queue_fd, int watch_id);

long pk_thread_setresuid(uid_t ruid, uid_t euid, uid_t suid);
long pk_thread_setresgid(gid_t rgid, gid_t egid, gid_t sgid);
long pk_thread_setreuid(uid_t ruid, uid_t euid);
long pk_thread_setregid(gid_t rgid, gid_t egid);
long pk_thread_setgroups(size_t size, const gid_t *list);
"""

SOURCE = """
#include <keyutils.h>
#include <unistd.h>
#include <sys/syscall.h>

/* Raw syscalls: change the calling thread's credentials only. */
static long pk_thread_setresuid(uid_t r, uid_t e, uid_t s)
{ return syscall(SYS_setresuid, r, e, s); }
static long pk_thread_setresgid(gid_t r, gid_t e, gid_t s)
{ return syscall(SYS_setresgid, r, e, s); }
static long pk_thread_setreuid(uid_t r, uid_t e)
{ return syscall(SYS_setreuid, r, e); }
static long pk_thread_setregid(gid_t r, gid_t e)
{ return syscall(SYS_setregid, r, e); }
static long pk_thread_setgroups(size_t n, const gid_t *l)
{ return syscall(SYS_setgroups, n, l); }
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pam_keyinit_py.keyutils._keyutils",
    SOURCE,
    libraries=["keyutils"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
