"""The replication side's wiring: under runzeo (`%import zrsd`) a dead
shared reactor thread SIGTERMs the process rather than leave it serving
replicas that silently stopped replicating."""
import signal
import subprocess
import sys
import textwrap


def test_a_dead_process_reactor_terminates_the_process():
    script = textwrap.dedent('''
        import signal
        from zrsd.daemon import replication

        thread = replication.process_reactor_thread()
        thread.start()
        # Stop the reactor without asking the thread to stop: a crash.
        thread.reactor.callFromThread(thread.reactor.stop)
        signal.pause()      # until the SIGTERM (the test's timeout bounds it)
        print('still alive')
    ''')
    done = subprocess.run([sys.executable, '-c', script],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=60)
    output = done.stdout.decode()
    assert done.returncode == -signal.SIGTERM, output
    assert 'the Twisted reactor stopped unexpectedly' in output, output
    assert 'still alive' not in output
