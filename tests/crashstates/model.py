"""The states a power loss can leave, from a `recorder` log.

The model is POSIX's, not one file system's: an fsync makes a file's
content durable, not its name; a name (create, mkdir, rename, unlink) is
durable once its directory was fsynced after it.  At a crash:

- a file keeps its content as of its last fsync, plus any subset of the
  writes and truncations since (in order), the last kept write possibly
  torn at a 512-byte sector boundary;
- the names not yet durable are undone from some point on: every one
  made durable is kept, the others only up to a cut (names reach the
  disk in order, as a journaling file system commits them).

`State` is one such state; `states(ops, k, rng, count)` gives `count` of
them for a crash after the first `k` operations: everything kept (a crash
of the process, not of the machine), nothing unsynced kept, then random
mixes.
"""
import os

SECTOR = 512


class State:
    """A crash state: `files` {path: bytes}, `directories`, `published`."""

    def __init__(self, files, directories, published, label):
        self.files, self.directories = files, directories
        self.published, self.label = published, label

    def write_to(self, root):
        for path in sorted(self.directories, key=len):
            os.makedirs(os.path.join(root, path), exist_ok=True)
        for path, content in self.files.items():
            with open(os.path.join(root, path), 'wb') as f:
                f.write(content)


def _apply(content, change):
    if change[0] == 'truncate':
        return content[:change[1]].ljust(change[1], b'\0')
    _, offset, data = change
    content = content.ljust(offset, b'\0')
    return content[:offset] + data + content[offset + len(data):]


class _Inode:
    def __init__(self):
        self.durable = b''
        self.pending = []       # ('write', offset, data) / ('truncate', n)

    def content(self, keep=None, torn=None):
        """The content with the pending changes `keep` keeps (default: all);
        `torn`: (index, sectors) cuts that write."""
        content = self.durable
        for index, change in enumerate(self.pending):
            if keep is not None and not keep(index):
                continue
            if torn is not None and torn[0] == index:
                _, offset, data = change
                change = ('write', offset, data[:torn[1] * SECTOR])
            content = _apply(content, change)
        return content


class _Replay:
    """The log up to the crash, as inodes and the order of names."""

    def __init__(self, ops):
        self.inodes = []
        self.names = {}         # path -> inode number, as the process sees
        self.name_ops = []      # [(op, durable)]
        self.published = None
        for op in ops:
            getattr(self, '_' + op[0])(*op[1:])

    def _publish(self, tid):
        self.published = tid

    def _create(self, path):
        self.names[path] = len(self.inodes)
        self.inodes.append(_Inode())
        self.name_ops.append([('create', path, self.names[path]), False])

    def _mkdir(self, path):
        self.name_ops.append([('mkdir', path), False])

    def _rename(self, source, target):
        number = self.names.pop(source, None)
        if number is not None:
            self.names[target] = number
        self.name_ops.append([('rename', source, target, number), False])

    def _unlink(self, path):
        self.names.pop(path, None)
        self.name_ops.append([('unlink', path), False])

    def _write(self, path, offset, data):
        if path in self.names:
            self.inodes[self.names[path]].pending.append(
                ('write', offset, data))

    def _truncate(self, path, size):
        if path in self.names:
            self.inodes[self.names[path]].pending.append(('truncate', size))

    def _fsync(self, path):
        if path in self.names:
            inode = self.inodes[self.names[path]]
            inode.durable, inode.pending = inode.content(), []
            return
        # A directory: the names changed in it so far are durable.
        for entry in self.name_ops:
            op = entry[0]      # a rename changes two names
            if any((os.path.dirname(name) or '.') == path
                   for name in op[1:3 if op[0] == 'rename' else 2]):
                entry[1] = True


def _names_after(name_ops, cut):
    """{path: inode number or 'dir'}: the durable name operations and
    the first `cut` of the others."""
    names, undurable = {}, 0
    for op, durable in name_ops:
        if not durable:
            undurable += 1
            if undurable > cut:
                continue
        kind, path = op[0], op[1]
        parent = os.path.dirname(path)
        if kind != 'rename' and parent and names.get(parent) != 'dir':
            continue            # its directory is gone
        if kind == 'create':
            names[path] = op[2]
        elif kind == 'mkdir':
            names[path] = 'dir'
        elif kind == 'unlink':
            names.pop(path, None)
        else:
            # A rename moves the inode, even one whose first name was
            # never made durable (its new name is).
            target, number = op[2], op[3]
            names.pop(path, None)
            if number is not None and (
                    not os.path.dirname(target) or
                    names.get(os.path.dirname(target)) == 'dir'):
                names[target] = number
    return names


def states(ops, k, rng, count):
    """`count` crash states after the first `k` operations of `ops`."""
    replay = _Replay(ops[:k])
    undurable = sum(1 for _, durable in replay.name_ops if not durable)
    result = []
    for number in range(count):
        if number == 0:
            cut, choose, label = undurable, _Inode.content, 'all kept'
        elif number == 1:
            cut, choose = 0, lambda inode: inode.durable
            label = 'only synced'
        else:
            cut, choose = rng.randint(0, undurable), _random_content(rng)
            label = 'mix %d' % number
        names = _names_after(replay.name_ops, cut)
        files = {path: choose(replay.inodes[n])
                 for path, n in names.items() if n != 'dir'}
        directories = {path for path, n in names.items() if n == 'dir'}
        result.append(State(files, directories, replay.published,
                            'crash after op %d, %s' % (k, label)))
    return result


def _random_content(rng):
    def choose(inode):
        if not inode.pending:
            return inode.durable
        kept, torn = [rng.random() < 0.5 for _ in inode.pending], None
        writes = [i for i, change in enumerate(inode.pending)
                  if kept[i] and change[0] == 'write' and
                  len(change[2]) > SECTOR]
        if writes and rng.random() < 0.5:
            index = rng.choice(writes)
            torn = (index, rng.randint(0, len(inode.pending[index][2])
                                       // SECTOR))
        return inode.content(kept.__getitem__, torn)
    return choose
