"""Run a command in a child process with a wall-clock limit, a memory limit and a bounded log.

:func:`run_limited` is the mechanism behind the runner's isolated method runs
(:func:`qsmbench.runner.run_job`): a plugin that hangs, allocates without bound, crashes the
interpreter or prints gigabytes ends its own run, never the benchmark.

Memory limit: an RSS watchdog, not ``RLIMIT_AS``
    The parent samples the resident memory of the child *and its descendants* (psutil) every
    ``poll_s`` seconds and kills the whole process tree when the sum exceeds the limit.  An
    address-space limit (``RLIMIT_AS``) would be exact but counts reserved, untouched memory:
    PyTorch and the CUDA driver reserve tens of GB of virtual address space at start-up and
    glibc reserves an arena per thread, so any limit low enough to protect the machine makes
    deep-learning methods fail at import.  ``RLIMIT_DATA`` has the same problem for anonymous
    mappings.  Resident memory is what a machine runs out of, so that is what is limited; the
    price is that a method allocating faster than ``limit / poll_s`` can overshoot by what it
    allocates in one polling interval before it is killed.  psutil makes the watchdog portable
    (Linux, macOS, Windows).

Log
    The child's stdout and stderr (merged) are read through a pipe and appended to the log
    file: the first ``head_bytes`` as they come, then only the last ``tail_bytes`` are kept and
    written at the end, after a line saying how many bytes were left out.  A method printing
    gigabytes therefore costs the disk at most ``head_bytes + tail_bytes``.

Start: fork or a new interpreter
    A new interpreter (``argv``, e.g. ``python -m qsmbench._child``) pays for its start and its
    imports -- numpy, scipy, qsmbench, the method plugins: about 1.4-2 s of CPU per run, a
    minute of a default workflow run's two cores.  On Linux, when the caller passes ``target``
    (a function that does the same work) and it is safe, the child is instead a ``fork`` of the
    caller, which has already imported all of that (:func:`fork_possible`: the caller runs a
    single thread and has not imported torch, whose thread pools and CUDA state do not survive a
    fork).  The forked child gets the same isolation: its own address space, the same limits and
    watchdog (its memory is counted from its own RSS, the pages it shares with the parent
    included), the same pipe for its output, its own working directory, environment and
    ``TMPDIR``, default SIGTERM and the SIGUSR1 stack dump, and it ends with ``os._exit`` so none
    of the parent's exit handlers run in it.  ``QSMBENCH_ISOLATE_START=spawn`` forces new
    interpreters.  :attr:`Outcome.start` says which was used.

Interruption
    The child stays in the parent's process group, so a Ctrl-C in the terminal or a SIGKILL of
    the group reaches it too.  When the parent is stopped by an exception (KeyboardInterrupt,
    SIGTERM -- turned into ``SystemExit`` while the child runs), the child's process tree is
    killed before the exception propagates; the child also watches its parent (see
    :func:`die_with_parent`) for the case where the parent is killed outright.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import psutil

#: Bytes of the child's output written to the log as they come.
HEAD_BYTES = 4 * 2**20
#: Bytes kept from the end of the output once the head is full (written at the end).
TAIL_BYTES = 1 * 2**20
#: Characters of output kept for run.json's ``log_tail``.
TAIL_CHARS = 4000
#: Lines of output kept for run.json's ``log_tail``.
TAIL_LINES = 40
#: Characters kept of each line of ``log_tail`` (the log file keeps whole lines).
TAIL_LINE_CHARS = 300


@dataclasses.dataclass
class Outcome:
    """How a child process ended.

    ``limit`` is ``"timeout"`` or ``"memory"`` when :func:`run_limited` killed the child for
    exceeding a limit, else None.  ``returncode`` is the child's exit status (negative: the
    signal that ended it, POSIX).  ``peak_rss_mb`` is the largest sampled resident memory of
    the child and its descendants.  ``tail`` holds the last lines of its output.
    """

    returncode: int | None
    limit: str | None
    elapsed_s: float
    peak_rss_mb: float
    output_bytes: int
    omitted_bytes: int
    tail: str
    start: str = "spawn"

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


class BoundedLog:
    """Receives the child's output in chunks; writes a bounded head and tail to ``path``."""

    def __init__(self, path: str | os.PathLike | None, head_bytes: int = HEAD_BYTES,
                 tail_bytes: int = TAIL_BYTES):
        self.head_bytes, self.tail_bytes = head_bytes, tail_bytes
        self.total = 0
        self.written = 0
        self._tail = bytearray()
        self._recent = bytearray()
        self._fh = open(path, "ab") if path is not None else None  # noqa: SIM115 - closed in close()

    def write_line(self, text: str) -> None:
        if self._fh is not None:
            self._fh.write(text.encode() + b"\n")
            self._fh.flush()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self._recent += data
        if len(self._recent) > 8 * TAIL_CHARS:
            del self._recent[:-4 * TAIL_CHARS]
        room = self.head_bytes - self.written
        if room > 0:
            part = data[:room]
            if self._fh is not None:
                self._fh.write(part)
                self._fh.flush()
            self.written += len(part)
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > 2 * self.tail_bytes:
                del self._tail[:-self.tail_bytes]

    @property
    def omitted(self) -> int:
        return max(0, self.total - self.written - min(len(self._tail), self.tail_bytes))

    def close(self) -> None:
        tail = bytes(self._tail[-self.tail_bytes:])
        if self._fh is not None:
            if self.omitted:
                self.write_line(f"\n[... {self.omitted} bytes of output left out (the log keeps the first "
                                f"{self.head_bytes} and the last {self.tail_bytes}) ...]")
            self._fh.write(tail)
            self._fh.flush()
            self._fh.close()
            self._fh = None

    def tail_text(self, chars: int = TAIL_CHARS, lines: int = TAIL_LINES, *, forked: bool = False) -> str:
        """The last ``lines`` lines (at most ``chars`` characters) of the whole output.

        ``forked``: the child is a fork, whose stack dumps (faulthandler) continue below its
        entry point with the frames of the parent's stack it was forked from; those are left out
        here (the log keeps them) so that the tail shows the run's own frames."""
        # frames that every stack dump of a thread / of `python -m` shares say nothing about the
        # run and would push its own last output out of the line budget (a timeout's dump of 5
        # threads is ~40 lines): left out here, the log keeps them
        text = [ln for ln in bytes(self._recent).decode("utf-8", "replace").splitlines()
                if not _BOILERPLATE_FRAME.match(ln)]
        if forked:
            kept, skipping = [], False
            for line in text:
                if skipping and line.startswith("  File "):
                    continue
                skipping = False
                kept.append(line)
                if line.startswith("  File ") and line.endswith(f" in {_FORK_ENTRY}"):
                    kept.append("  (the frames of the parent process it was forked from: see the log)")
                    skipping = True
            text = kept
        # a very long line (e.g. faulthandler's list of extension modules after a crash's stacks)
        # is shortened so that it cannot push the lines before it out of the character budget
        text = [ln if len(ln) <= TAIL_LINE_CHARS else ln[:TAIL_LINE_CHARS] + " [...]" for ln in text[-lines:]]
        return "\n".join(text)[-chars:]


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` and all its descendants, MB (0 when it is gone)."""
    total = 0
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return 0.0
    for p in _tree(root):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


class _Tree:
    """The child and its descendants, for cheap repeated RSS sampling.

    Listing descendants scans every process of the machine (about 5 ms of CPU); it is redone
    every ``refresh_s`` seconds, while the resident memory of the known processes is read at
    every call (a fraction of a millisecond each).  A new grandchild is counted within
    ``refresh_s``.
    """

    def __init__(self, pid: int, refresh_s: float = 1.0):
        self.refresh_s = refresh_s
        self._next = 0.0
        self._procs: list[psutil.Process] = []
        try:
            self._root = psutil.Process(pid)
        except psutil.Error:
            self._root = None

    def rss_mb(self) -> float:
        if self._root is None:
            return 0.0
        now = time.monotonic()
        if now >= self._next:
            self._procs = _tree(self._root)
            self._next = now + self.refresh_s
        total = 0
        for p in self._procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20


def kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` (first, so it cannot start new children) and its descendants.

    Waits for the descendants but not for ``pid`` itself: its parent reaps it (``Popen.wait``),
    which keeps its exit status (reaping it here would leave the parent a status of 0).
    """
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    procs = _tree(root)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs[1:], timeout=5)


class _Terminated(SystemExit):
    """SIGTERM received by the parent while a child runs."""


def fork_possible() -> bool:
    """Whether :func:`run_limited` may fork this process instead of starting an interpreter:
    Linux, a single thread (a fork copies only the calling thread; locks held by others would
    stay locked in the child), torch not imported, and ``QSMBENCH_ISOLATE_START`` not ``spawn``."""
    return (sys.platform.startswith("linux") and os.environ.get("QSMBENCH_ISOLATE_START", "fork") != "spawn"
            and threading.active_count() == 1 and "torch" not in sys.modules)


class _ForkedChild:
    """The parts of :class:`subprocess.Popen` that :func:`run_limited` uses, for a forked child
    running ``target()`` (see "Start" in the module docstring)."""

    def __init__(self, target: Callable[[], int], cwd: str | os.PathLike, env: Mapping[str, str] | None):
        read_fd, write_fd = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(read_fd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(write_fd, 1)
                os.dup2(write_fd, 2)
                os.close(null)
                os.close(write_fd)
                code = _forked_main(target, cwd, env)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                with contextlib.suppress(Exception):
                    import traceback  # noqa: PLC0415

                    traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = os.fdopen(read_fd, "rb")

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
            time.sleep(min(delay, remaining))
            delay = min(2 * delay, 0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


_FORK_ENTRY = "_forked_main"
#: A stack-dump line of the thread machinery or of ``python -m`` (:meth:`BoundedLog.tail_text`).
_BOILERPLATE_FRAME = re.compile(r'  File "(?:[^"]*[/\\]threading\.py", line \d+ in (?:run|_bootstrap_inner|_bootstrap)'
                                r'|<frozen runpy>", line \d+ in (?:_run_code|_run_module_as_main))$')


def _forked_main(target: Callable[[], int], cwd: str | os.PathLike, env: Mapping[str, str] | None) -> int:
    """In a forked child: the state a new interpreter would start with, then ``target()``."""
    import faulthandler  # noqa: PLC0415
    import io  # noqa: PLC0415
    import logging  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    # fresh, unbuffered text streams on the pipe (the parent's may be captured or redirected)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True, write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True, write_through=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if hasattr(signal, "SIGUSR1"):  # sent on a timeout, just before the kill: shows where it hung
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    # the parent's log handlers (e.g. the Snakemake job's log file) are not the child's
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    # relative import paths would change meaning with the working directory
    here = os.getcwd()
    sys.path[:] = [os.path.join(here, p) if not os.path.isabs(p) else p for p in sys.path]
    os.chdir(cwd)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    os.environ["QSMBENCH_ISOLATED"] = "1"  # as qsmbench._child: command plugins leave the limits to the parent
    tempfile.tempdir = None  # TMPDIR is read again
    return int(target() or 0)


def run_limited(argv: Sequence[str], *, cwd: str | os.PathLike, env: Mapping[str, str] | None = None,
                timeout_s: float | None = None, mem_limit_mb: float | None = None,
                log_path: str | os.PathLike | None = None, poll_s: float = 0.1,
                head_bytes: int | None = None, tail_bytes: int | None = None,
                dump_grace_s: float = 1.0, target: Callable[[], int] | None = None, echo=None) -> Outcome:
    """Run ``argv`` in ``cwd``; kill it (and its descendants) past ``timeout_s`` or ``mem_limit_mb``.

    With ``target`` (a function doing what ``argv`` would do) and :func:`fork_possible`, the
    child is a fork of this process running ``target()`` instead (see "Start" in the module
    docstring); ``env`` then replaces its environment.  On a timeout the child first gets
    SIGUSR1 (POSIX), which a child that registered :func:`faulthandler.register` answers by
    printing every thread's stack to the log, so the log shows where it hung; ``dump_grace_s``
    later it is killed.  ``echo`` (a binary stream, e.g. ``sys.stderr.buffer``) also receives
    the output as it comes (a command plugin's output reaches the isolated run's log this way).
    Never raises for what the child does; re-raises
    KeyboardInterrupt/SystemExit of the parent after killing the child.
    """
    out = BoundedLog(log_path, HEAD_BYTES if head_bytes is None else head_bytes,
                     TAIL_BYTES if tail_bytes is None else tail_bytes)
    t0 = time.monotonic()
    if target is not None and fork_possible():
        start = "fork"
        proc = _ForkedChild(target, cwd, env)
    else:
        start = "spawn"
        proc = subprocess.Popen(list(argv), cwd=str(cwd), env=dict(env) if env is not None else None,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                close_fds=True)
    out.write_line(f"----- output of the isolated process (pid {proc.pid}, {start}) -----")

    def pump():
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(1 << 16):
            out.feed(chunk)
            if echo is not None:
                with contextlib.suppress(OSError, ValueError):
                    echo.write(chunk)
                    echo.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    limit, peak = None, 0.0
    previous = None
    tree = _Tree(proc.pid)
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum, frame):
            raise _Terminated(128 + signal.SIGTERM)
        previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        while proc.poll() is None:
            rss = tree.rss_mb()
            peak = max(peak, rss)
            if mem_limit_mb is not None and rss > mem_limit_mb:
                limit = "memory"
                kill_tree(proc.pid)
                break
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                limit = "timeout"
                if hasattr(signal, "SIGUSR1"):
                    with contextlib.suppress(OSError):
                        proc.send_signal(signal.SIGUSR1)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(dump_grace_s)
                kill_tree(proc.pid)
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(poll_s)
        proc.wait()
    except BaseException:
        kill_tree(proc.pid)
        proc.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        elapsed = time.monotonic() - t0
        out.close()
    return Outcome(returncode=proc.returncode, limit=limit, elapsed_s=elapsed, peak_rss_mb=peak,
                   output_bytes=out.total, omitted_bytes=out.omitted, tail=out.tail_text(forked=start == "fork"),
                   start=start)


def die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """In a child: end this process when ``parent_pid`` dies (its parent was killed outright).

    Linux: ``PR_SET_PDEATHSIG`` (immediate).  Everywhere: a daemon thread that polls the parent
    id.  Either way the child never outlives an interrupted job and keeps computing unseen.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes  # noqa: PLC0415

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the above took effect
        os._exit(70)

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(70)

    threading.Thread(target=watch, daemon=True, name="qsmbench-parent-watch").start()


__all__ = ["BoundedLog", "Outcome", "die_with_parent", "fork_possible", "kill_tree", "run_limited", "tree_rss_mb"]
