"""A fork server that runs the docs' ``napari-mitosis`` commands without re-importing torch.

Each ``napari-mitosis`` command a docs shell block runs is a new Python process that
imports torch and torchvision (about 3.5 s on 2 cores) before it does anything; the docs
run some 40 of them. Here one process imports them once, and each command is a fork of
it that runs `napari_mitosis.cli.main` with the command's own arguments, working folder,
environment and standard streams (passed as file descriptors), and exits with main's
code. The shell still runs every block as written: ``napari-mitosis`` on its PATH is a
small client (`write_client`) that hands its arguments and streams over a Unix socket,
forwards SIGTERM/SIGINT to its command, and exits with its status (128 + N for a signal).
The console script itself is run by the tests that start it (`test_cli_and_sample`).

The server only imports: no torch operation runs before a fork, so no thread pool is
copied into a child half-made.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path

#: Imported before any fork: what commands would otherwise import each time.
WARM = (
    "torch",
    "torchvision",
    "napari_mitosis.cli",
    "napari_mitosis.models.checkpoint",
    "napari_mitosis.models.detector",
    "napari_mitosis.classification.predictor",
    "napari_mitosis.detection.run",
    "napari_mitosis.io.formats",
    "distributed",
)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other end went away")
        data += chunk
    return data


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the command, run it, exit with its code."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["napari-mitosis", *request["argv"]]
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the command's own stdin
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
    code = 1
    try:
        from napari_mitosis.cli import main

        code = main(request["argv"])
    except SystemExit as end:  # argparse's --help and usage errors
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 2)
    except BaseException:  # a traceback, as the real command would print it
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a reader gone (BrokenPipeError) included
                stream.flush()
        os._exit(int(code))


def serve(path: str) -> None:
    import importlib

    for name in WARM:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    Path(path + ".ready").touch()
    children: dict[int, socket.socket] = {}
    while True:
        ready, _, _ = select.select([listener], [], [], 0.05)
        if ready:
            connection, _ = listener.accept()
            header, fds, _, _ = socket.recv_fds(connection, 4, 3)
            (size,) = struct.unpack("!I", header)
            request = json.loads(_read_exactly(connection, size))
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                _run_child(request, fds)
            for fd in fds:
                os.close(fd)
            connection.sendall(struct.pack("!i", pid))
            children[pid] = connection
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = children.pop(pid, None)
            if connection is not None:
                code = os.waitstatus_to_exitcode(status)
                try:
                    connection.sendall(struct.pack("!i", code))
                finally:
                    connection.close()


CLIENT = '''#!{python} -I
"""napari-mitosis through the docs suite's fork server ({socket})."""
import json, os, signal, socket, struct, sys

connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.connect({socket!r})
payload = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}})
payload = payload.encode()
socket.send_fds(connection, [struct.pack("!I", len(payload))], [0, 1, 2])
connection.sendall(payload)


def read(size):
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            sys.exit(1)
        data += chunk
    return data


(pid,) = struct.unpack("!i", read(4))
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda number, _frame: os.kill(pid, number))
(code,) = struct.unpack("!i", read(4))
sys.exit(code if code >= 0 else 128 - code)
'''


def write_client(folder: Path, socket_path: str) -> Path:
    """``folder/napari-mitosis``: the client a docs shell finds first on its PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    client = folder / "napari-mitosis"
    client.write_text(CLIENT.format(python=sys.executable, socket=socket_path))
    client.chmod(0o755)
    return client


if __name__ == "__main__":  # guarded: Dask's spawned workers re-import the main module
    serve(sys.argv[1])
