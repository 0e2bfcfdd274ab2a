"""Spawned worker processes: ZEO clients outside the benchmark process (the
lag reader, the read load, the --lag-probe stream follower).  A worker is
sent `(function, args)` and calls `function(conn, *args)`, which talks to
the benchmark over the pipe `conn`, until it is sent None."""
import multiprocessing
import traceback


def worker_main(conn):
    """A worker process: runs the functions it is sent until None."""
    for function, args in iter(conn.recv, None):
        try:
            function(conn, *args)
        except Exception:
            conn.send(('error', traceback.format_exc()))


class Workers:
    """`n` spawned worker processes, each driven through a pipe."""

    def __init__(self, n):
        context = multiprocessing.get_context('spawn')
        self.conns, self.procs = [], []
        for i in range(n):
            parent, child = context.Pipe()
            proc = context.Process(target=worker_main, args=(child,),
                                   name='bench-worker-%d' % i, daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    @staticmethod
    def call(conn, function, *args):
        """Have the worker at `conn` run `function(conn, *args)`."""
        conn.send((function, args))

    @staticmethod
    def receive(conn, timeout=120):
        if not conn.poll(timeout):
            raise RuntimeError('a worker did not answer within %ds' % timeout)
        answer = conn.recv()
        if isinstance(answer, tuple) and answer and answer[0] == 'error':
            raise RuntimeError('worker failed:\n' + answer[1])
        return answer

    def close(self, force=False):
        """Ask the workers to exit (kill them with `force`, or if they do
        not exit within 10 s)."""
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self.procs:
            proc.join(0 if force else 10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
