#!/usr/bin/env python3
"""The emulated board: Debian's x86-64 kernel under qemu-system-x86_64 (TCG) with an initramfs,
for tests that need real kernel drivers (vivid, snd-aloop, v4l2loopback, vim2m, vicodec...) and,
optionally, a network: the guest's virtio NIC is a tap device on a bridge inside a namespace the
test created (a netlab site's LAN), so the guest is one more host on that LAN.

    board.py run  [OPTIONS]                 boot, run the command, power off; print the result
    board.py up   [OPTIONS] [--owner PID]   boot in the background; return once the guest printed
                                            its ready line (default "=== ready"); print the board
    board.py send TAG TEXT                  one line to the guest command's standard input
    board.py wait TAG [--timeout S]         wait until the guest powers off; print the result
    board.py down TAG                       stop the guest, remove the tap and the run's files

OPTIONS
    --binary PATH           the program under test, as /test/spyglass (with its shared libraries)
    --file SRC[:DEST]       add a file or directory (DEST defaults to /test/<name>); executables
                            bring their shared libraries along. Repeatable.
    --module 'NAME [P=V..]' load a kernel module after the board's own (vivid, snd-aloop,
                            snd-dummy): one this script builds for the guest's kernel
                            (v4l2loopback, vim2m, vicodec: see build-modules.sh) or any module of
                            that kernel, with its dependencies. Repeatable, loaded in order.
    --run SCRIPT|@FILE      the guest command (sh); its exit status is the run's `exit`
    --netns NS --bridge BR --ip ADDR/PREFIX --gateway ADDR
                            the network: a tap on bridge BR in namespace NS (QEMU runs in NS);
                            without them the guest has no network device
    --memory MB (768) --cpus N (1) --timeout S (600, the whole guest run)
    --ready TEXT            (up) the line that means "ready" ("=== ready")
    --out DIR               (run) keep the console log and the exported files in DIR

The guest command runs as /test/run under busybox sh with /test on PATH; its standard input
is the host's `send` channel (`read -r line` waits for the host). Helpers in /test:
`copy-out FILE [NAME]` copies a file out through the console (the result's `files`),
`feed-h264 DEVICE DIR FPS WIDTH HEIGHT` writes DIR/*.h264 access units to a v4l2loopback
output device, one write per access unit, FPS a second, in a loop (README.md).

The result (JSON): tag, exit (the command's status; null if it never finished), powered_off,
timed_out, boot_s (QEMU start -> the command starts), run_s (the command), total_s, console (the
serial console, exported files cut out), log (its file), files (NAME -> path on this machine).

Every run lives in /run/spyglass-vm/TAG. `up` leaves a supervisor process that owns QEMU: it
stops QEMU at the timeout, and removes everything when the owner process (--owner, default the
caller's parent) is gone, so a test killed outright leaves nothing behind. Needs root (the
kernel image is root-only on Debian; taps).
"""

import argparse
import base64
import hashlib
import json
import lzma
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
STATE_ROOT = '/run/spyglass-vm'
# Drivers built by build-modules.sh for the guest's kernel.
BUILT = ('v4l2-mem2mem', 'vim2m', 'vicodec', 'v4l2loopback')
# The guest's NIC and its dependencies.
NET_MODULES = ('virtio_pci', 'virtio_net')


class BoardError(Exception):
    pass


def log(msg):
    print(f'tests/vm: {msg}', file=sys.stderr, flush=True)


