"""Hangar's zygote: starts once per function inside its jail and forks every instance.

In `python` mode it imports the handler first, so each instance starts with the interpreter
and the handler's modules already loaded (copy-on-write). In `exec` mode (Node.js, provided)
each instance execs its runtime. Either way, each instance gets its own mount, pid, network,
ipc and uts namespaces, a fresh /proc, a private size-bounded /tmp and loopback only; then it
drops to `nobody` with no capabilities and adds a seccomp filter before any request is served.

A prewarmed zygote (`HANGAR_MODE=prewarm:python` or `prewarm:exec`) starts before any
function is known: the interpreter and the Python shim are loaded, /var/task is empty. It says
"ready", then waits to be specialized: Hangar fills /var/task, raises the jail's limits and
sends the function's mode, argv and environment; from there on it is that function's zygote.

Protocol with Hangar (stdlib only). fd 0 is a SOCK_SEQPACKET socket to Hangar:
  (prewarmed only)
  zygote -> Hangar  {"type":"ready"}
  Hangar -> zygote  {"type":"specialize","mode":"python"|"exec","argv":[...],"env":{...}}
  (then, as every zygote)
  zygote -> Hangar  {"type":"ready"} | {"type":"init_error","error":{...}}
  Hangar -> zygote  {"type":"spawn","env":{...},"tmp_bytes":N} + fds [instance socket, log pipe]
On each instance socket:
  instance -> Hangar  {"type":"netns"} + fd [its network namespace]   (sender pid via SO_PASSCRED)
  Hangar -> instance  {"type":"go"}     (Runtime API bound inside, cgroup joined)
  parent -> Hangar    {"type":"exit","code":N} | {"type":"exit","signal":N} | {"type":"failed","error":"..."}
"""
import ctypes
import fcntl
import gc
import json
import os
import platform
import signal
import socket
import struct
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NAMESPACE_FLAGS = 0x7E020080  # every CLONE_NEW* flag, CLONE_NEWTIME (0x80) included
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
NOBODY = 65534

libc = ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def send(sock, msg, fds=()):
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


# --- seccomp: what an instance may never call, on top of the jail's own filter ----------------

SYSCALLS = {
    "x86_64": dict(arch=0xC000003E, clone=56, clone3=435, deny=[
        165, 166, 272, 308, 155, 101, 321, 323, 298, 250, 248, 249, 246, 175, 313, 176, 304,
        430, 432, 433, 429, 428, 163, 167, 168, 169, 161]),
    "aarch64": dict(arch=0xC00000B7, clone=220, clone3=435, deny=[
        40, 39, 97, 268, 41, 117, 280, 282, 241, 219, 217, 218, 104, 105, 273, 106, 265,
        430, 432, 433, 429, 428, 89, 224, 225, 142, 51]),
}
# mount umount2 unshare setns pivot_root ptrace bpf userfaultfd perf_event_open keyctl add_key
# request_key kexec_load init_module finit_module delete_module open_by_handle_at fsopen
# fsmount fspick move_mount open_tree acct swapon swapoff reboot chroot


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def seccomp_program():
    """The filter, built once in the zygote; each instance only installs it."""
    table = SYSCALLS.get(platform.machine())
    if table is None:
        raise OSError(f"no seccomp table for {platform.machine()}")
    LD_W_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38
    prog = [
        (LD_W_ABS, 0, 0, 4),                 # arch
        (JEQ, 1, 0, table["arch"]),
        (RET, 0, 0, KILL),
        (LD_W_ABS, 0, 0, 0),                 # syscall number
        (JGE, 0, 1, 0x40000000),             # the x32 ABI
        (RET, 0, 0, EPERM),
    ]
    for nr in table["deny"]:
        prog += [(JEQ, 0, 1, nr), (RET, 0, 0, EPERM)]
    prog += [(JEQ, 0, 1, table["clone3"]), (RET, 0, 0, ENOSYS)]  # libc falls back to clone
    prog += [
        (JEQ, 0, 4, table["clone"]),
        (LD_W_ABS, 0, 0, 16),                # clone flags (low 32 bits of args[0])
        (JSET, 0, 1, NAMESPACE_FLAGS),
        (RET, 0, 0, EPERM),
        (RET, 0, 0, ALLOW),
        (RET, 0, 0, ALLOW),
    ]
    filters = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    return filters, SockFprog(len(prog), filters)


def install_seccomp(program):
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program[1]), 0, 0), "seccomp")


# --- one instance ------------------------------------------------------------------------------

def loopback_up():
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP, IFF_RUNNING = 0x8913, 0x8914, 0x1, 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP | IFF_RUNNING))


PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4


