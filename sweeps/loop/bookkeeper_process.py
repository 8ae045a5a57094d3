"""Where the sweep's bookkeeping runs: a forked child process, or a thread where fork is unsafe.

Optuna's side of a trial (sampling, pruning decisions, trial records) is pure Python, tens of
milliseconds a trial. On a thread beside training it competes for the GIL: every torch call
releases it, the bookkeeping thread takes it, and training waits up to a switch interval to get
it back, so the trial trains slower while the bookkeeping runs. A child process does the same
work on another core without sharing a GIL. It is forked, so it starts in milliseconds with the
open study, the sampler and the callbacks as they are; the training side talks to it through a
pipe and gets each answer as a Future. Requests run in order on one thread, except pruning
decisions (`URGENT`), which a second thread takes at once: a trial waits for its decision at its
next evaluation, and must not wait behind the next trial's sampling.

The child leaves the parent's database connections alone (it opens its own), ignores SIGINT and
SIGTERM (the parent decides what an interrupted sweep closes), and ends when the parent does:
a parent killed with SIGKILL leaves its trials to go stale and be retried, as it would alone.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from sweeps.loop.interface import URGENT, Bookkeeping

logger = logging.getLogger("sweeps")
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPT = "interrupt"  # handled by the child's reader itself: a waiting ask must see it at once


Owner = Bookkeeping  # the object whose methods the bookkeeper runs (`sweeps.loop.bookkeeping.Books`)


class BookkeeperDied(RuntimeError):
    """The bookkeeping process ended while the sweep still needed it."""


class ThreadBookkeeper:
    """The owner's methods on a background thread, in submission order (`URGENT` ones on a second)."""

    def __init__(self, owner: Owner):
        self.owner = owner
        self.executors = {urgent: ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeps-bookkeeping")
                          for urgent in (False, True)}
        self.executors[False].submit(owner.start_bookkeeping, False).result()

    def submit(self, method: str, *args) -> Future:
        return self.executors[method in URGENT].submit(getattr(self.owner, method), *args)

    def interrupt(self) -> None:
        self.owner.interrupt()

    def shutdown(self) -> None:
        try:
            self.executors[True].shutdown(wait=True)
            self.executors[False].submit(self.owner.stop_bookkeeping).result()
        finally:
            self.executors[False].shutdown(wait=True)


class ProcessBookkeeper:
    """The owner's methods in a forked child, in submission order; answers come back as Futures."""

    def __init__(self, owner: Owner):
        ctx = multiprocessing.get_context("fork")
        self.conn, child_end = ctx.Pipe()
        self.pending: dict[int, Future] = {}
        self.next_id = itertools.count()
        self.lock = threading.Lock()
        self.process = ctx.Process(target=serve, args=(owner, child_end, self.conn),
                                   name="sweeps-bookkeeping", daemon=True)
        # Ctrl-C between the fork and the child's SIG_IGN would kill the child: hold the signals
        # until then (the parent gets its own afterwards).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        child_end.close()  # so the reader sees EOF if the child dies
        self.reader = threading.Thread(target=self.read, name="sweeps-bookkeeping-answers", daemon=True)
        self.reader.start()

    def submit(self, method: str, *args) -> Future:
        future: Future = Future()
        with self.lock:
            if not self.process.is_alive():
                future.set_exception(BookkeeperDied("the bookkeeping process is not running"))
                return future
            request_id = next(self.next_id)
            self.pending[request_id] = future
            self.conn.send((request_id, method, args))
        return future

    def interrupt(self) -> None:
        self.send_quietly(INTERRUPT)

    def send_quietly(self, message) -> None:
        """A control message; a child that is already gone needs none."""
        with self.lock:
            try:
                self.conn.send(message)
            except OSError:
                pass

    def read(self) -> None:
        while True:
            try:
                request_id, ok, value = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                future = self.pending.pop(request_id)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        with self.lock:
            for future in self.pending.values():
                future.set_exception(BookkeeperDied("the bookkeeping process ended"))
            self.pending.clear()

    def shutdown(self) -> None:
        """Let the child finish what was submitted, then end it."""
        self.send_quietly(None)
        self.process.join(timeout=60)
        if self.process.is_alive():
            logger.warning("the bookkeeping process did not end; killing it")
            self.process.kill()
            self.process.join()
        self.reader.join(timeout=5)
        self.conn.close()


def serve(owner: Owner, conn, parent_end) -> None:
    """The child's loop: queue each request for its thread, until told to stop or orphaned."""
    parent_end.close()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    die_with_parent()
    code = 0
    send_lock = threading.Lock()
    queues: dict[bool, queue.SimpleQueue] = {False: queue.SimpleQueue(), True: queue.SimpleQueue()}
    workers = [threading.Thread(target=work, args=(owner, q, conn, send_lock), daemon=True)
               for q in queues.values()]
    try:
        owner.start_bookkeeping(True)
        for worker in workers:
            worker.start()
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):  # the parent is gone: leave its trials to go stale
                break
            if request == INTERRUPT:
                owner.interrupt()
                continue
            if request is None:
                for q in queues.values():
                    q.put(None)
                for worker in workers:
                    worker.join()
                break
            queues[request[1] in URGENT].put(request)
    except BaseException:  # noqa: BLE001
        logger.exception("the bookkeeping process failed")
        code = 1
    finally:
        try:
            owner.stop_bookkeeping()
        finally:
            # Skip interpreter teardown: finalizers of objects inherited from the parent would
            # close the parent's database connections and files.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def work(owner: Owner, requests: queue.SimpleQueue, conn, send_lock: threading.Lock) -> None:
    while (request := requests.get()) is not None:
        request_id, method, args = request
        try:
            answer = (request_id, True, getattr(owner, method)(*args))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent
            answer = (request_id, False, sendable(err))
        with send_lock:
            conn.send(answer)


def die_with_parent() -> None:
    """Linux: SIGKILL this child when the parent dies, even mid-request."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def sendable(err: BaseException) -> BaseException:
    """The exception itself when it pickles, else a RuntimeError that names it. A pickled exception
    loses its cause, so one with a cause travels as its own type with the cause named in its message
    (what the trial's error then says), or as a RuntimeError when its type cannot be rebuilt so."""
    if err.__cause__ is not None:
        message = f"{err} (caused by {type(err.__cause__).__name__}: {err.__cause__})"
        try:
            named = type(err)(message)
            pickle.loads(pickle.dumps(named))
            return named
        except Exception:  # noqa: BLE001
            return RuntimeError(f"{type(err).__name__}: {message}")
    try:
        pickle.dumps(err)
        return err
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(err).__name__}: {err}")


def start_bookkeeper(owner: Owner) -> ThreadBookkeeper | ProcessBookkeeper:
    """A forked process on Linux; a thread elsewhere (fork is unsafe on macOS, absent on Windows)."""
    if sys.platform == "linux" and os.environ.get("SWEEPS_BOOKKEEPING", "process") == "process":
        return ProcessBookkeeper(owner)
    return ThreadBookkeeper(owner)