def cache_dir():
    d = os.environ.get('SPYGLASS_VM_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'spyglass-vm')
    os.makedirs(d, exist_ok=True)
    return d


def kernel():
    kernels = [f for f in os.listdir('/boot') if f.startswith('vmlinuz-')]
    if not kernels:
        raise BoardError('no /boot/vmlinuz-*: install linux-image-amd64 (make deps-emulated)')

    def version_key(name):
        return [int(p) if p.isdigit() else p for p in re.split(r'[.-]', name[len('vmlinuz-'):])]

    path = '/boot/' + sorted(kernels, key=version_key)[-1]
    if not os.access(path, os.R_OK):
        raise BoardError(f'cannot read {path} (Debian keeps it root-only): run as root')
    return path, path[len('/boot/vmlinuz-'):]


def digest(paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, 'rb') as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def cached_build(what, kv, inputs, build):
    """`build(tmp_path)` once per (kernel, inputs); returns the cached path."""
    path = os.path.join(cache_dir(), f'{what}-{kv}-{digest(inputs)}')
    if not os.path.exists(path):
        log(f'building {path}')
        tmp = f'{path}.tmp{os.getpid()}'
        try:
            build(tmp)
            try:
                os.rename(tmp, path)
            except OSError:
                # Another run built it meanwhile (a directory cannot replace a full one).
                if not os.path.exists(path):
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.exists(tmp):
                os.unlink(tmp)
    return path


def uncompressed_kernel(path, kv):
    """The kernel as an uncompressed ELF (vmlinux), which QEMU boots directly through its PVH
    entry point: no firmware real-mode load and no xz decompression under emulation, both slow
    under TCG (~8 s of the boot here)."""
    def build(out):
        with open(path, 'rb') as f:
            data = f.read()
        for magic, decompressor in ((b'\xfd7zXZ\x00', lambda: lzma.LZMADecompressor()),
                                    (b'\x1f\x8b\x08', lambda: zlib.decompressobj(31))):
            at = data.find(magic)
            while at >= 0:
                try:
                    elf = decompressor().decompress(data[at:])
                except (lzma.LZMAError, zlib.error):
                    elf = b''
                if elf[:4] == b'\x7fELF':
                    with open(out, 'wb') as f:
                        f.write(elf)
                    return
                at = data.find(magic, at + 1)
        raise BoardError(f'{path}: no xz or gzip kernel inside')

    try:
        return cached_build('vmlinux', kv, [path], build)
    except BoardError as e:
        log(f'{e}: booting the compressed kernel')
        return path


def base_image(kv):
    script = os.path.join(HERE, 'build-base.sh')
    return cached_build('base', kv, [script, os.path.join(HERE, 'init')],
                        lambda out: subprocess.run([script, kv, out], check=True) and None)


def built_modules(kv):
    script = os.path.join(HERE, 'build-modules.sh')
    return cached_build('modules', kv, [script],
                        lambda out: subprocess.run([script, kv, out], check=True) and None)


def modinfo_depends(path):
    out = subprocess.run(['modinfo', '-F', 'depends', path], capture_output=True, text=True,
                         check=True).stdout.strip()
    return [d for d in out.split(',') if d]


def kernel_module_chain(kv, name):
    """The kernel's own module `name` with its dependencies, in load order (paths)."""
    res = subprocess.run(['modprobe', '-S', kv, '--show-depends', name], capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise BoardError(f'no module {name} for {kv}: {res.stderr.strip()}')
    return [line.split()[1] for line in res.stdout.splitlines()
            if line.startswith('insmod ')]


def module_chain(kv, name, seen):
    """Load order for `name` (a built driver or the kernel's), as host paths."""
    key = name.replace('_', '-')
    if key in seen:
        return []
    seen.add(key)
    if key in BUILT:
        path = os.path.join(built_modules(kv), key + '.ko')
        chain = []
        for dep in modinfo_depends(path):
            chain += module_chain(kv, dep, seen)
        return chain + [path]
    chain = []
    for path in kernel_module_chain(kv, name):
        base = os.path.basename(path).split('.ko')[0].replace('_', '-')
        if base not in seen or base == key:
            seen.add(base)
            chain.append(path)
    return chain


def shared_libraries(path):
    res = subprocess.run(['ldd', path], capture_output=True, text=True)
    if res.returncode != 0:
        return []
    return sorted(set(re.findall(r'(/\S+)', res.stdout)))


def is_elf(path):
    with open(path, 'rb') as f:
        return f.read(4) == b'\x7fELF'


class Overlay:
    """The second initramfs archive: everything of this run."""

    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, 'test'), exist_ok=True)

    def add(self, src, dest, strip=False):
        target = self.root + dest
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, target, symlinks=False, dirs_exist_ok=True)
            return
        if strip and is_elf(src):
            # Debug info is of no use in the guest and costs boot time.
            subprocess.run(['objcopy', '--strip-debug', src, target], check=True)
        else:
            shutil.copy2(src, target)
        if os.access(src, os.X_OK) and is_elf(src):
            for lib in shared_libraries(src):
                if not os.path.exists(self.root + lib):
                    os.makedirs(os.path.dirname(self.root + lib), exist_ok=True)
                    shutil.copy2(os.path.realpath(lib), self.root + lib)

    def write(self, dest, text, mode=0o644):
        target = self.root + dest
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, 'w') as f:
            f.write(text)
        os.chmod(target, mode)

    def pack(self, out):
        # Uncompressed: the guest kernel unpacks it without decompressing anything.
        with open(out, 'wb') as f:
            find = subprocess.Popen(['find', '.'], cwd=self.root, stdout=subprocess.PIPE)
            subprocess.run(['cpio', '-o', '-H', 'newc', '--quiet'], cwd=self.root,
                           stdin=find.stdout, stdout=f, check=True)
            find.wait()


