/*
 * fdpass.c - SCM_RIGHTS over AF_UNIX sockets (see daemon/fdpass.h).
 */
#include "daemon/fdpass.h"

#include "base/dsv4.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int dsv4d_fd_send(int sock, int fd, uint64_t tag)
{
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&tag, sizeof tag};
    struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    memset(ctl, 0, sizeof ctl);
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    ssize_t n;
    do
        n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof tag)
        return dsv4_error(DSV4_EIO, "fd passing: sendmsg: %s", strerror(errno));
    return 0;
}

int dsv4d_fd_recv(int sock, int *fd, uint64_t *tag)
{
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {tag, sizeof *tag};
    struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    ssize_t n;
    *fd = -1;
    do
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return dsv4_error(DSV4_EIO, "fd passing: recvmsg: %s", n == 0 ? "closed" : strerror(errno));
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(fd, CMSG_DATA(c), sizeof(int));
    if (*fd < 0 || n != (ssize_t)sizeof *tag || (mh.msg_flags & MSG_CTRUNC)) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return dsv4_error(DSV4_EFORMAT, "fd passing: message without a descriptor");
    }
    return 0;
}
