/*
 * File transfer on the fc_* names: a receiver that claims an ID and takes one file, and a
 * sender that dials it by that ID, sends the file with a progress line, and exits 0 once the
 * receiver confirmed the size and the hash. One program, two roles:
 *
 *   file_transfer SIGNAL_URL STUN recv ID DIR [PROTOCOL]    writes DIR/NAME (never overwrites)
 *   file_transfer SIGNAL_URL STUN send ID FILE [PROTOCOL]   sends FILE as its base name
 *
 * PROTOCOL is quic (the default), kcp, utp, sctp or rtc: any reliable, ordered one. The bytes
 * on the connection are the same for all of them, read as a stream (uTP's FC_EVENT_DATA
 * chunks need not match the sends, the others' do):
 *
 *   sender:   "FOGFILE <size> <name>\n", then exactly <size> bytes of the file
 *   receiver: "OK <size> <hash>\n" once it wrote them all, or "BAD <reason>\n"
 *
 * The hash is 64-bit FNV-1a, a check against a bug that loses or reorders bytes; the
 * connection itself is authenticated and sealed end to end, so it need not resist an attacker.
 * The sender sends from its main thread; when fc_send says FC_ERR_BLOCKED it waits for
 * FC_EVENT_WRITABLE and sends the same chunk again. Callbacks run on the context's event
 * thread, one at a time.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fogconnect.h"

#define SERVICE 21
#define CHUNK 16384
#define MAX_HEADER 512
#define WRITABLE_WAIT_MS 10000

/* Shared by both roles: set by callbacks, read by the main thread. */
static atomic_int connected;
static atomic_int finished;   /* 1: success, -1: failure */
static char failure[256];     /* why, when finished is -1 (written before finished) */

/* fc_send's FC_ERR_BLOCKED and FC_EVENT_WRITABLE meet here. */
static pthread_mutex_t room_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t room_cond = PTHREAD_COND_INITIALIZER;
static unsigned long room_events;

/* The receiver's state (only its event thread touches it). */
static const char *target_dir;
static char line[MAX_HEADER + 1];
static size_t line_len;
static int in_body;
static uint64_t expected, written, hash = 14695981039346656037ULL;
static FILE *out;
static char out_path[4096];
static int created; /* out_path is a file this run made */
static double started;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fnv1a(uint64_t *h, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        *h ^= data[i];
        *h *= 1099511628211ULL;
    }
}

static void fail(const char *why)
{
    if (atomic_load(&finished) != 0) return;
    snprintf(failure, sizeof failure, "%s", why);
    atomic_store(&finished, -1);
}

static void progress(const char *verb, uint64_t done, uint64_t total, int *last_tenth)
{
    int tenth = total == 0 ? 10 : (int)(done * 10 / total);
    if (tenth == *last_tenth) return;
    *last_tenth = tenth;
    double elapsed = now_s() - started;
    double rate = elapsed > 0 ? (double)done / elapsed / 1048576.0 : 0;
    fprintf(stderr, "%s %3d%%  %.1f of %.1f MiB  %.1f MiB/s\n", verb, tenth * 10,
            (double)done / 1048576.0, (double)total / 1048576.0, rate);
}

static int protocol_named(const char *name)
{
    if (strcmp(name, "quic") == 0) return FC_PROTOCOL_QUIC;
    if (strcmp(name, "kcp") == 0) return FC_PROTOCOL_KCP;
    if (strcmp(name, "utp") == 0) return FC_PROTOCOL_UTP;
    if (strcmp(name, "sctp") == 0) return FC_PROTOCOL_SCTP;
    if (strcmp(name, "rtc") == 0) return FC_PROTOCOL_RTC;
    return -1;
}

/* ---- receiver ---- */

static void reply(fc_conn conn, const char *text)
{
    int rc = fc_send(conn, (const uint8_t *)text, strlen(text));
    if (rc != FC_OK) fprintf(stderr, "recv: replying: %s\n", fc_strerror(rc));
}

static void refuse_file(fc_conn conn, const char *why)
{
    char text[300];
    snprintf(text, sizeof text, "BAD %s\n", why);
    reply(conn, text);
    fail(why);
}

