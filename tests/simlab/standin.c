/* Stand-in service for the simulated lab (tests/simlab): built by the test with `gcc -static`, run in host
 * namespaces and as the only file of a `docker import`ed image.
 *
 *   standin listen tcp:ADDR:PORT udp:ADDR:PORT ...   serve until killed:
 *       TCP: echo every byte back (a payload round trip proves the replies pass);
 *       UDP: answer each datagram with itself, the DNS QR bit set when it is DNS-shaped (>= 12 bytes),
 *            so a DNS query gets a DNS response with the same id.
 *   standin probe tcp|udp ADDR PORT                 one round trip, exit 0 when answered within 2 s.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAXFD 1024

static int bind_one(const char *spec) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", spec);
    char *proto = buf, *addr = strchr(buf, ':');
    if (!addr) return -1;
    *addr++ = 0;
    char *port = strrchr(addr, ':');
    if (!port) return -1;
    *port++ = 0;
    int udp = strcmp(proto, "udp") == 0;
    int s = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1 || bind(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
        fprintf(stderr, "standin: bind %s: %s\n", spec, strerror(errno));
        exit(2);
    }
    if (!udp && listen(s, 128) != 0) {
        fprintf(stderr, "standin: listen %s: %s\n", spec, strerror(errno));
        exit(2);
    }
    return s;
}

static int serve(int argc, char **argv) {
    struct pollfd fds[MAXFD];
    int kind[MAXFD]; /* 0 tcp listener, 1 udp, 2 tcp connection */
    int n = 0;
    for (int i = 0; i < argc && n < MAXFD; i++) {
        fds[n].fd = bind_one(argv[i]);
        if (fds[n].fd < 0) {
            fprintf(stderr, "standin: bad spec %s\n", argv[i]);
            return 2;
        }
        fds[n].events = POLLIN;
        kind[n] = strncmp(argv[i], "udp:", 4) == 0;
        n++;
    }
    printf("ready\n");
    fflush(stdout);
    char b[4096];
    for (;;) {
        if (poll(fds, n, -1) < 0) continue;
        for (int i = 0; i < n; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            if (kind[i] == 0) {
                int c = accept(fds[i].fd, NULL, NULL);
                if (c >= 0 && n < MAXFD) {
                    fds[n].fd = c;
                    fds[n].events = POLLIN;
                    fds[n].revents = 0;
                    kind[n] = 2;
                    n++;
                } else if (c >= 0) {
                    close(c);
                }
            } else if (kind[i] == 1) {
                struct sockaddr_storage from;
                socklen_t fl = sizeof from;
                ssize_t r = recvfrom(fds[i].fd, b, sizeof b, 0, (struct sockaddr *)&from, &fl);
                if (r <= 0) continue;
                if (r >= 12) b[2] |= 0x80;
                sendto(fds[i].fd, b, r, 0, (struct sockaddr *)&from, fl);
            } else {
                ssize_t r = read(fds[i].fd, b, sizeof b);
                if (r > 0) {
                    if (write(fds[i].fd, b, r) < 0) r = 0;
                }
                if (r <= 0) {
                    close(fds[i].fd);
                    fds[i] = fds[n - 1];
                    kind[i] = kind[n - 1];
                    n--;
                    i--;
                }
            }
        }
    }
}

static int probe(const char *proto, const char *addr, const char *port) {
    int udp = strcmp(proto, "udp") == 0;
    int s = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) return 2;
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) return 1;
    /* a DNS query for lab.home.arpa A, id 0x4c46 */
    const unsigned char q[] = {0x4c, 0x46, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'l', 'a', 'b', 4, 'h', 'o',
                               'm', 'e', 4, 'a', 'r', 'p', 'a', 0, 0, 1, 0, 1};
    if (send(s, q, sizeof q, 0) != (ssize_t)sizeof q) return 1;
    unsigned char r[512];
    ssize_t got = recv(s, r, sizeof r, 0);
    if (got < 12 || r[0] != 0x4c || r[1] != 0x46) return 1;
    if (udp && !(r[2] & 0x80)) return 1;
    printf("answered\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "listen") == 0) return serve(argc - 2, argv + 2);
    if (argc == 5 && strcmp(argv[1], "probe") == 0) return probe(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: standin listen SPEC... | standin probe tcp|udp ADDR PORT\n");
    return 2;
}
