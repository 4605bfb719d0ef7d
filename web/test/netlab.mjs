// The namespace test network (tests/netlab/netlab.py, see tests/netlab/README.md) for the node
// tests: build it from a JSON spec, run processes and headless Chromium inside its namespaces,
// shape and cut links, move hosts, and tear it all down. Every network still up is torn down
// when this process exits (normally, on an uncaught error, on SIGINT/SIGTERM); the tool's
// watchdog does it if the process is killed outright.

import { execFileSync, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { repoDir } from './harness.mjs';

export const toolPath = join(repoDir, 'tests', 'netlab', 'netlab.py');
const live = new Set();

function newTag() {
  const n = (process.pid * 1000003 + Math.floor(Math.random() * 36 ** 5)) % 36 ** 5;
  return 'nl' + n.toString(36).padStart(5, '0').slice(-5);
}

/** Run `netlab.py ARGS` and return its JSON; throws with the tool's message ("not valid: ..."). */
export function netlab(args) {
  let stdout;
  try {
    stdout = execFileSync('python3', [toolPath, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      maxBuffer: 16 * 1024 * 1024,
    });
  } catch (e) {
    let message = (e.stderr || '').trim() || e.message;
    try {
      message = JSON.parse(e.stdout).error ?? message;
    } catch {
      // No JSON on stdout: keep stderr.
    }
    throw new Error(message);
  }
  return JSON.parse(stdout);
}

export class Netlab {
  /**
   * Build a network; `check` is the self-check ('full', 'basic' or 'none'). Throws
   * "not valid: ..." when the network is not what was asked; nothing is left behind then.
   */
  static up(spec, { check = 'full' } = {}) {
    const tag = newTag();
    const lab = new Netlab(tag);
    live.add(lab);
    try {
      lab.info = netlab(['up', '--tag', tag, '--owner', String(process.pid), '--check', check,
        '--spec', JSON.stringify(spec)]);
    } catch (e) {
      lab.down();
      throw e;
    }
    return lab;
  }

  constructor(tag) {
    this.tag = tag;
    this.info = null;
    this.children = [];
  }

  /** The namespace of a node: a host name, 'inet', '<site>-router' or '<site>-emu'. */
  ns(node) {
    const ns = this.info.namespaces[node];
    if (!ns) throw new Error(`netlab ${this.tag} has no node ${node}`);
    return ns;
  }

  host(name) {
    const h = this.info.hosts[name];
    if (!h) throw new Error(`netlab ${this.tag} has no host ${name}`);
    return h;
  }

  ip(name) { return this.host(name).ip; }

  /** Start `program args` inside `node`'s namespace (`ip netns exec` execs in place: the
   * child's PID is the program's). Stopped at down() if still running. */
  spawn(node, program, args = [], options = {}) {
    const child = spawn('ip', ['netns', 'exec', this.ns(node), program, ...args], options);
    this.children.push(child);
    return child;
  }

  call(cmd, ...args) { return netlab([cmd, this.tag, ...args]); }

  /** lab.link('v1', '--delay', '50', '--loss', '0.02'); '--rate', '0' removes the limit. */
  link(site, ...changes) { return this.call('link', site, ...changes); }

  cut(site) { return this.call('cut', site); }

  restore(site) { return this.call('restore', site); }

  moveHost(host, site) { return this.call('move', host, site); }

  punch(a, b) { return this.call('punch', a, b); }

  /** TURN allocation + relayed echo from `host`: { ok, relayed, mapped } or { ok: false, error }. */
  turn(host, transport, credentials) {
    const extra = credentials ? ['--username', credentials.username, '--password', credentials.password] : [];
    try {
      return this.call('turn', host, '--transport', transport, ...extra);
    } catch (e) {
      return { ok: false, error: e.message };
    }
  }

  check() { return this.call('check'); }

  stats(site) { return this.call('stats', site); }

  /** TURN credentials: the static user, or (auth "secret") time-limited TURN REST API ones. */
  turnCredentials(name = 'netlab', ttlSeconds = 3600) {
    const t = this.info.turn;
    if (t.auth !== 'secret') return { username: t.username, credential: t.password };
    const username = `${Math.floor(Date.now() / 1000) + ttlSeconds}:${name}`;
    const credential = createHmac('sha1', t.secret).update(username).digest('base64');
    return { username, credential };
  }

  /** ICE servers for a browser in this network: STUN plus TURN over `transports`. */
  iceServers(transports = ['udp']) {
    const t = this.info.turn;
    const servers = [{ urls: t.stun_url }];
    const credentials = this.turnCredentials();
    for (const kind of transports) servers.push({ urls: t.urls[kind], ...credentials });
    return servers;
  }

  /**
   * Debian's headless Chromium inside `host`'s namespace: playwright launches the tool's
   * wrapper script (`ip netns exec NS chromium ...`) as the browser executable. With a TURN
   * server, Chromium is told the pin of its certificate's key, so `turns:` works (Chromium checks
   * TURN TLS certificates against the system's roots, which do not hold the tool's CA).
   */
  async launchBrowser(host, { args = [] } = {}) {
    const profile = mkdtempSync(join(tmpdir(), 'spyglass-netlab-chromium-'));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: this.host(host).chromium,
      headless: true,
      viewport: { width: 960, height: 600 },
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--autoplay-policy=no-user-gesture-required',
        ...(this.info.turn?.chromium_args ?? []),
        ...args,
      ],
    });
    return {
      context,
      async close() {
        await context.close().catch(() => {});
        rmSync(profile, { recursive: true, force: true });
      },
    };
  }

  /** Tear everything down (idempotent). Processes left in the namespaces are stopped too. */
  down() {
    if (!live.has(this)) return;
    live.delete(this);
    for (const child of this.children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    try {
      netlab(['down', this.tag]);
    } catch (e) {
      process.stderr.write(`netlab down ${this.tag}: ${e.message}\n`);
    }
  }
}

function downAll() {
  for (const lab of [...live]) lab.down();
}

process.on('exit', downAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    downAll();
    process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
  });
}