def drop_capabilities():
    """Empties the bounding and ambient sets (the inheritable set is empty from the jail), so
    that once the uid change below clears the rest nothing can ever bring a capability back."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap} from the bounding set")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing the ambient capabilities")


def instance(sock, log_fd, msg, run, program):
    """Runs in the new namespaces as their pid 1; never returns. Everything privileged happens
    before Hangar is told the instance exists; after "go" only the runtime starts."""
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "private mounts")
    check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mounting /proc")
    tmp = f"size={int(msg.get('tmp_bytes', 512 << 20))},mode=1777".encode()
    check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, tmp), "mounting /tmp")
    loopback_up()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)
    netns = os.open("/proc/self/ns/net", os.O_RDONLY)  # after fds 0-2 are settled
    drop_capabilities()
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)  # every capability is gone with uid 0
    install_seccomp(program)
    send(sock, {"type": "netns"}, [netns])
    os.close(netns)
    reply = sock.recv(4096)
    if not reply or json.loads(reply).get("type") != "go":
        os._exit(1)
    sock.close()
    os.environ.update(msg.get("env", {}))
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    run()
    os._exit(0)


def spawn(msg, fds, run, control, program):
    sock = socket.socket(fileno=fds[0])
    log_fd = fds[1]
    if os.fork() != 0:
        sock.close()
        os.close(log_fd)
        return
    # The instance's parent: makes the namespaces, then reports how the instance ended.
    control.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        pid = os.fork()
        if pid == 0:
            try:
                instance(sock, log_fd, msg, run, program)
            except BaseException as e:
                try:
                    send(sock, {"type": "failed", "error": f"setting up the instance: {e}"})
                finally:
                    os._exit(1)
        os.close(log_fd)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            send(sock, {"type": "exit", "signal": os.WTERMSIG(status)})
        else:
            send(sock, {"type": "exit", "code": os.WEXITSTATUS(status)})
    except BaseException as e:
        try:
            send(sock, {"type": "failed", "error": str(e)})
        except OSError:
            pass
    os._exit(0)


def load(mode, argv, control):
    """What each instance runs: the imported handler's loop (python) or an exec (others)."""
    if mode != "python":
        def run():
            os.execve(argv[0], argv, dict(os.environ))
        return run
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bootstrap
    try:
        handler = bootstrap.load_handler(os.environ.get("_HANDLER", ""), os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
    except bootstrap.HandlerLoadError as e:
        error_type, message = e.args
        print(f"[ERROR] {error_type}: {message}", file=sys.stderr, flush=True)
        send(control, {"type": "init_error", "error": {"errorMessage": message, "errorType": error_type, "stackTrace": []}})
        sys.exit(1)
    except Exception as e:  # the module raised while being imported
        traceback.print_exc()
        sys.stderr.flush()
        body = json.loads(bootstrap.error_body("Runtime.ImportModuleError", f"{type(e).__name__}: {e}", e.__traceback__))
        send(control, {"type": "init_error", "error": body})
        sys.exit(1)

    def run():
        client = bootstrap.RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
        bootstrap.serve(client, handler)
    return run


def specialize(control, preload):
    """A prewarmed zygote: ready before any function is known, then waits for one."""
    if preload == "python":
        import importlib
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bootstrap  # noqa: F401  (the shim and the modules it imports, loaded ahead)
    send(control, {"type": "ready"})
    while True:
        try:
            data = control.recv(65536)
        except InterruptedError:
            continue
        if not data:
            os._exit(0)
        msg = json.loads(data)
        if msg.get("type") == "specialize":
            break
    os.environ.clear()
    os.environ.update(msg.get("env", {}))
    os.chdir("/var/task")
    if preload == "python":
        importlib.invalidate_caches()  # /var/task was filled after the interpreter started
    return msg.get("mode", "exec"), msg.get("argv", [])


def main():
    control = socket.socket(fileno=0)
    sys.stdin = None
    mode = os.environ.pop("HANGAR_MODE", "exec")
    argv = json.loads(os.environ.pop("HANGAR_EXEC", "[]"))
    if mode.startswith("prewarm:"):
        mode, argv = specialize(control, mode.removeprefix("prewarm:"))
    run = load(mode, argv, control)
    sys.stdout.flush()
    sys.stderr.flush()
    program = seccomp_program()
    gc.collect()
    gc.freeze()  # the collector leaves shared objects alone, so their pages stay shared
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # instance parents are reaped by the kernel
    send(control, {"type": "ready"})
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 65536, 4)
        except InterruptedError:
            continue
        if not data:
            os._exit(0)  # Hangar went away: the jail ends with this process
        msg = json.loads(data)
        if msg.get("type") == "spawn" and len(fds) == 2:
            spawn(msg, fds, run, control, program)
        else:
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    main()