/* "FOGFILE <size> <name>": opens DIR/NAME for writing, or says why not. */
static int begin_file(fc_conn conn)
{
    char *end = NULL;
    if (strncmp(line, "FOGFILE ", 8) != 0) {
        refuse_file(conn, "not a FOGFILE header");
        return -1;
    }
    errno = 0;
    unsigned long long size = strtoull(line + 8, &end, 10);
    if (errno != 0 || end == line + 8 || *end != ' ') {
        refuse_file(conn, "a header without a size");
        return -1;
    }
    const char *name = end + 1;
    /* A base name only: nothing that climbs out of DIR or hides. */
    if (*name == '\0' || *name == '.' || strchr(name, '/') != NULL) {
        refuse_file(conn, "a file name that is not a plain base name");
        return -1;
    }
    snprintf(out_path, sizeof out_path, "%s/%s", target_dir, name);
    int fd = open(out_path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) {
        char why[300];
        snprintf(why, sizeof why, "cannot create %s: %s", name, strerror(errno));
        refuse_file(conn, why);
        return -1;
    }
    created = 1;
    out = fdopen(fd, "wb");
    if (out == NULL) {
        close(fd);
        refuse_file(conn, "opening the file failed");
        return -1;
    }
    expected = size;
    started = now_s();
    fprintf(stderr, "recv: %s, %llu bytes\n", name, size);
    return 0;
}

/* The file's bytes: written, hashed, and answered once all are in. */
static void body(fc_conn conn, const uint8_t *data, size_t len)
{
    static int last_tenth = -1;
    if (len > expected - written) {
        refuse_file(conn, "more bytes than the header announced");
        return;
    }
    if (fwrite(data, 1, len, out) != len) {
        refuse_file(conn, "writing the file failed");
        return;
    }
    fnv1a(&hash, data, len);
    written += len;
    progress("recv", written, expected, &last_tenth);
    if (written == expected) {
        if (fclose(out) != 0) {
            out = NULL;
            refuse_file(conn, "closing the file failed");
            return;
        }
        out = NULL;
        char text[96];
        snprintf(text, sizeof text, "OK %" PRIu64 " %016" PRIx64 "\n", written, hash);
        reply(conn, text);
        printf("received %s: %" PRIu64 " bytes, fnv1a64 %016" PRIx64 "\n", out_path, written,
               hash);
        fflush(stdout);
        /* Done once the sender closes (it does when it has read the answer). */
    }
}

static void receiver_event(fc_conn conn, int event, const uint8_t *data, size_t len, void *arg)
{
    (void)arg;
    if (event == FC_EVENT_CONNECTED) {
        atomic_store(&connected, 1);
    } else if (event == FC_EVENT_DATA && atomic_load(&finished) == 0) {
        size_t i = 0;
        while (!in_body && i < len) {
            char c = (char)data[i++];
            if (c == '\n') {
                line[line_len] = '\0';
                if (begin_file(conn) != 0) return;
                in_body = 1;
            } else if (line_len == MAX_HEADER) {
                refuse_file(conn, "a header longer than 512 bytes");
                return;
            } else {
                line[line_len++] = c;
            }
        }
        if (in_body && i < len) body(conn, data + i, len - i);
        if (in_body && expected == 0 && written == 0 && out != NULL) body(conn, data, 0);
    } else if (event == FC_EVENT_EOF && in_body && written == expected && out == NULL) {
        atomic_store(&finished, 1);
    } else if (event != FC_EVENT_DATA && event != FC_EVENT_PATH_CHANGED &&
               event != FC_EVENT_WRITABLE && event != FC_EVENT_CONNECTED) {
        char why[300];
        snprintf(why, sizeof why, "the connection ended (event %d) after %" PRIu64 " of %" PRIu64
                 " bytes: %s", event, written, expected, (const char *)data);
        fail(why);
    }
}