def new_tag():
    alphabet = string.ascii_lowercase + string.digits
    n = os.getpid() * 1_000_003 + random.getrandbits(32)
    tag = 'sgvm'
    for _ in range(5):
        tag += alphabet[n % 36]
        n //= 36
    return tag


def state_dir(tag):
    if not re.fullmatch(r'sgvm[a-z0-9]{5}', tag):
        raise BoardError(f'not a board tag: {tag}')
    return os.path.join(STATE_ROOT, tag)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, value):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(value, f)
    os.rename(tmp, path)


def alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def prepare(args, tag, d):
    """Build the images and the QEMU command line for a run; returns the board's description."""
    kernel_path, kv = kernel()
    for tool in ('qemu-system-x86_64', 'cpio', 'depmod', 'modinfo', 'objcopy'):
        if not shutil.which(tool):
            raise BoardError(f'{tool} missing: run make deps-emulated')
    base = base_image(kv)
    overlay = Overlay(os.path.join(d, 'root'))
    for helper in os.listdir(os.path.join(HERE, 'guest')):
        overlay.add(os.path.join(HERE, 'guest', helper), f'/test/{helper}')
    if args.binary:
        overlay.add(os.path.realpath(args.binary), '/test/spyglass', strip=True)
    for spec in args.file or []:
        src, _, dest = spec.partition(':')
        src = os.path.realpath(src)
        if not os.path.exists(src):
            raise BoardError(f'--file {spec}: no such file')
        overlay.add(src, dest or f'/test/{os.path.basename(src)}', strip=True)

    loads = []  # (guest path, parameters)
    seen = set()
    wanted = [m for m in (args.module or [])]
    net = bool(args.netns)
    if net:
        for flag in ('bridge', 'ip', 'gateway'):
            if not getattr(args, flag):
                raise BoardError(f'--netns needs --{flag}')
        wanted = list(NET_MODULES) + wanted
    for spec in wanted:
        name, _, params = spec.strip().partition(' ')
        chain = module_chain(kv, name, seen)
        if not chain:
            raise BoardError(f'--module {name}: asked for twice (or as a dependency before)')
        for path in chain:
            guest = f'/lib/modules/board/{os.path.basename(path)}'
            overlay.add(path, guest)
            loads.append((guest, ''))
        loads[-1] = (loads[-1][0], params.strip())
    overlay.write('/test/modules', ''.join(f'{p} {q}\n' for p, q in loads))
    if net:
        overlay.write('/test/net', f'BOARD_IP={args.ip}\nBOARD_GATEWAY={args.gateway}\n')
    script = args.run or 'echo "=== no command (--run)"'
    if script.startswith('@'):
        with open(script[1:]) as f:
            script = f.read()
    overlay.write('/test/run', '#!/bin/sh\n' + script + '\n', 0o755)
    initrd = os.path.join(d, 'initrd')
    overlay.pack(os.path.join(d, 'overlay.cpio'))
    with open(initrd, 'wb') as out:
        for part in (base, os.path.join(d, 'overlay.cpio')):
            # The kernel takes an uncompressed archive after a compressed one only at an offset
            # that is a multiple of 4 ("invalid magic" otherwise); it skips zeros between them.
            out.write(b'\0' * (-out.tell() % 4))
            with open(part, 'rb') as f:
                shutil.copyfileobj(f, out)
    shutil.rmtree(overlay.root)
    os.unlink(os.path.join(d, 'overlay.cpio'))

    qemu = ['qemu-system-x86_64', '-accel', 'tcg', '-cpu', 'max', '-m', str(args.memory),
            '-smp', str(args.cpus), '-nographic', '-no-reboot', '-monitor', 'none',
            '-serial', 'stdio',
            # The host's `send` channel: the guest command's standard input (/dev/ttyS1).
            '-serial', f'unix:{d}/ctl.sock,server=on,wait=off',
            '-kernel', uncompressed_kernel(kernel_path, kv), '-initrd', initrd,
            # No CPU vulnerability mitigations: they only slow an emulated CPU down.
            '-append', 'console=ttyS0 quiet panic=-1 rdinit=/init mitigations=off']
    board = {'tag': tag, 'state_dir': d, 'kernel': kv, 'log': os.path.join(d, 'console.log'),
             'timeout_s': args.timeout, 'net': None}
    if net:
        tap = f'{tag}t'
        mac = '52:54:00:%02x:%02x:%02x' % tuple(hashlib.sha256(tag.encode()).digest()[:3])
        qemu = ['ip', 'netns', 'exec', args.netns] + qemu + [
            '-netdev', f'tap,id=n0,ifname={tap},script=no,downscript=no',
            '-device', f'virtio-net-pci,netdev=n0,mac={mac}']
        board['net'] = {'ns': args.netns, 'bridge': args.bridge, 'tap': tap, 'mac': mac,
                        'ip': args.ip.split('/')[0], 'cidr': args.ip, 'gateway': args.gateway}
    else:
        qemu += ['-nic', 'none']
    board['qemu'] = qemu
    return board


