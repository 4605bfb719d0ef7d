// The emulated board (tests/vm/board.py, see tests/vm/README.md) for the node tests: Debian's
// kernel under QEMU with real drivers, running a command of the test, optionally as one more
// host on a netlab site's LAN. Every board still up is stopped when this process exits
// (normally, on an uncaught error, on SIGINT/SIGTERM); the tool's supervisor does it if the
// process is killed outright.

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoDir } from './harness.mjs';

export const toolPath = join(repoDir, 'tests', 'vm', 'board.py');
const live = new Set();

function board(args) {
  try {
    return execFileSync('python3', [toolPath, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      maxBuffer: 64 * 1024 * 1024,
    });
  } catch (e) {
    throw new Error((e.stderr || '').trim() || e.message);
  }
}

/** The guest's place on a netlab site's LAN, at address .`host` of it (netlab's hosts are .10 up). */
export function lanPlace(lab, site, host = 100) {
  const s = lab.info.sites[site];
  if (!s) throw new Error(`netlab ${lab.tag} has no site ${site}`);
  const [net, prefix] = s.lan.split('/');
  const ip = net.split('.').slice(0, 3).concat(String(host)).join('.');
  // netlab names a router's LAN bridge <tag><site>b (tests/netlab/README.md).
  return { ns: s.router_ns, bridge: `${lab.tag}${site}b`, cidr: `${ip}/${prefix}`, ip, gateway: s.gateway };
}

function specArgs({ binary, files = [], modules = [], run, net, memoryMb = 768, timeoutS = 600 }) {
  const args = ['--memory', String(memoryMb), '--timeout', String(timeoutS), '--run', run];
  if (binary) args.push('--binary', binary);
  for (const [src, dest] of files) args.push('--file', `${src}:${dest}`);
  for (const m of modules) args.push('--module', m);
  if (net) args.push('--netns', net.ns, '--bridge', net.bridge, '--ip', net.cidr, '--gateway', net.gateway);
  return args;
}

export class Board {
  /**
   * Boot in the background and return once the guest printed `ready` ("=== ready").
   * spec: { binary, files: [[src, dest]], modules: ['v4l2loopback video_nr=10'], run (sh),
   * net (lanPlace(...)), memoryMb, timeoutS, ready }. Throws with the tool's message (and the
   * console's last lines when the guest ended before it was ready).
   */
  static up(spec) {
    const info = JSON.parse(board(['up', ...specArgs(spec), '--owner', String(process.pid),
      '--ready', spec.ready ?? '=== ready']));
    const b = new Board(info);
    live.add(b);
    return b;
  }

  /** Boot, run, power off: { exit, powered_off, timed_out, boot_s, total_s, console, files }. */
  static run(spec, outDir) {
    const extra = outDir ? ['--out', outDir] : [];
    return JSON.parse(board(['run', ...specArgs(spec), '--owner', String(process.pid), ...extra]));
  }

  constructor(info) {
    this.info = info;
    this.tag = info.tag;
  }

  /** One line to the guest command's standard input. */
  send(line) { board(['send', this.tag, line]); }

  /** The serial console so far. */
  console() {
    try {
      return readFileSync(this.info.log, 'utf8').replaceAll('\r', '');
    } catch {
      return '';
    }
  }

  /** Wait until the guest powers off; the result as in Board.run (files live until down()). */
  wait(timeoutS = 300) {
    return JSON.parse(board(['wait', this.tag, '--timeout', String(timeoutS)]));
  }

  /** Stop the guest and remove its tap and files (idempotent). */
  down() {
    if (!live.has(this)) return;
    live.delete(this);
    try {
      board(['down', this.tag]);
    } catch (e) {
      process.stderr.write(`board down ${this.tag}: ${e.message}\n`);
    }
  }
}

function downAll() {
  for (const b of [...live]) b.down();
}

process.on('exit', downAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    downAll();
    process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
  });
}
