/*
 * lxcone-client: the agent fast path of remotes/vmm/lxcone/lxcone-action, without Python.
 *
 * The shim runs `lxcone-client <python> <remotes vmm dir> <action> <args...>` with oned's stdin.
 * When lxcone.toml (found as remotes/vmm/lxcone/lxcone-client finds it) is in the simple form
 * that client's scan_config() reads and says agent = true, this forwards argv and stdin to the
 * agent over <run_dir>/agent.sock (format: lxcone/agent/wire.py) and prints its reply, saving
 * the start-up of `python -I -S` and the compilation of that script (~10 ms an action here).
 *
 * Everything else goes to the Python client, exec'd with the stdin bytes already read in a
 * memfd: a config this scan is not sure of, agent = false, no agent listening, one that refuses
 * the connection (not root) or resets it (another version: nothing ran). That client then does
 * what it always did: starts a missing agent, goes through sudo, runs the action in-process.
 * Hidden mode for the tests: `lxcone-client --scan-config PATH` prints the scan's result.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

#define MAGIC "LXA1"            /* lxcone/agent/wire.py's MAGIC: bump both together */
#define CONFIG_MAX (1 << 20)    /* a larger lxcone.toml is not the simple form */
#define MAX_KEYS 64
#define CONFIG_REL "../../etc/vmm/lxcone/lxcone.toml"
#define BARE_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

struct buf { char *p; size_t n, cap; };

static const char *action = "?";

/* One ERROR line naming the failed call and errno, as every driver failure is reported. */
static void die(const char *fmt, ...)
{
    int err = errno;
    va_list ap;
    dprintf(2, "ERROR: %s: lxcone-client: ", action);
    va_start(ap, fmt);
    vdprintf(2, fmt, ap);
    va_end(ap);
    dprintf(2, ": %s\n", strerror(err));
    exit(1);
}

static void add(struct buf *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n + 1)
            cap *= 2;
        if (!(b->p = realloc(b->p, cap)))
            die("realloc %zu", cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;  /* so that a config or a path built here is also a C string */
}

static void add_str(struct buf *b, const char *s) { add(b, s, strlen(s)); }

static void add_u32(struct buf *b, uint32_t v)
{
    unsigned char be[4] = {v >> 24, v >> 16, v >> 8, v};
    add(b, be, 4);
}

/* Reads fd to EOF into b; -1 (errno set) on an error or past max bytes. */
static int read_fd(int fd, struct buf *b, size_t max)
{
    char chunk[1 << 16];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r;
        if (b->n + r > max)
            return errno = EFBIG, -1;
        add(b, chunk, r);
    }
}

static int write_all(int fd, const char *p, size_t n, int flags)
{
    while (n) {
        ssize_t r = flags < 0 ? write(fd, p, n) : send(fd, p, n, flags);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        p += r, n -= r;
    }
    return 0;
}

/* Python's os.path.normpath, so that the config path is byte for byte the Python client's. */
static char *normpath(const char *in)
{
    size_t root = in[0] != '/' ? 0 : (in[1] == '/' && in[2] != '/') ? 2 : 1;
    char *out = malloc(strlen(in) + 2), *o;
    if (!out)
        die("malloc");
    memset(out, '/', root);
    o = out + root;
    for (const char *s = in; *s;) {
        const char *c = s;
        while (*s && *s != '/')
            s++;
        size_t len = s - c;
        if (*s)
            s++;
        if (len == 0 || (len == 1 && c[0] == '.'))
            continue;
        char *last = o;  /* the last component kept so far */
        while (last > out + root && last[-1] != '/')
            last--;
        int have = o > out + root, last_up = have && o - last == 2 && !memcmp(last, "..", 2);
        if (len == 2 && !memcmp(c, "..", 2) && (root || have) && !last_up) {
            if (have)  /* "a/.." is nothing; "/.." is "/" */
                o = last > out + root ? last - 1 : last;
            continue;
        }
        if (have)
            *o++ = '/';
        memcpy(o, c, len);
        o += len;
    }
    if (o == out)
        *o++ = '.';
    *o = 0;
    return out;
}

/* $LXCONE_CONFIG, else what the Python client computes from its own path <dir>/lxcone-client:
 * normpath(join(dirname(abspath(argv[0])), CONFIG_REL)). NULL when the cwd is gone. */
static char *config_path(const char *dir)
{
    const char *env = getenv("LXCONE_CONFIG");
    char cwd[PATH_MAX];
    struct buf b = {0};
    if (env && *env)
        return strdup(env);
    if (dir[0] != '/' && dir[0]) {  /* "" + "/lxcone-client" is absolute already */
        if (!getcwd(cwd, sizeof cwd))
            return NULL;
        add_str(&b, cwd);
        if (cwd[strlen(cwd) - 1] != '/')
            add_str(&b, "/");
    }
    add_str(&b, dir);
    add_str(&b, "/lxcone-client");
    char *abs = normpath(b.p), *slash = strrchr(abs, '/');
    size_t head = slash - abs + 1;  /* dirname: up to the last '/', trailing '/'s dropped */
    while (head > 1 && abs[head - 1] == '/' && strspn(abs, "/") < head)
        head--;
    b.n = 0;
    add(&b, abs, head);
    if (abs[head - 1] != '/')
        add_str(&b, "/");
    add_str(&b, CONFIG_REL);
    return normpath(b.p);
}

