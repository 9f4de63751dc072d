/* tftp_storm: the TFTP benchmark's storm client in C, so that the client is not the ceiling.
 *
 * The same protocol as the Python client in tftp_bench.py (`storm`): n transfers, `concurrency`
 * at a time, in one epoll loop, each from a new port of one of the source addresses.
 *   ipxe: RRQ blksize=1432 tsize=0, lock-step.
 *   edk2: RRQ tsize=0 blksize=1468 windowsize=4, ERROR 8 after the OACK, then from a new port
 *         RRQ blksize=1468 windowsize=4 and the transfer (one ACK per window, RFC 7440).
 * Every block received is compared with the file itself (EXPECTED, the file the server
 * serves, read once): a memcmp per block costs the client a fraction of a CRC-32 per byte,
 * and a wrong or missing byte is a failure either way. Prints one JSON object with the same
 * keys as the Python client.
 *
 * Build: cc -O2 -o tftp_storm tftp_storm.c          (tftp_bench.py does this itself)
 * Usage: tftp_storm SERVER[:PORT] FILE N CONCURRENCY ipxe|edk2 SRC1,SRC2,... EXPECTED   (PORT 69)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#define RTO 1.0          /* seconds without an answer before the last packet is sent again */
#define MAX_MISSES 8     /* resends before a transfer counts as failed (timeout) */
#define MAX_REASONS 5

enum phase { PROBE, XFER };

struct slot {
    int fd;
    struct sockaddr_in src;
    int has_peer;
    enum phase phase;
    long tsize;                  /* from the probe's OACK; -1 when there was no probe */
    uint32_t expected;           /* the next block number wanted (not wrapped) */
    int in_window, blksize, window, misses;
    int wrong;                   /* a block differed from the file (or ran past its end) */
    uint64_t total;
    double t0, sent_at;
    const unsigned char *last;   /* what to send again on a timeout */
    size_t last_len;
    unsigned char ack[4];
};

static struct sockaddr_in server;
static int ep;
static unsigned char rrq_first[512], rrq_second[512];
static size_t rrq_first_len, rrq_second_len;
static const unsigned char error8[] = "\x00\x05\x00\x08User aborted the transfer";   /* + NUL */
static char reasons[MAX_REASONS][128];
static int n_reasons;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t make_rrq(unsigned char *out, const char *name, const char *const *opts) {
    size_t n = 0;
    out[n++] = 0;
    out[n++] = 1;
    n += (size_t)sprintf((char *)out + n, "%s", name) + 1;
    n += (size_t)sprintf((char *)out + n, "octet") + 1;
    for (; *opts; opts++)
        n += (size_t)sprintf((char *)out + n, "%s", *opts) + 1;
    return n;
}

/* value of option `key` in an OACK (case-insensitive key), or -1 */
static long oack_value(const unsigned char *p, size_t len, const char *key) {
    size_t i = 2;
    while (i < len) {
        const char *k = (const char *)p + i;
        size_t kl = strnlen(k, len - i);
        if (i + kl + 1 >= len)
            break;
        const char *v = k + kl + 1;
        size_t vl = strnlen(v, len - (i + kl + 1));
        if (strcasecmp(k, key) == 0)
            return strtol(v, NULL, 10);
        i += kl + 1 + vl + 1;
    }
    return -1;
}

static void add_reason(const char *why) {
    for (int i = 0; i < n_reasons; i++)
        if (strcmp(reasons[i], why) == 0)
            return;
    if (n_reasons < MAX_REASONS)
        snprintf(reasons[n_reasons++], sizeof reasons[0], "%s", why);
}

static void send_last(struct slot *s) {
    if (s->has_peer)
        send(s->fd, s->last, s->last_len, 0);
    else
        sendto(s->fd, s->last, s->last_len, 0, (struct sockaddr *)&server, sizeof server);
    s->sent_at = now();
}

static void open_sock(struct slot *s, uint32_t idx, const unsigned char *rrq, size_t len) {
    s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&s->src, sizeof s->src) < 0) {
        perror("socket/bind");
        exit(1);
    }
    s->has_peer = 0;
    s->expected = 1;
    s->in_window = 0;
    s->total = 0;
    s->wrong = 0;
    s->misses = 0;
    s->blksize = 512;
    s->window = 1;
    s->last = rrq;
    s->last_len = len;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = idx};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) {
        perror("epoll_ctl");
        exit(1);
    }
    send_last(s);
}

static void close_sock(struct slot *s) {
    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->fd = -1;
}