def ns_ip(ns, *args):
    return subprocess.run(['ip', 'netns', 'exec', ns, 'ip', *args], capture_output=True,
                          text=True)


def make_tap(net):
    for cmd in (['tuntap', 'add', 'dev', net['tap'], 'mode', 'tap'],
                ['link', 'set', net['tap'], 'master', net['bridge']],
                ['link', 'set', net['tap'], 'up']):
        res = ns_ip(net['ns'], *cmd)
        if res.returncode != 0:
            remove_tap(net)
            raise BoardError(f'ip {" ".join(cmd)} in {net["ns"]}: {res.stderr.strip()}')


def remove_tap(net):
    if net and subprocess.run(['ip', 'netns', 'exec', net['ns'], 'true'],
                              capture_output=True).returncode == 0:
        ns_ip(net['ns'], 'link', 'del', net['tap'])


# --- the supervisor: owns QEMU for the whole run ------------------------------------------------

def supervise(tag):
    """Run QEMU, record how it ended, clean up. Detached from the caller (its own session)."""
    d = state_dir(tag)
    board = read_json(os.path.join(d, 'board.json'))
    owner = board.get('owner')
    start = time.monotonic()
    with open(board['log'], 'wb') as console:
        qemu = subprocess.Popen(board['qemu'], stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, start_new_session=True)
    write_json(os.path.join(d, 'pids.json'), {'supervisor': os.getpid(), 'qemu': qemu.pid})
    stop = {'why': None}

    def on_term(signum, frame):
        stop['why'] = stop['why'] or 'stopped'

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    deadline = start + board['timeout_s']
    while qemu.poll() is None:
        if stop['why'] is None and not os.path.isdir(d):
            stop['why'] = 'removed'
        if stop['why'] is None and time.monotonic() > deadline:
            stop['why'] = 'timed out'
        if stop['why'] is None and owner and not alive(owner):
            stop['why'] = 'owner gone'
        if stop['why']:
            qemu.terminate()
            try:
                qemu.wait(5)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait()
            break
        time.sleep(0.1)
    remove_tap(board.get('net'))
    if not os.path.isdir(d):
        return
    write_json(os.path.join(d, 'ended.json'), {
        'qemu_status': qemu.returncode, 'stopped': stop['why'],
        'total_s': round(time.monotonic() - start, 2)})
    if stop['why'] == 'owner gone':
        shutil.rmtree(d, ignore_errors=True)