static int receiver_incoming(fc_context *ctx, fc_conn conn, const char *peer, int service,
                             void *arg)
{
    (void)ctx;
    (void)arg;
    /* One file per run: a second sender is refused. */
    static atomic_int taken;
    if (service != SERVICE || atomic_exchange(&taken, 1) != 0) return FC_REFUSE;
    fprintf(stderr, "recv: accepting a file from %s\n", peer);
    return fc_event_setcb(conn, receiver_event, NULL) == FC_OK ? FC_ACCEPT : FC_REFUSE;
}

/* ---- sender ---- */

static char answer[128];
static size_t answer_len;

static void sender_event(fc_conn conn, int event, const uint8_t *data, size_t len, void *arg)
{
    (void)conn;
    (void)arg;
    if (event == FC_EVENT_CONNECTED) {
        atomic_store(&connected, 1);
    } else if (event == FC_EVENT_WRITABLE) {
        pthread_mutex_lock(&room_lock);
        room_events++;
        pthread_cond_broadcast(&room_cond);
        pthread_mutex_unlock(&room_lock);
    } else if (event == FC_EVENT_DATA) {
        /* The answer is one line; on uTP it may come in pieces. */
        for (size_t i = 0; i < len && answer_len < sizeof answer - 1; i++) {
            answer[answer_len++] = (char)data[i];
        }
        answer[answer_len] = '\0';
        if (strchr(answer, '\n') != NULL) atomic_store(&finished, 2);
    } else if (event != FC_EVENT_PATH_CHANGED) {
        char why[300];
        snprintf(why, sizeof why, "the connection ended (event %d): %s", event,
                 (const char *)data);
        fail(why);
    }
    pthread_mutex_lock(&room_lock);
    pthread_cond_broadcast(&room_cond);
    pthread_mutex_unlock(&room_lock);
}

/* Sends all of `data`, waiting for FC_EVENT_WRITABLE whenever the queue is full. */
static int send_all(fc_conn conn, const uint8_t *data, size_t len, unsigned long *waits)
{
    for (;;) {
        pthread_mutex_lock(&room_lock);
        unsigned long seen = room_events;
        pthread_mutex_unlock(&room_lock);
        int rc = fc_send(conn, data, len);
        if (rc != FC_ERR_BLOCKED) return rc;
        (*waits)++;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += WRITABLE_WAIT_MS / 1000;
        pthread_mutex_lock(&room_lock);
        int timed_out = 0;
        while (room_events == seen && atomic_load(&finished) == 0 && !timed_out) {
            timed_out = pthread_cond_timedwait(&room_cond, &room_lock, &until) == ETIMEDOUT;
        }
        pthread_mutex_unlock(&room_lock);
        if (atomic_load(&finished) != 0) return FC_ERR_STOPPED;
        if (timed_out) {
            fail("fc_send said FC_ERR_BLOCKED and no FC_EVENT_WRITABLE came within 10 s");
            return FC_ERR_BLOCKED;
        }
    }
}

