/*
 * The local node's sandbox ("pause") program: PID 1 of every pod's sandbox.
 *
 * It holds the pod's namespaces open, so it only has to stay alive until the
 * runtime stops it (SIGTERM or SIGINT: exit 0) and reap any child re-parented to
 * it (a pod sharing its PID namespace makes it the pod's init). Built with
 * `gcc -static` into a one-file image, because no registry is reachable here.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigemptyset(&on_stop.sa_mask);
    sigemptyset(&on_child.sa_mask);
    if (sigaction(SIGTERM, &on_stop, NULL) || sigaction(SIGINT, &on_stop, NULL) ||
        sigaction(SIGCHLD, &on_child, NULL)) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