def sweep():
    """Remove runs whose supervisor and owner are both gone."""
    if not os.path.isdir(STATE_ROOT):
        return
    for tag in os.listdir(STATE_ROOT):
        d = os.path.join(STATE_ROOT, tag)
        board = read_json(os.path.join(d, 'board.json'), {})
        pids = read_json(os.path.join(d, 'pids.json'), {})
        if not alive(pids.get('supervisor')) and not alive(board.get('owner')):
            if alive(pids.get('qemu')):
                continue
            remove_tap(board.get('net'))
            shutil.rmtree(d, ignore_errors=True)


# --- results ---------------------------------------------------------------------------------

FILE_START = re.compile(r'^=== file (\S+) (\d+)$')


def result(tag):
    d = state_dir(tag)
    board = read_json(os.path.join(d, 'board.json'), {})
    ended = read_json(os.path.join(d, 'ended.json'), {})
    try:
        with open(board['log'], 'rb') as f:
            raw = f.read().decode('utf-8', 'replace')
    except (OSError, KeyError):
        raw = ''
    lines = raw.replace('\r', '').split('\n')
    kept, files, exit_code, powered_off = [], {}, None, False
    current = None
    os.makedirs(os.path.join(d, 'files'), exist_ok=True)
    for line in lines:
        m = FILE_START.match(line)
        if m:
            current = (m.group(1), int(m.group(2)), [])
            continue
        if current:
            if line == f'=== end file {current[0]}':
                name, size, chunks = current
                data = base64.b64decode(''.join(chunks))
                path = os.path.join(d, 'files', os.path.basename(name))
                with open(path, 'wb') as f:
                    f.write(data)
                if len(data) == size:
                    files[name] = path
                else:
                    kept.append(f'=== file {name}: got {len(data)} of {size} bytes')
                current = None
            else:
                chunks = current[2]
                chunks.append(line.strip())
            continue
        m = re.match(r'^=== exit (\d+)$', line)
        if m:
            exit_code = int(m.group(1))
        if line.startswith('=== vm done'):
            powered_off = True
        kept.append(line)
    marks = read_json(os.path.join(d, 'marks.json'), {})
    return {'tag': tag, 'exit': exit_code, 'powered_off': powered_off,
            'timed_out': ended.get('stopped') == 'timed out', 'stopped': ended.get('stopped'),
            'qemu_status': ended.get('qemu_status'), 'boot_s': marks.get('boot_s'),
            'total_s': ended.get('total_s'), 'console': '\n'.join(kept), 'log': board.get('log'),
            'files': files}


def console_text(board):
    try:
        with open(board['log'], 'rb') as f:
            return f.read().decode('utf-8', 'replace').replace('\r', '')
    except OSError:
        return ''


def wait_ended(tag, timeout):
    d = state_dir(tag)
    end = time.monotonic() + timeout
    while not os.path.exists(os.path.join(d, 'ended.json')):
        if not os.path.isdir(d):
            raise BoardError(f'board {tag} is gone')
        pids = read_json(os.path.join(d, 'pids.json'), {})
        if pids and not alive(pids.get('supervisor')):
            break
        if time.monotonic() > end:
            raise BoardError(f'board {tag}: still running after {timeout} s')
        time.sleep(0.1)


def start(args, ready=None):
    """Prepare and start a run under a supervisor; with `ready`, return once the line appears."""
    sweep()
    os.makedirs(STATE_ROOT, exist_ok=True)
    tag = args.tag or new_tag()
    d = state_dir(tag)
    os.makedirs(d)
    try:
        board = prepare(args, tag, d)
        board['owner'] = args.owner if args.owner is not None else os.getppid()
        if board['net']:
            make_tap(board['net'])
        write_json(os.path.join(d, 'board.json'), board)
        t0 = time.monotonic()
        with open(os.path.join(d, 'supervisor.log'), 'w') as errors:
            sup = subprocess.Popen([sys.executable, os.path.abspath(__file__), '_supervise', tag],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=errors, start_new_session=True)
        write_json(os.path.join(d, 'pids.json'), {'supervisor': sup.pid})
        boot = None
        while True:
            text = console_text(board)
            if boot is None and '=== run\n' in text:
                boot = round(time.monotonic() - t0, 2)
                write_json(os.path.join(d, 'marks.json'), {'boot_s': boot})
            if ready and re.search(r'^' + re.escape(ready) + r'$', text, re.M):
                break
            if os.path.exists(os.path.join(d, 'ended.json')):
                if ready:
                    res = result(tag)
                    down(tag)
                    tail = '\n'.join(res['console'].splitlines()[-40:])
                    raise BoardError(f'the guest ended before "{ready}" '
                                     f'(exit {res["exit"]}, {res["stopped"] or "powered off"}):\n{tail}')
                break
            if time.monotonic() - t0 > args.timeout + 10:
                down(tag)
                raise BoardError(f'no supervisor result after {args.timeout} s')
            time.sleep(0.05)
        board['ready_s'] = round(time.monotonic() - t0, 2) if ready else None
        board['boot_s'] = boot
        return board
    except BaseException:
        if os.path.isdir(d):
            down(tag)
        raise