static int send_file(fc_context *ctx, const char *id, const char *path, int protocol)
{
    FILE *in = fopen(path, "rb");
    struct stat st;
    if (in == NULL || fstat(fileno(in), &st) != 0) {
        fprintf(stderr, "send: %s: %s\n", path, strerror(errno));
        return 1;
    }
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    fc_conn conn = fc_connect(ctx, id, protocol, SERVICE, sender_event, NULL);
    if (conn < 0) {
        fprintf(stderr, "send: fc_connect: %s\n", fc_strerror((int)conn));
        fclose(in);
        return 1;
    }
    for (int tick = 0; tick < 3000 && !atomic_load(&connected) && !atomic_load(&finished);
         tick++) {
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    if (!atomic_load(&connected)) {
        fprintf(stderr, "send: not connected: %s\n", failure[0] ? failure : "timed out");
        fclose(in);
        return 1;
    }
    char buf[MAX_HEADER + 1];
    uint64_t size = (uint64_t)st.st_size, sent = 0, h = 14695981039346656037ULL;
    unsigned long waits = 0;
    int n = snprintf(buf, sizeof buf, "FOGFILE %" PRIu64 " %s\n", size, name);
    if (n < 0 || (size_t)n > MAX_HEADER) {
        fprintf(stderr, "send: the file name is too long\n");
        fclose(in);
        fc_disconnect(conn);
        return 1;
    }
    int rc = send_all(conn, (const uint8_t *)buf, (size_t)n, &waits);
    static uint8_t chunk[CHUNK];
    int last_tenth = -1;
    started = now_s();
    while (rc == FC_OK && sent < size) {
        size_t got = fread(chunk, 1, CHUNK, in);
        if (got == 0) break;
        fnv1a(&h, chunk, got);
        rc = send_all(conn, chunk, got, &waits);
        if (rc == FC_OK) sent += got;
        progress("send", sent, size, &last_tenth);
    }
    fclose(in);
    if (rc != FC_OK || sent != size) {
        fprintf(stderr, "send: stopped after %" PRIu64 " of %" PRIu64 " bytes: %s\n", sent, size,
                failure[0] ? failure : fc_strerror(rc));
        return 1;
    }
    double elapsed = now_s() - started;
    /* The receiver answers once the last byte is written. */
    for (int tick = 0; tick < 12000 && atomic_load(&finished) == 0; tick++) {
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&finished) != 2) {
        fprintf(stderr, "send: no answer: %s\n", failure[0] ? failure : "timed out");
        return 1;
    }
    char expected_answer[96];
    snprintf(expected_answer, sizeof expected_answer, "OK %" PRIu64 " %016" PRIx64 "\n", size, h);
    if (strcmp(answer, expected_answer) != 0) {
        fprintf(stderr, "send: the receiver answered %s", answer);
        return 1;
    }
    printf("sent %s: %" PRIu64 " bytes in %.2f s, fnv1a64 %016" PRIx64 " verified by the "
           "receiver; waited for FC_EVENT_WRITABLE %lu times\n",
           name, size, elapsed, h, waits);
    fflush(stdout);
    fc_disconnect(conn);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 6 || (strcmp(argv[3], "send") != 0 && strcmp(argv[3], "recv") != 0)) {
        fprintf(stderr,
                "usage: %s SIGNAL_URL STUN recv ID DIR [PROTOCOL]\n"
                "       %s SIGNAL_URL STUN send ID FILE [PROTOCOL]\n"
                "PROTOCOL: quic (default), kcp, utp, sctp, rtc\n",
                argv[0], argv[0]);
        return 2;
    }
    int receiving = strcmp(argv[3], "recv") == 0;
    int protocol = protocol_named(argc > 6 ? argv[6] : "quic");
    if (protocol < 0) {
        fprintf(stderr, "unknown protocol %s\n", argv[6]);
        return 2;
    }
    fc_context *ctx = fc_init();
    if (ctx == NULL) return 1;
    int rc = FC_OK;
    if (receiving) {
        target_dir = argv[5];
        rc = fc_set_id(ctx, argv[4]);
        if (rc == FC_OK) rc = fc_passive_link_setcb(ctx, receiver_incoming, NULL);
    }
    if (rc == FC_OK) rc = fc_signal_init(ctx, argv[1], argv[2], NULL, NULL);
    if (rc == FC_OK) rc = fc_wait_ready(ctx, 20000);
    if (rc != FC_OK) {
        fprintf(stderr, "%s: %s\n", argv[3], fc_strerror(rc));
        fc_release(ctx);
        return 1;
    }
    int status;
    if (receiving) {
        printf("receiver %s ready\n", argv[4]);
        fflush(stdout);
        for (int tick = 0; tick < 30000 && atomic_load(&finished) == 0; tick++) {
            struct timespec ts = {0, 10000000L};
            nanosleep(&ts, NULL);
        }
        status = atomic_load(&finished) == 1 ? 0 : 1;
        if (status != 0) {
            fprintf(stderr, "recv: %s\n", failure[0] ? failure : "timed out");
            if (out != NULL) fclose(out);
            /* A partial file is not left behind as if it were whole. */
            if (created && (written != expected || out != NULL)) unlink(out_path);
        }
    } else {
        status = send_file(ctx, argv[4], argv[5], protocol);
    }
    rc = fc_release(ctx);
    return status == 0 && rc == FC_OK ? 0 : 1;
}
