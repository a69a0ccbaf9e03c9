/* sock.c - bounded waits and non-blocking connects (see sock.h). */
#include "sock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

int pb_sock_wait(int fd, int want, double timeout)
{
    struct pollfd p;
    int ms, rc, ready = 0;
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    if (!(timeout > 0)) ms = 0;
    else if (timeout > 86400.0) ms = 86400 * 1000;
    else ms = (int)(timeout * 1000.0 + 0.999);
    p.fd = fd;
    p.events = 0;
    p.revents = 0;
    if (want & PB_SOCK_READ) p.events |= POLLIN;
    if (want & PB_SOCK_WRITE) p.events |= POLLOUT;
    rc = poll(&p, 1, ms);
    if (rc < 0) return errno == EINTR ? 0 : -1;
    if (rc == 0) return 0;
    if (p.revents & POLLIN) ready |= PB_SOCK_READ;
    if (p.revents & POLLOUT) ready |= PB_SOCK_WRITE;
    /* A closed or failed socket: let both sides find out by reading or
     * writing, which report the error. */
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) ready |= PB_SOCK_HUP | (want & (PB_SOCK_READ | PB_SOCK_WRITE));
    return ready;
}

int pb_sock_connect_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno ? errno : EIO;
    return err;
}

int pb_sock_random(unsigned char *out, size_t n)
{
    size_t got = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    while (got < n) {
        ssize_t r = read(fd, out + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            close(fd);
            return -1;
        }
        got += (size_t)r;
    }
    close(fd);
    return 0;
}