def keep_results(out, where):
    """Copy the console log and the exported files to `where` (the run's directory goes)."""
    if not where:
        out['log'], out['files'] = None, {}
        return
    os.makedirs(where, exist_ok=True)
    if out['log'] and os.path.exists(out['log']):
        shutil.copy2(out['log'], os.path.join(where, 'console.log'))
        out['log'] = os.path.join(where, 'console.log')
    for name, path in list(out['files'].items()):
        dest = os.path.join(where, os.path.basename(path))
        shutil.copy2(path, dest)
        out['files'][name] = dest


def down(tag):
    d = state_dir(tag)
    board = read_json(os.path.join(d, 'board.json'), {})
    pids = read_json(os.path.join(d, 'pids.json'), {})
    if alive(pids.get('supervisor')):
        os.kill(pids['supervisor'], signal.SIGTERM)
        end = time.monotonic() + 10
        while alive(pids['supervisor']) and time.monotonic() < end:
            time.sleep(0.05)
    for key in ('supervisor', 'qemu'):
        if alive(pids.get(key)):
            os.kill(pids[key], signal.SIGKILL)
    remove_tap(board.get('net'))
    shutil.rmtree(d, ignore_errors=True)


def send(tag, text):
    d = state_dir(tag)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.path.join(d, 'ctl.sock'))
        s.sendall(text.encode() + b'\n')
    finally:
        s.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    for name in ('run', 'up'):
        s = sub.add_parser(name)
        s.add_argument('--binary')
        s.add_argument('--file', action='append')
        s.add_argument('--module', action='append')
        s.add_argument('--run')
        s.add_argument('--netns')
        s.add_argument('--bridge')
        s.add_argument('--ip')
        s.add_argument('--gateway')
        s.add_argument('--memory', type=int, default=768)
        s.add_argument('--cpus', type=int, default=1)
        s.add_argument('--timeout', type=float, default=600)
        s.add_argument('--tag')
        s.add_argument('--owner', type=int)
        if name == 'run':
            s.add_argument('--out')
        if name == 'up':
            s.add_argument('--ready', default='=== ready')
    s = sub.add_parser('send')
    s.add_argument('tag')
    s.add_argument('text')
    s = sub.add_parser('wait')
    s.add_argument('tag')
    s.add_argument('--timeout', type=float, default=900)
    s = sub.add_parser('down')
    s.add_argument('tag')
    s = sub.add_parser('_supervise')
    s.add_argument('tag')
    args = p.parse_args()
    try:
        if args.cmd == 'run':
            if args.owner is None:
                args.owner = os.getpid()
            board = start(args)
            try:
                wait_ended(board['tag'], args.timeout + 30)
                out = result(board['tag'])
                keep_results(out, args.out)
            finally:
                down(board['tag'])
            print(json.dumps(out))
        if args.cmd == 'up':
            board = start(args, ready=args.ready)
            print(json.dumps(board))
        elif args.cmd == 'send':
            send(args.tag, args.text)
        elif args.cmd == 'wait':
            wait_ended(args.tag, args.timeout)
            print(json.dumps(result(args.tag)))
        elif args.cmd == 'down':
            down(args.tag)
        elif args.cmd == '_supervise':
            supervise(args.tag)
    except BoardError as e:
        print(f'tests/vm: {e}', file=sys.stderr)
        sys.exit(1)
    except subprocess.CalledProcessError as e:
        print(f'tests/vm: {e}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