static struct in_addr *srcs;
static int n_src, edk2, started, active;

/* the next transfer, in slot `s`, from the next source address in turn */
static void launch(struct slot *s, uint32_t idx) {
    memset(&s->src, 0, sizeof s->src);
    s->src.sin_family = AF_INET;
    s->src.sin_addr = srcs[started % n_src];
    s->phase = edk2 ? PROBE : XFER;
    s->tsize = -1;
    s->t0 = now();
    started++;
    active++;
    open_sock(s, idx, rrq_first, rrq_first_len);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s SERVER[:PORT] FILE N CONCURRENCY ipxe|edk2 SRC1,SRC2,... EXPECTED\n", argv[0]);
        return 2;
    }
    const char *name = argv[2];
    int n = atoi(argv[3]), concurrency = atoi(argv[4]);
    edk2 = strcmp(argv[5], "edk2") == 0;
    if (!edk2 && strcmp(argv[5], "ipxe") != 0) {
        fprintf(stderr, "style must be ipxe or edk2, not %s\n", argv[5]);
        return 2;
    }
    struct stat st;
    int efd = open(argv[7], O_RDONLY);
    if (efd < 0 || fstat(efd, &st) < 0) {
        perror(argv[7]);
        return 2;
    }
    uint64_t expect_size = (uint64_t)st.st_size;
    unsigned char *expected = malloc(expect_size + 1);
    for (uint64_t off = 0; off < expect_size;) {
        ssize_t r = read(efd, expected + off, expect_size - off);
        if (r <= 0) {
            perror(argv[7]);
            return 2;
        }
        off += (uint64_t)r;
    }
    close(efd);
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    char *colon = strchr(argv[1], ':');
    long port = 69;
    if (colon) {
        *colon = 0;
        port = strtol(colon + 1, NULL, 10);
    }
    server.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1 || port <= 0 || port > 65535 || n <= 0 || concurrency <= 0 ||
        strlen(name) > 200) {
        fprintf(stderr, "bad server address, count, concurrency or file name\n");
        return 2;
    }
    srcs = calloc(strlen(argv[6]) / 2 + 2, sizeof *srcs);
    for (char *tok = strtok(argv[6], ","); tok; tok = strtok(NULL, ","))
        if (inet_pton(AF_INET, tok, &srcs[n_src++]) != 1) {
            fprintf(stderr, "bad source address %s\n", tok);
            return 2;
        }
    if (edk2) {
        const char *first[] = {"tsize", "0", "blksize", "1468", "windowsize", "4", NULL};
        const char *second[] = {"blksize", "1468", "windowsize", "4", NULL};
        rrq_first_len = make_rrq(rrq_first, name, first);
        rrq_second_len = make_rrq(rrq_second, name, second);
    } else {
        const char *both[] = {"blksize", "1432", "tsize", "0", NULL};
        rrq_first_len = make_rrq(rrq_first, name, both);
        rrq_second_len = make_rrq(rrq_second, name, both);
    }
    if (concurrency > n)
        concurrency = n;
    struct slot *slots = calloc((size_t)concurrency, sizeof *slots);
    double *durations = calloc((size_t)n, sizeof *durations);
    int done = 0, failures = 0;
    uint64_t ok_bytes = 0;
    ep = epoll_create1(0);

    double t_start = now();
    for (int i = 0; i < concurrency; i++)
        launch(&slots[i], (uint32_t)i);

    unsigned char buf[70000];
    struct epoll_event events[256];
    double last_sweep = now();
    while (active > 0) {
        int ne = epoll_wait(ep, events, 256, 50);
        for (int e = 0; e < ne; e++) {
            uint32_t idx = events[e].data.u32;
            struct slot *s = &slots[idx];
            int finished = 0, ok = 0;
            char why[128] = "";
            while (s->fd >= 0 && !finished) {
                ssize_t got;
                if (!s->has_peer) {
                    struct sockaddr_in from;
                    socklen_t fl = sizeof from;
                    got = recvfrom(s->fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
                    if (got >= 0) {
                        connect(s->fd, (struct sockaddr *)&from, fl);  /* only the server's TID from now */
                        s->has_peer = 1;
                    }
                } else {
                    got = recv(s->fd, buf, sizeof buf, 0);
                }
                if (got < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK)
                        break;
                    snprintf(why, sizeof why, "%s", strerror(errno));
                    finished = 1;
                    break;
                }
                if (got < 4) {
                    snprintf(why, sizeof why, "short datagram (%zd bytes)", got);
                    finished = 1;
                    break;
                }
                int op = buf[1];
                s->misses = 0;
                if (op == 3 && s->phase == XFER) {
                    uint32_t block = ((uint32_t)buf[2] << 8) | buf[3];
                    int last = 0;
                    if (block == (s->expected & 0xFFFF)) {
                        size_t size = (size_t)got - 4;
                        if (s->total + size > expect_size || memcmp(buf + 4, expected + s->total, size) != 0)
                            s->wrong = 1;
                        s->total += size;
                        s->expected++;
                        s->in_window++;
                        last = size < (size_t)s->blksize;
                        if (!last && s->in_window < s->window)
                            continue;
                    }
                    s->in_window = 0;
                    uint32_t a = (s->expected - 1) & 0xFFFF;
                    s->ack[0] = 0;
                    s->ack[1] = 4;
                    s->ack[2] = (unsigned char)(a >> 8);
                    s->ack[3] = (unsigned char)a;
                    s->last = s->ack;
                    s->last_len = 4;
                    send_last(s);
                    if (last) {
                        finished = ok = 1;
                        break;
                    }
                } else if (op == 6 && s->phase == PROBE) {
                    s->tsize = oack_value(buf, (size_t)got, "tsize");
                    send(s->fd, error8, sizeof error8, 0);
                    close_sock(s);
                    s->phase = XFER;
                    open_sock(s, idx, rrq_second, rrq_second_len);
                    break;
                } else if (op == 6) {
                    long b = oack_value(buf, (size_t)got, "blksize"), w = oack_value(buf, (size_t)got, "windowsize");
                    s->blksize = b > 0 ? (int)b : 512;
                    s->window = w > 0 ? (int)w : 1;
                    memcpy(s->ack, "\x00\x04\x00\x00", 4);
                    s->last = s->ack;
                    s->last_len = 4;
                    send_last(s);
                } else if (op == 5) {
                    buf[got - 1] = 0;                   /* the message, as sent: NUL-terminated */
                    snprintf(why, sizeof why, "%.100s", (const char *)buf + 4);
                    finished = 1;
                    break;
                } else {
                    snprintf(why, sizeof why, "unexpected opcode %d in phase %s", op, s->phase == PROBE ? "probe" : "xfer");
                    finished = 1;
                    break;
                }
            }
            if (finished) {
                close_sock(s);
                active--;
                if (ok && (s->total != expect_size || s->wrong)) {
                    ok = 0;
                    snprintf(why, sizeof why, "wrong bytes (%llu bytes)", (unsigned long long)s->total);
                }
                if (ok && s->tsize >= 0 && (uint64_t)s->tsize != s->total) {
                    ok = 0;
                    snprintf(why, sizeof why, "tsize %ld but %llu bytes", s->tsize, (unsigned long long)s->total);
                }
                if (ok) {
                    durations[done++] = now() - s->t0;
                    ok_bytes += s->total;
                } else {
                    failures++;
                    add_reason(why);
                }
                if (started < n)
                    launch(s, idx);
            }
        }
        double t = now();
        if (t - last_sweep > 0.1) {
            last_sweep = t;
            for (int i = 0; i < concurrency; i++) {
                struct slot *s = &slots[i];
                if (s->fd < 0 || t - s->sent_at <= RTO)
                    continue;
                if (++s->misses > MAX_MISSES) {
                    close_sock(s);
                    active--;
                    failures++;
                    add_reason("timeout");
                    if (started < n)
                        launch(&slots[i], (uint32_t)i);
                    continue;
                }
                send_last(s);
            }
        }
    }
    double total = now() - t_start;
    qsort(durations, (size_t)done, sizeof *durations, cmp_double);
    printf("{\"ok\": %s, \"transfers\": %d, \"done\": %d, \"failures\": %d, \"failure_reasons\": [",
           failures ? "false" : "true", n, done, failures);
    for (int i = 0; i < n_reasons; i++) {
        printf("%s\"", i ? ", " : "");
        for (const char *c = reasons[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                putchar('\\');
            putchar((unsigned char)*c < 32 ? '?' : *c);
        }
        printf("\"");
    }
    printf("], \"seconds\": %.6f, \"bytes\": %llu", total, (unsigned long long)ok_bytes);
    if (done)
        printf(", \"p50\": %.6f, \"p95\": %.6f}\n",
               done % 2 ? durations[done / 2] : (durations[done / 2 - 1] + durations[done / 2]) / 2,
               durations[(int)(0.95 * (done - 1))]);
    else
        printf(", \"p50\": null, \"p95\": null}\n");
    return 0;
}