/* What tomllib accepts anywhere in a file: UTF-8 as Python's strict decoder reads it, and no
 * control character but tab and newline (CR only in CRLF), which TOML forbids in strings and
 * comments alike. Past this check the scan only has structure to judge. */
static int valid_text(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], len, k;
        uint32_t cp, min;
        if (c < 0x80) {
            int crlf = c == '\r' && i + 1 < n && s[i + 1] == '\n';
            if ((c < 0x20 && c != '\t' && c != '\n' && !crlf) || c == 0x7f)
                return 0;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            len = 2, cp = c & 0x1f, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3, cp = c & 0x0f, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4, cp = c & 0x07, min = 0x10000;
        else
            return 0;
        if (n - i < len)
            return 0;
        for (k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

static char *trim(char *s, char **end)  /* TOML whitespace: space and tab */
{
    while (s < *end && (*s == ' ' || *s == '\t'))
        s++;
    while (*end > s && ((*end)[-1] == ' ' || (*end)[-1] == '\t'))
        (*end)--;
    return s;
}

/* 1 when lxcone.toml surely holds (run_dir, agent) as tomllib reads them (defaults when the
 * file does not exist), 0 when not sure. The port of scan_config() of the Python client: one
 * `key = value` per line, comments, blank lines; "..." strings without escapes for run_dir,
 * true/false for agent. Stricter where that one leans on Python or cannot see a structure:
 * keys are bare TOML keys only (a quoted or dotted key may spell run_dir), other values are
 * "..." strings or scalars of [A-Za-z0-9_+.:-] (a quote may open a multi-line string hiding
 * `key = value` lines, a bracket an array over several lines). A scalar's spelling is left to
 * the driver: a bad one fails the action with the config's error whichever process runs it. */
static int scan_config(const char *path, const char **run_dir, int *agent)
{
    struct buf b = {0};
    const char *keys[MAX_KEYS];
    size_t key_len[MAX_KEYS], nkeys = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC), r;
    *run_dir = "/run/lxcone", *agent = 1;
    if (fd < 0)
        return errno == ENOENT;
    r = read_fd(fd, &b, CONFIG_MAX);
    close(fd);
    if (r < 0 || !valid_text((unsigned char *)b.p, b.n))
        return 0;
    for (char *p = b.p, *stop = b.p + b.n; p < stop;) {
        char *nl = memchr(p, '\n', stop - p), *end = nl ? nl : stop;
        char *line = p;
        p = nl ? nl + 1 : stop;
        if (end > line && end[-1] == '\r')
            end--;
        line = trim(line, &end);
        if (line == end || *line == '#')
            continue;
        char *eq = memchr(line, '=', end - line), *kend = eq, *v, *vend = end;
        if (!eq)
            return 0;
        char *key = trim(line, &kend);
        size_t klen = kend - key;
        v = trim(eq + 1, &vend);
        if (!klen || strspn(key, BARE_CHARS) < klen)
            return 0;
        for (size_t i = 0; i < nkeys; i++)
            if (key_len[i] == klen && !memcmp(keys[i], key, klen))
                return 0;  /* defined twice: invalid TOML */
        if (nkeys == MAX_KEYS)
            return 0;
        keys[nkeys] = key, key_len[nkeys++] = klen;
        int is_str = v < vend && *v == '"';
        if (is_str) {
            char *close = memchr(v + 1, '"', vend - v - 1), *tail;
            if (!close || memchr(v + 1, '\\', close - v - 1))
                return 0;
            tail = trim(close + 1, &vend);
            if (tail < vend && *tail != '#')
                return 0;
            *close = 0;  /* v + 1 is now the string */
        } else {
            char *hash = memchr(v, '#', vend - v);
            if (hash)
                vend = hash;
            v = trim(v, &vend);
            if (v == vend || strspn(v, BARE_CHARS "+.:") < (size_t)(vend - v))
                return 0;
        }
        if (klen == 7 && !memcmp(key, "run_dir", 7)) {
            if (!is_str)
                return 0;
            *run_dir = v + 1;
        } else if (klen == 5 && !memcmp(key, "agent", 5)) {
            if (!is_str && vend - v == 4 && !memcmp(v, "true", 4))
                *agent = 1;
            else if (!is_str && vend - v == 5 && !memcmp(v, "false", 5))
                *agent = 0;
            else
                return 0;
        }
    }
    return 1;  /* b.p stays allocated: *run_dir may point into it */
}

/* Not sure, or nothing ran: `<python> -I -S <dir>/lxcone-client <action> <args...>` takes over,
 * with the stdin bytes already read (if any) in a memfd (a pipe would hold 64 KiB at most). */
static void python_client(int argc, char **argv, const struct buf *in)
{
    struct buf script = {0};
    char **av = calloc(argc + 2, sizeof *av);
    if (!av)
        die("calloc");
    if (in) {
        int fd = memfd_create("stdin", 0);
        if (fd < 0)
            die("memfd_create");
        if (write_all(fd, in->p, in->n, -1) < 0 || lseek(fd, 0, SEEK_SET) < 0)
            die("write memfd");
        if (fd != 0 && (dup2(fd, 0) < 0 || close(fd) < 0))
            die("dup2 memfd");
    }
    add_str(&script, argv[2]);
    add_str(&script, "/lxcone-client");
    av[0] = argv[1], av[1] = "-I", av[2] = "-S", av[3] = script.p;
    memcpy(av + 4, argv + 3, (argc - 3) * sizeof *av);
    execvp(argv[1], av);  /* as the shim's `exec "$py"` would */
    die("execvp %s", argv[1]);
}

/* Bytes received into p, up to n: fewer at EOF (errno 0) or on an error (errno set). */
static size_t recv_all(int s, void *p, size_t n)
{
    size_t got = 0;
    errno = 0;
    while (got < n) {
        ssize_t r = recv(s, (char *)p + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += r;
    }
    return got;
}

static int recv_field(int s, struct buf *b)
{
    unsigned char be[4];
    if (recv_all(s, be, 4) < 4)
        return -1;
    size_t n = (size_t)be[0] << 24 | be[1] << 16 | be[2] << 8 | be[3];
    if (!(b->p = malloc(n + 1)))
        die("malloc %zu", n);
    return b->n = n, recv_all(s, b->p, n) < n ? -1 : 0;
}

int main(int argc, char **argv)
{
    const char *run_dir;
    int agent;
    if (argc == 3 && !strcmp(argv[1], "--scan-config")) {
        if (scan_config(argv[2], &run_dir, &agent))
            printf("%s\t%s\n", agent ? "true" : "false", run_dir);
        else
            puts("?");
        return 0;
    }
    if (argc < 4) {
        dprintf(2, "ERROR: usage: lxcone-client <python> <remotes/vmm/lxcone> <action> [args]\n");
        return 1;
    }
    action = argv[3];
    char *config = config_path(argv[2]);
    if (!config || !scan_config(config, &run_dir, &agent) || !agent || !*run_dir)
        python_client(argc, argv, NULL);  /* stdin untouched: that client reads it */

    struct buf in = {0}, req = {0}, sock = {0}, out = {0}, err = {0};
    if (!isatty(0))
        read_fd(0, &in, SIZE_MAX);  /* closed or unreadable: what came, as the Python client */
    add_str(&sock, run_dir);
    add_str(&sock, run_dir[strlen(run_dir) - 1] == '/' ? "agent.sock" : "/agent.sock");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || sock.n > sizeof addr.sun_path)
        python_client(argc, argv, &in);
    memcpy(addr.sun_path, sock.p, sock.n);
    if (connect(s, (struct sockaddr *)&addr, offsetof(struct sockaddr_un, sun_path) + sock.n))
        python_client(argc, argv, &in);  /* no agent, a stale socket, or not ours to use */

    /* Fields: config path, action, its args, stdin (wire.py). */
    add_str(&req, MAGIC);
    add_u32(&req, argc - 3 + 2);
    add_u32(&req, strlen(config));
    add_str(&req, config);
    for (int i = 3; i < argc; i++) {
        add_u32(&req, strlen(argv[i]));
        add_str(&req, argv[i]);
    }
    add_u32(&req, in.n);
    /* The agent runs an action only once it has read the whole request: a failed send means
     * nothing ran (a reset by an agent of another version, or one that stopped). */
    if (in.n > UINT32_MAX || write_all(s, req.p, req.n, MSG_NOSIGNAL) < 0
        || write_all(s, in.p, in.n, MSG_NOSIGNAL) < 0)
        python_client(argc, argv, &in);

    unsigned char be[4];
    size_t got = recv_all(s, be, 4);
    if (got == 0 && errno == ECONNRESET)
        python_client(argc, argv, &in);  /* reset before any reply: not taken, nothing ran */
    if (got < 4 || recv_field(s, &out) < 0 || recv_field(s, &err) < 0) {
        /* It had the request, so the action may have run partly: say so, never rerun it. */
        dprintf(2, "ERROR: %s: the lxcone agent ended during the action (see %.*sagent.log)\n",
                action, (int)(sock.n - strlen("agent.sock")), sock.p);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);  /* only now: an exec'd Python client must not inherit it */
    if (write_all(1, out.p, out.n, -1) < 0)
        die("write stdout");
    if (write_all(2, err.p, err.n, -1) < 0)
        die("write stderr");
    return (int)((uint32_t)be[0] << 24 | be[1] << 16 | be[2] << 8 | be[3]) & 0xff;
}
